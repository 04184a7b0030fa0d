#!/usr/bin/env python
"""Which variant converts volumes best: 2D, 2.5D, 2D + structure loss, 2.5D + structure loss, one time budget each.

    python scripts/bench_quality.py --output-dir runs/quality --budget-minutes 6   # the figures in benchmarks.md
    python scripts/bench_quality.py --quick                                        # tiny networks, seconds (CI)

Each variant trains through the bundle on the phantom volumes (the volumes layout, paired CT / T1-like MRI heads
rendered from one label map) with the same wall-clock budget, then ``evaluate.yaml`` converts the held-out
subjects both ways exactly as ``ctmri convert`` does and scores them against their real counterparts: MAE (HU) and
SSIM of the synthetic CT and SSIM of the synthetic MRI, the through-plane consistency figure, the structure figure
and the head-mask Dice (``ctmri_monai.handlers.paired``). Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ctmri_monai.apps.benchmarking import machine_info, write_json
from ctmri_monai.apps.bundle_paths import run_bundle
from ctmri_monai.utils.device import resolve_device
from ctmri_monai.utils.quiet import quiet_known_warnings

VARIANTS: dict[str, dict[str, Any]] = {
    "2D": {"context_slices": 0, "lambda_structure": 0.0},
    "2.5D (k = 1)": {"context_slices": 1, "lambda_structure": 0.0},
    "2D + structure": {"context_slices": 0, "lambda_structure": 1.0},
    "2.5D + structure": {"context_slices": 1, "lambda_structure": 1.0},
}
FULL = {"image_size": 64, "ngf": 16, "ndf": 16, "n_blocks": 6, "batch_size": 4, "pixdim": [3.0, 3.0]}
QUICK = {"image_size": 32, "ngf": 4, "ndf": 4, "n_blocks": 1, "num_downs": 5, "batch_size": 4, "pixdim": [6.0, 6.0]}
#: (results.json key, column title, digits); "higher" or "lower" is better.
COLUMNS = (
    ("volume_mae_mri2ct_hu", "sCT MAE (HU)", 1, "lower"),
    ("volume_ssim_mri2ct", "sCT SSIM", 3, "higher"),
    ("volume_ssim_ct2mri", "sMRI SSIM", 3, "higher"),
    ("volume_through_plane_vs_real_mri2ct", "sCT through-plane", 3, "higher"),
    ("volume_through_plane_vs_real_ct2mri", "sMRI through-plane", 3, "higher"),
    ("volume_structure_mri2ct", "sCT structure", 3, "higher"),
    ("volume_structure_ct2mri", "sMRI structure", 3, "higher"),
    ("volume_dice_mri2ct", "sCT Dice", 3, "higher"),
    ("volume_dice_ct2mri", "sMRI Dice", 3, "higher"),
)


def make_data(folder: Path, quick: bool) -> Path:
    """Phantom heads in the volumes layout (reused when present)."""
    from ctmri_monai.phantoms import make_phantoms

    if not (folder / "phantoms.json").is_file():
        shape, spacing = ((32, 32, 12), (6.0, 6.0, 8.0)) if quick else ((96, 96, 48), (2.0, 2.0, 3.0))
        make_phantoms(folder, subjects=3 if quick else 8, shape=shape, spacing=spacing, seed=0, write_dicom=False)
    return folder


def run_variant(name: str, settings: dict[str, Any], data: Path, out: Path, budget: float, quick: bool,
                device: str, seed: int = 0) -> dict[str, Any]:
    """Train one variant within ``budget`` minutes, evaluate it; its row of the table."""
    run_dir = out / name.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "").replace("+", "plus")
    common = {"dataset_dir": str(data), "output_dir": str(run_dir), "layout": "volumes", "num_workers": 0,
              "fid_features": "random", "kid_subset_size": 8 if quick else 32, "eval_batch_size": 16,
              "progress_bar": False, "device": f"$torch.device('{device}')", "seed": seed}
    sizes = QUICK if quick else FULL
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    run_bundle("train", **common, **sizes, **settings, budget_minutes=budget, resume=False,
               n_epochs=100, n_epochs_decay=100, val_interval=1_000_000, sample_interval=1_000_000,
               slices_per_volume=4 if quick else 16, log_interval=1_000_000)
    train_seconds = time.perf_counter() - start
    run_bundle(["train", "evaluate"], **common, checkpoint=str(run_dir / "checkpoints" / "final.pt"))
    results = json.loads((run_dir / "evaluation" / "results.json").read_text())
    from ctmri_monai.io.checkpoint_file import load_checkpoint

    trainer = load_checkpoint(run_dir / "checkpoints" / "final.pt")["trainer"]
    row = {"variant": name, **settings, "seed": seed, "train_seconds": round(train_seconds, 1),
           "iterations": int(trainer["iteration"]), "n_pairs": results.get("volume_n_pairs"),
           "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    row.update({key: results.get(key) for key, *_ in COLUMNS})
    return row


def markdown(rows: list[dict[str, Any]], budget: float, machine: dict[str, Any]) -> str:
    """The table of ``rows``, best value of each column in bold."""
    head = ["variant", "iterations", *[title for _, title, _, _ in COLUMNS]]
    best = {}
    for key, _, _, better in COLUMNS:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if values:
            best[key] = min(values) if better == "lower" else max(values)
    loads = [x for r in rows for x in r.get("load_average_1min", [])]
    load = f", 1-min load average {min(loads):.1f}-{max(loads):.1f}" if loads else ""
    lines = [f"Budget {budget:g} min per variant, {machine['cpu']} ({machine['cpu_count']} cores, torch threads "
             f"{machine['torch_threads']}{load}), {machine['date']}.", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"], str(r["iterations"])]
        for key, _, digits, _ in COLUMNS:
            value = r.get(key)
            text = "-" if not isinstance(value, (int, float)) else f"{value:.{digits}f}"
            cells.append(f"**{text}**" if best.get(key) == value and value is not None else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="bench_results/quality")
    parser.add_argument("--dataset-dir", default=None, help="phantom volumes (default: made in OUTPUT/data)")
    parser.add_argument("--budget-minutes", type=float, default=None, help="per variant (default 6, quick 0.1)")
    parser.add_argument("--quick", action="store_true", help="tiny networks and phantoms: seconds (CI)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0, help="training seed (weights, pairing, slices)")
    args = parser.parse_args(argv)
    quiet_known_warnings()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_minutes if args.budget_minutes is not None else (0.1 if args.quick else 6.0)
    device = str(resolve_device(args.device))
    data = Path(args.dataset_dir) if args.dataset_dir else make_data(out / "data", args.quick)
    rows = [run_variant(name, VARIANTS[name], data, out, budget, args.quick, device, args.seed)
            for name in args.variants]
    machine = machine_info(resolve_device(device))
    table = markdown(rows, budget, machine)
    write_json({"quick": args.quick, "budget_minutes": budget, "machine": machine, "results": rows},
               out / "bench_quality.json")
    (out / "bench_quality.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
