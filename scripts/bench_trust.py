#!/usr/bin/env python
"""How well the disagreement map finds mistakes: planted errors, then the real mistakes of trained models.

    python scripts/bench_trust.py --output-dir runs/trust --budget-minutes 4   # the figures in benchmarks.md
    python scripts/bench_trust.py --quick                                      # tiny, seconds (CI smoke test)
    python scripts/bench_trust.py --planted-only                               # the planted table only (seconds)

Part 1, planted errors (no training): phantom heads converted by the tissue oracle fitted on their own pair
(`ctmri_monai.phantoms.oracle`), with a hallucination, a deletion and a misplacement planted into the output
(`ctmri_monai.phantoms.plant`, repeated consistently under flips and shifts), scored with every signal and
combination of `ctmri_monai.phantoms.trust.VARIANTS`: voxel AUROC inside the head and flagged-region Dice against
the planted region, for an honest output and for one that hides its input (Chu et al. 2017).

Part 2, real mistakes: `make-phantoms --lesions` (CT domain: bleeds only; MRI domain: masses only; held-out
subjects paired), the default bundle and ``--lambda_structure 0`` trained on one time budget each, the held-out
subjects converted both ways, the map scored against the voxels whose real error |output - true counterpart|
exceeds ``ERROR_THRESHOLD`` (AUROC), and the lesions the model invented or erased (a lesion of the input whose
counterpart region moved by more than the threshold on half its voxels) counted with how many the map flags.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ctmri_monai.apps.benchmarking import machine_info, write_json
from ctmri_monai.apps.bundle_paths import run_bundle
from ctmri_monai.io.checkpoint_file import load_checkpoint
from ctmri_monai.utils.device import resolve_device
from ctmri_monai.utils.quiet import quiet_known_warnings

#: A voxel's real error is large when |output - true counterpart| exceeds this, in [-1, 1] (an eighth of the range:
#: a grey-matter / white-matter step of the synthetic MRI, 15 HU of the brain window's 120).
ERROR_THRESHOLD = 0.25
#: A second threshold for large errors only (a quarter of the range), reported beside it.
LARGE_ERROR = 0.5
#: A lesion is mis-rendered (invented or erased) when over half its voxels are in error; flagged when the map's
#: flagged voxels cover at least a fifth of it. An error component counts from this many voxels.
LESION_WRONG, LESION_FLAGGED, MIN_COMPONENT = 0.5, 0.2, 10
BRAIN_WINDOW = [-20.0, 100.0]
VARIANTS = {"default (structure loss)": {"lambda_structure": 1.0},
            "paper (--lambda_structure 0)": {"lambda_structure": 0.0}}
FULL = {"image_size": 64, "ngf": 16, "ndf": 16, "n_blocks": 6, "batch_size": 4, "pixdim": [3.0, 3.0]}
QUICK = {"image_size": 32, "ngf": 4, "ndf": 4, "n_blocks": 1, "num_downs": 5, "batch_size": 4, "pixdim": [6.0, 6.0]}
GEOMETRY = {False: ((64, 64, 24), (3.0, 3.0, 6.0), 12), True: ((32, 32, 12), (6.0, 6.0, 8.0), 6)}


# ------------------------------------------------------------------------------------------ part 1: planted
def planted_table(subjects: int, quick: bool) -> dict[str, Any]:
    """Mean (and worst) AUROC and Dice of every variant, kind, direction, honest or hidden copy; clean shares."""
    from ctmri_monai.phantoms import make_subject
    from ctmri_monai.phantoms.trust import VARIANTS as COMBINATIONS
    from ctmri_monai.phantoms.trust import clean_share, planted_scores

    heads = [make_subject(i, 0, (64, 64, 16), (3.0, 3.0, 8.0)) for i in range(subjects)]
    rows: dict[str, list] = {}
    for direction in ("ct2mri", "mri2ct"):
        for ph in heads:
            rows.setdefault(f"{direction} clean share", []).append(clean_share(ph, direction))
            if ph.info["lesion"] == "none":
                continue
            for hidden in ((False,) if quick else (False, True)):
                for kind, row in planted_scores(ph, direction, hidden).items():
                    for variant in COMBINATIONS:
                        key = f"{direction} | {kind} | {'hidden copy' if hidden else 'honest'} | {variant}"
                        rows.setdefault(key, []).append(row[variant])
    out = {}
    for key, values in rows.items():
        a = np.asarray(values, np.float64)
        out[key] = {"mean": np.round(np.nanmean(a, axis=0), 3).tolist(),
                    "min": np.round(np.nanmin(a, axis=0), 3).tolist(), "n": len(values)}
    return out


def save_picture(path: Path) -> Path:
    """One row per planted kind (CT -> MRI, subject 1): input | planted output with the flagged outline (red) and
    the planted region (green) | the map (gray, white = 1)."""
    from PIL import Image

    from ctmri_monai.engines.disagreement import disagreement_map
    from ctmri_monai.io.images import unit_to_uint8
    from ctmri_monai.metrics.flagged import flag_mask, outline_regions
    from ctmri_monai.phantoms import make_subject
    from ctmri_monai.phantoms.oracle import oracle_conversion
    from ctmri_monai.phantoms.plant import ConsistentMistake, plant_cases
    from ctmri_monai.transforms.mask import head_mask

    phantom = make_subject(1, 0, (64, 64, 16), (3.0, 3.0, 8.0))
    x, y, _, forward, _ = oracle_conversion(phantom, "ct2mri")
    head = head_mask(x)
    rows = []
    for planted, region in plant_cases(y, phantom.labels).values():
        dmap = disagreement_map(x, planted, ConsistentMistake(forward, x, planted - y), "ct2mri", head=head,
                                amp=False).map
        k = int(np.argmax(region.sum(axis=(0, 1))))
        def view(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(a[::-1, ::-1].T)  # RAS -> radiological display
        flagged = view(flag_mask(dmap, head)[:, :, k])
        def gray(a: np.ndarray) -> np.ndarray:
            return np.asarray(unit_to_uint8(view(a)))
        none = np.zeros_like(flagged)
        marked = outline_regions(gray(planted[:, :, k]), view(region[:, :, k]), (0, 220, 0))
        tiles = [outline_regions(gray(x[:, :, k]), none, zoom=3), outline_regions(marked, flagged, zoom=3),
                 outline_regions(gray(dmap[:, :, k] * 2 - 1), none, zoom=3)]
        rows.append(np.concatenate(tiles, axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


# ------------------------------------------------------------------------------------- part 2: real mistakes
def make_data(folder: Path, quick: bool, subjects: int) -> Path:
    from ctmri_monai.phantoms import make_phantoms

    if not (folder / "phantoms.json").is_file():
        shape, spacing, _ = GEOMETRY[quick]
        make_phantoms(folder, subjects=subjects, shape=shape, spacing=spacing, seed=0, write_dicom=False, lesions=True,
                      test_fraction=0.34)
    return folder


def train(name: str, settings: dict[str, Any], data: Path, out: Path, budget: float, quick: bool, device: str,
          reuse: bool = False) -> Path:
    run_dir = out / ("structure" if settings["lambda_structure"] else "paper")
    if reuse and (run_dir / "checkpoints" / "final.pt").is_file():
        return run_dir / "checkpoints" / "final.pt"
    common = {"dataset_dir": str(data), "output_dir": str(run_dir), "layout": "volumes", "num_workers": 0,
              "fid_features": "random", "kid_subset_size": 8, "eval_batch_size": 16, "progress_bar": False,
              "device": f"$torch.device('{device}')", "seed": 0, "ct_window": BRAIN_WINDOW}
    run_bundle("train", **common, **(QUICK if quick else FULL), **settings, budget_minutes=budget, resume=False,
               n_epochs=100, n_epochs_decay=100, val_interval=1_000_000, sample_interval=1_000_000,
               slices_per_volume=4 if quick else 16, log_interval=1_000_000)
    return run_dir / "checkpoints" / "final.pt"


def _frames_of(volume: np.ndarray) -> np.ndarray:
    """An RAS (X, Y, Z) phantom array on the contract's "PLS" frames (rows anterior -> posterior, columns right ->
    left) when the frame is the volume's own size and spacing (checked against the conversion's input)."""
    return np.ascontiguousarray(volume[::-1, ::-1, :].transpose(1, 0, 2))


def score_conversion(ckpt: Path, data: Path, name: str, direction: str) -> dict[str, Any]:
    """Convert one held-out subject with a checkpoint, compute its map, score it against the real error."""
    import torch

    from ctmri_monai.engines.disagreement import disagreement_map
    from ctmri_monai.engines.slices import SliceRun, translate_volume
    from ctmri_monai.io.volume import load_volume
    from ctmri_monai.metrics.flagged import flag_mask, voxel_auroc
    from ctmri_monai.networks.loading import load_generator
    from ctmri_monai.phantoms.trust import VARIANTS as COMBINATIONS
    from ctmri_monai.phantoms.trust import benchmark_signals, variant_map
    from ctmri_monai.transforms.pipelines import volume_pipeline

    source, target = direction.split("2")
    forward, info = load_generator(ckpt, direction)
    spec = info["spec"]
    path = data / "heldout" / source / f"{name}.nii.gz"
    image = load_volume(path).image
    tr = translate_volume(path, image, forward, spec, source, target, SliceRun(amp=False))
    if np.corrcoef(_frames_of(np.asarray(image[0])).ravel(), tr.source_unit.ravel())[0, 1] < 0.9:
        raise RuntimeError(f"{name}: the frames are not the volume's own grid; the labels cannot be placed")
    true_image = load_volume(data / "heldout" / target / f"{name}.nii.gz").image
    true = volume_pipeline(spec, target)({"image": true_image})["image"].as_tensor()[0].numpy()
    labels = _frames_of(np.asarray(load_volume(data / "volumes" / "labels" / f"{name}.nii.gz").image[0]))
    if true.shape != tr.fake_unit.shape or labels.shape != true.shape:
        raise RuntimeError(f"{name}: frames {tr.fake_unit.shape}, counterpart {true.shape}, labels {labels.shape}")
    head, run = tr.source_mask, {"context": spec.geometry.context_slices, "amp": False}
    start = time.perf_counter()
    with torch.no_grad():
        result = disagreement_map(tr.source_unit, tr.fake_unit, forward, direction, head=head, **run)
        seconds = time.perf_counter() - start
        signals = benchmark_signals(tr.source_unit, tr.fake_unit, forward, **run)
    error = (np.abs(tr.fake_unit - true) > ERROR_THRESHOLD) & head
    maps = {k: variant_map(signals, k, direction, head) for k in COMBINATIONS}
    if not np.array_equal(maps["map"], result.map):
        raise RuntimeError(f"{name}: the benchmark's map is not the conversion's")

    def aurocs(truth: np.ndarray) -> dict[str, float]:
        return {k: round(voxel_auroc(v, truth, head), 3) for k, v in maps.items()}

    flagged = flag_mask(result.map, head)
    lesion = np.isin(np.rint(labels), (7, 8, 9)) & head
    wrong = bool(lesion.any() and error[lesion].mean() > LESION_WRONG)
    comps, n = ndimage.label(error & ~lesion)
    sizes = np.bincount(comps.ravel())[1:] if n else np.zeros(0, int)
    big = [i + 1 for i, s in enumerate(sizes) if s >= MIN_COMPONENT]
    return {
        "subject": name, "direction": direction, "error_share": round(float(error.sum() / head.sum()), 4),
        "auroc": aurocs(error),
        f"auroc_at_{LARGE_ERROR}": aurocs((np.abs(tr.fake_unit - true) > LARGE_ERROR) & head),
        "flagged_share": round(float(flagged.sum() / head.sum()), 4),
        "precision": round(float(error[flagged].mean()), 3) if flagged.any() else None,
        "lesion_voxels": int(lesion.sum()), "lesion_wrong": wrong,
        "lesion_flagged": bool(lesion.any() and flagged[lesion].mean() >= LESION_FLAGGED),
        "error_components": len(big), "error_components_flagged": sum(bool(flagged[comps == i].any()) for i in big),
        "map_seconds": round(seconds, 2), "map_passes": result.passes,
        "conversion_inference_seconds": tr.timings.get("inference"), "slices": int(head.shape[2]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="bench_results/trust")
    parser.add_argument("--budget-minutes", type=float, default=None, help="per variant (default 6, quick 0.1)")
    parser.add_argument("--subjects", type=int, default=None, help="lesion phantoms (default 12, quick 6)")
    parser.add_argument("--planted-subjects", type=int, default=None, help="part 1 heads (default 10, quick 2)")
    parser.add_argument("--quick", action="store_true", help="tiny networks and phantoms: seconds (CI)")
    parser.add_argument("--planted-only", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="score the checkpoints already in OUTPUT, no training")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    quiet_known_warnings()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = str(resolve_device(args.device))
    report: dict[str, Any] = {"quick": args.quick, "error_threshold": ERROR_THRESHOLD,
                              "machine": machine_info(resolve_device(device))}
    start = time.perf_counter()
    report["planted"] = planted_table(args.planted_subjects or (2 if args.quick else 10), args.quick)
    report["planted_seconds"] = round(time.perf_counter() - start, 1)
    report["picture"] = str(save_picture(out / "disagreement_planted.png"))
    write_json(report, out / "bench_trust.json")
    if not args.planted_only:
        budget = args.budget_minutes if args.budget_minutes is not None else (0.1 if args.quick else 6.0)
        data = make_data(out / "data", args.quick, args.subjects or (6 if args.quick else 12))
        heldout = json.loads((data / "phantoms.json").read_text())["test_subjects"]
        report["budget_minutes"], report["trained"] = (None if args.reuse else budget), {}
        for variant, settings in VARIANTS.items():
            ckpt = train(variant, settings, data, out, budget, args.quick, device, args.reuse)
            rows = [score_conversion(ckpt, data, name, d) for name in heldout for d in ("ct2mri", "mri2ct")]
            report["trained"][variant] = rows
            report.setdefault("iterations", {})[variant] = int(load_checkpoint(ckpt)["trainer"]["iteration"])
            write_json(report, out / "bench_trust.json")
    for key, row in report["planted"].items():
        print(f"{key}: mean {row['mean']} worst {row['min']} (n={row['n']})")
    for variant, rows in report.get("trained", {}).items():
        for r in rows:
            print(variant, json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
