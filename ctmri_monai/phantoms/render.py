"""Phantom rendering: CT (HU) and T1-like MRI from the same label map, and their 2D display images.

The CT and the MRI of a subject are rendered from ONE label map, so they are paired voxel to voxel by
construction. 2D images use the radiological display layout (rows anterior -> posterior, columns patient
right -> left) and the model's data contract mappings (`ct_to_unit`, `mri_to_unit`, `unit_to_uint8`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ctmri_monai.io.images import unit_to_uint8
from ctmri_monai.phantoms.anatomy import LABELS, build_labels, check_geometry, phantom_affine
from ctmri_monai.spec import window_from_level_width
from ctmri_monai.transforms.intensity import ct_to_unit, mri_to_unit

__all__ = ["CT_PNG_WINDOW", "MRI_PNG_PERCENTILES", "Phantom", "ct_to_png", "make_subject", "mri_to_png",
           "radiological_slice", "radiological_stack"]

_L = LABELS

#: (level, width) in HU of the 8-bit CT PNGs: a brain window like the Kaggle / CT-ICH PNGs the project trains
#: on (brain grey levels ~100-150, CSF dark, skull saturated white, air and fat black).
CT_PNG_WINDOW: tuple[float, float] = (40.0, 120.0)
#: Foreground percentiles mapped to 0 and 255 in the MRI PNGs (the contract's MRI normalisation).
MRI_PNG_PERCENTILES: tuple[float, float] = (0.5, 99.5)

_HU_MIN, _HU_MAX = -1024, 3071


@dataclass
class Phantom:
    """One synthetic subject: label map, CT (HU, int16), T1-like MRI (float32) on the same grid."""

    name: str
    labels: np.ndarray
    ct: np.ndarray
    mri: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    info: dict[str, Any] = field(default_factory=dict)


def _blur(img: np.ndarray) -> np.ndarray:
    """Mild partial-volume blur (about a third of a voxel)."""
    return ndimage.gaussian_filter(img, sigma=(0.35, 0.35, 0.25), mode="nearest")


def _render_ct(labels: np.ndarray, skull_depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hu = np.zeros(len(LABELS), dtype=np.float32)
    hu[_L["background"]] = -1000.0
    hu[_L["skin"]] = rng.uniform(30, 45)
    hu[_L["fat"]] = rng.uniform(-110, -85)
    hu[_L["csf"]] = rng.uniform(5, 12)
    hu[_L["grey_matter"]] = rng.uniform(37, 43)
    hu[_L["white_matter"]] = rng.uniform(23, 28)
    hu[_L["bleed"]] = rng.uniform(62, 80)
    hu[_L["mass"]] = rng.uniform(45, 55)
    hu[_L["edema"]] = rng.uniform(14, 19)
    img = hu[labels]
    # Skull: dense tables (1300-1500 HU) around a less dense diploe (700-900 HU).
    cortical, diploe = rng.uniform(1300, 1500), rng.uniform(720, 900)
    bone = labels == _L["bone"]
    t = skull_depth[bone]
    img[bone] = diploe + (cortical - diploe) * (1.0 - 4.0 * t * (1.0 - t)) ** 2
    img = _blur(img)
    img += np.float32(rng.uniform(3.0, 5.0)) * rng.standard_normal(size=img.shape, dtype=np.float32)
    return np.clip(np.rint(img), _HU_MIN, _HU_MAX).astype(np.int16)


def _render_mri(labels: np.ndarray, skull_depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    t1 = np.zeros(len(LABELS), dtype=np.float32)  # T1-weighted: WM > GM > CSF, fat bright, bone/air dark
    t1[_L["skin"]] = rng.uniform(0.45, 0.55)
    t1[_L["fat"]] = rng.uniform(0.9, 1.0)
    t1[_L["csf"]] = rng.uniform(0.12, 0.2)
    t1[_L["grey_matter"]] = rng.uniform(0.52, 0.6)
    t1[_L["white_matter"]] = rng.uniform(0.82, 0.9)
    t1[_L["bleed"]] = rng.uniform(0.9, 1.0)
    t1[_L["mass"]] = rng.uniform(0.35, 0.42)
    t1[_L["edema"]] = rng.uniform(0.4, 0.47)
    img = t1[labels]
    bone = labels == _L["bone"]
    t = skull_depth[bone]
    img[bone] = 0.05 + 0.3 * (4.0 * t * (1.0 - t)) ** 2  # dark tables, fatty marrow a bit brighter
    img = _blur(img)
    # Gentle multiplicative bias field (about +-10 %) over normalised coordinates.
    coords = [np.linspace(-1, 1, n, dtype=np.float32) for n in labels.shape]
    cx, cy, cz = coords[0][:, None, None], coords[1][None, :, None], coords[2][None, None, :]
    k = rng.uniform(-0.08, 0.08, size=5).astype(np.float32)
    img *= np.exp(k[0] * cx + k[1] * cy + k[2] * cz + k[3] * cx * cy + k[4] * (cz**2 - 0.33))
    gain = np.float32(rng.uniform(700, 1200))
    img *= gain
    sigma = np.float32(0.012) * gain
    n1 = rng.standard_normal(size=img.shape, dtype=np.float32) * sigma
    n2 = rng.standard_normal(size=img.shape, dtype=np.float32) * sigma
    img = np.sqrt((img + n1) ** 2 + n2**2)  # Rician magnitude noise
    # Stored in steps of 1/16 (far below the noise, about 10 units): the NIfTI compresses twice as well.
    return (np.round(img * 16.0) / 16.0).astype(np.float32)


def make_subject(index: int, seed: int = 0, shape: tuple[int, int, int] = (96, 96, 48),
                 spacing: tuple[float, float, float] = (2.0, 2.0, 3.0), lesion: str | None = None) -> Phantom:
    """Build subject ``index`` for ``seed``: label map, CT (int16 HU) and T1-like MRI (float32), paired.
    ``lesion`` ("none", "bleed", "mass") replaces the drawn lesion kind; everything else stays as drawn."""
    shape, spacing = check_geometry(shape, spacing)
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    geometry_rng = np.random.default_rng([int(seed), int(index), 0])
    labels, skull_depth, info = build_labels(shape, spacing, geometry_rng, lesion)
    noise_rng = np.random.default_rng([int(seed), int(index), 1])
    ct = _render_ct(labels, skull_depth, noise_rng)
    mri = _render_mri(labels, skull_depth, noise_rng)
    return Phantom(f"subj{int(index):03d}", labels, ct, mri, phantom_affine(shape, spacing), spacing, info)


# ------------------------------------------------------------------------------------------- 2D slices
def radiological_slice(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` in display layout: rows anterior -> posterior, columns patient right -> left."""
    return np.ascontiguousarray(volume[::-1, ::-1, z].T)


def radiological_stack(volume: np.ndarray) -> np.ndarray:
    """All axial slices in display layout, shape (Z, Y, X): ``stack[z] == radiological_slice(volume, z)``."""
    return np.ascontiguousarray(np.transpose(volume[::-1, ::-1, :], (2, 1, 0)))


def ct_to_png(hu: np.ndarray, window: tuple[float, float] = CT_PNG_WINDOW) -> np.ndarray:
    """HU -> uint8 through a (level, width) window: the contract's CT mapping, then the one 8-bit mapping."""
    return unit_to_uint8(ct_to_unit(hu, window_from_level_width(*window)))


def mri_to_png(mri: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """MRI -> uint8 with ``lo`` -> 0 and ``hi`` -> 255: the contract's MRI mapping (``lo``, ``hi``: the volume's
    foreground percentiles, `mri_range`), then the one 8-bit mapping."""
    return unit_to_uint8(mri_to_unit(mri, lo, hi))
