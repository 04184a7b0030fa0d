"""Paired metrics when pairs exist (phantoms, or registered CT/MR volumes): MAE, PSNR, SSIM in a head mask.

Each held-out pair ``volumes/ct/<name>`` / ``volumes/mri/<name>`` is converted both ways with the slice-wise
conversion (so the numbers describe what users get on volumes) and compared with its real counterpart inside
the head mask of the real image, as SynthRAD scores synthetic CT: MAE in HU, PSNR over the HU range
[-1024, 3000], mean SSIM. Synthetic MRI lives in the training scale [-1, 1]; it is compared with the real MRI
normalised the same way (MAE in that scale, PSNR with data range 2).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from ctmri_monai.convert.pipeline import convert_volume
from ctmri_monai.data import split_train_val
from ctmri_monai.metrics.paired import CT_DATA_RANGE, CT_HU_RANGE, paired_metrics
from ctmri_monai.transforms import mri_to_unit


def held_out_volume_pairs(dataset_dir: str | Path, val_fraction: float = 0.1, seed: int = 0) -> list[tuple[Path, Path]]:
    """(CT, MRI) NIfTI pairs sharing a file name under ``volumes/``, restricted to held-out subjects.

    Held out: the phantom generator's test subjects when ``phantoms.json`` says so, else the validation split.
    """
    root = Path(dataset_dir)
    ct_dir, mri_dir = root / "volumes" / "ct", root / "volumes" / "mri"
    if not (ct_dir.is_dir() and mri_dir.is_dir()):
        return []
    names = sorted(p.name for p in ct_dir.glob("*.nii*") if (mri_dir / p.name).is_file())
    manifest = root / "phantoms.json"
    if manifest.is_file():
        test = set(json.loads(manifest.read_text()).get("test_subjects", []))
        names = [n for n in names if n.split(".")[0] in test]
    else:
        names = split_train_val(names, val_fraction, seed)[1]
    return [(ct_dir / n, mri_dir / n) for n in names]


def head_mask_3d(volume: np.ndarray, threshold: float) -> np.ndarray:
    """Voxels above ``threshold``, holes filled slice by slice (axial = last axis)."""
    mask = volume > threshold
    for k in range(mask.shape[-1]):
        mask[..., k] = ndimage.binary_fill_holes(mask[..., k])
    return mask


def evaluate_volume_pairs(pairs: list[tuple[Path, Path]], generators: dict[str, Any], model_spec: dict[str, Any],
                          device: str = "cpu", batch_size: int = 16) -> dict[str, float]:
    """Mean paired metrics over ``pairs`` for both directions: keys like ``mae_mri2ct_hu``, ``ssim_ct2mri``."""
    if not pairs:
        return {}
    settings = {"image_size": int(model_spec["image_size"]), "pixdim": tuple(model_spec["pixdim"]),
                "ct_window": tuple(model_spec["ct_window"]), "mri_percentiles": tuple(model_spec["mri_percentiles"]),
                "batch_size": batch_size, "device": device, "amp": False}
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ct_path, mri_path in pairs:
            real_ct = np.asarray(nib.load(ct_path).dataobj, dtype=np.float32)
            real_mri = np.asarray(nib.load(mri_path).dataobj, dtype=np.float32)
            fake_ct_path, fake_mri_path = Path(tmp) / "sct.nii.gz", Path(tmp) / "smri.nii.gz"
            convert_volume(mri_path, fake_ct_path, generators["mri2ct"], "mri", "ct", **settings)
            convert_volume(ct_path, fake_mri_path, generators["ct2mri"], "ct", "mri", **settings)
            ct_mask = head_mask_3d(real_ct, -500.0)
            sct = np.asarray(nib.load(fake_ct_path).dataobj, dtype=np.float32)
            for key, value in paired_metrics(sct, real_ct, ct_mask, CT_DATA_RANGE, CT_HU_RANGE).items():
                rows.setdefault(f"{key}_mri2ct" + ("_hu" if key == "mae" else ""), []).append(value)
            lo, hi = np.percentile(real_mri[real_mri > real_mri.min()], settings["mri_percentiles"])
            mri_unit = np.asarray(mri_to_unit(real_mri, float(lo), float(hi)))
            smri = np.asarray(nib.load(fake_mri_path).dataobj, dtype=np.float32)
            for key, value in paired_metrics(smri, mri_unit, ct_mask, 2.0, (-1.0, 1.0)).items():
                rows.setdefault(f"{key}_ct2mri", []).append(value)
    return {key: float(np.mean(values)) for key, values in rows.items()} | {"n_pairs": len(pairs)}
