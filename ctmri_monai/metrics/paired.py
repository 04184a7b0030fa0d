"""Paired image metrics inside a mask, as the SynthRAD challenge reports them (phantoms, registered CT/MR).

Inputs are 2D or 3D arrays (numpy or torch) of the same shape, computed in float64; the mask (same shape,
boolean) selects the voxels that count (SynthRAD: the body/head mask). The mask itself is the caller's job
(the one head mask: `ctmri_monai.transforms.mask`). For synthetic CT in HU SynthRAD clips both images to
[-1024, 3000] HU and uses ``data_range = 3000 - (-1024) = 4024`` for PSNR and SSIM: pass
``data_range=CT_DATA_RANGE`` (and ``clip=CT_HU_RANGE``). ``data_range=None`` uses max - min of the target
inside the mask.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_numpy
from scipy.ndimage import gaussian_filter

__all__ = ["CT_DATA_RANGE", "CT_HU_RANGE", "PairedAccumulator", "dice", "mae", "paired_metrics", "psnr", "ssim",
           "ssim_map"]

CT_HU_RANGE = (-1024.0, 3000.0)
CT_DATA_RANGE = CT_HU_RANGE[1] - CT_HU_RANGE[0]


def _np(x: Any) -> np.ndarray:
    """Masks stay boolean; values are compared in float64."""
    array = convert_to_numpy(x)
    return array if array.dtype == bool or not isinstance(x, torch.Tensor) else array.astype(np.float64)


def _prepare(
    pred: Any, target: Any, mask: Any, clip: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p, t = _np(pred).astype(np.float64), _np(target).astype(np.float64)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    m = np.ones(t.shape, dtype=bool) if mask is None else _np(mask).astype(bool)
    if m.shape != t.shape:
        raise ValueError(f"mask shape {m.shape} differs from image shape {t.shape}")
    if not m.any():
        raise ValueError("mask is empty")
    if not (np.isfinite(p[m]).all() and np.isfinite(t[m]).all()):
        raise ValueError("images contain NaN or Inf inside the mask")
    if clip is not None:
        p, t = np.clip(p, *clip), np.clip(t, *clip)
    return p, t, m


def _range(t: np.ndarray, m: np.ndarray, data_range: float | None) -> float:
    r = float(t[m].max() - t[m].min()) if data_range is None else float(data_range)
    if not r > 0:
        raise ValueError(f"data_range must be > 0, got {r}")
    return r


def dice(a: Any, b: Any) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    a, b = _np(a).astype(bool), _np(b).astype(bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def mae(pred: Any, target: Any, mask: Any = None, clip: tuple[float, float] | None = None) -> float:
    """Mean absolute error inside the mask (in the images' unit, e.g. HU)."""
    p, t, m = _prepare(pred, target, mask, clip)
    return float(np.abs(p[m] - t[m]).mean())


def psnr(
    pred: Any,
    target: Any,
    mask: Any = None,
    data_range: float | None = None,
    clip: tuple[float, float] | None = None,
) -> float:
    """PSNR = 10 log10(data_range^2 / MSE) in dB, MSE inside the mask; ``inf`` for identical images."""
    p, t, m = _prepare(pred, target, mask, clip)
    mse = float(((p[m] - t[m]) ** 2).mean())
    r = _range(t, m, data_range)
    return math.inf if mse == 0 else 10.0 * math.log10(r * r / mse)


def ssim_map(p: np.ndarray, t: np.ndarray, data_range: float, slicewise: bool = False, sigma: float = 1.5,
             k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """The SSIM map (Wang et al. 2004, Gaussian window) of two float64 arrays of one shape.

    ``scipy.ndimage.gaussian_filter(sigma=1.5, truncate=3.5)`` (an 11-tap window, 'reflect' borders, as
    scikit-image's ``gaussian_weights=True``; population covariances as in the paper). ``slicewise``: a 3D array is
    filtered within each axial slice (last axis) only, as a 2D evaluation of those slices would be.
    """
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    sigmas = (sigma, sigma, 0.0) if slicewise and p.ndim == 3 else sigma

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma=sigmas, truncate=3.5, mode="reflect")

    mu_p, mu_t = blur(p), blur(t)
    var_p = blur(p * p) - mu_p * mu_p
    var_t = blur(t * t) - mu_t * mu_t
    cov = blur(p * t) - mu_p * mu_t
    return ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))


def ssim(
    pred: Any,
    target: Any,
    mask: Any = None,
    data_range: float | None = None,
    clip: tuple[float, float] | None = None,
    slicewise: bool = False,
) -> float:
    """Mean SSIM inside the mask (`ssim_map` over the whole image, averaged over the mask voxels).

    Our own instead of ``monai.metrics.SSIMMetric``, whose map is cropped to the valid-convolution region and
    cannot be averaged over an arbitrary mask.
    """
    p, t, m = _prepare(pred, target, mask, clip)
    return float(ssim_map(p, t, _range(t, m, data_range), slicewise)[m].mean())


class PairedAccumulator:
    """MAE, PSNR and SSIM accumulated over the mask voxels of many image pairs (volumes or slices), so that a
    volume and the same slices evaluated one by one give the same numbers. SSIM maps are 2D (``slicewise``)."""

    def __init__(self, data_range: float, clip: tuple[float, float] | None = None) -> None:
        self.data_range, self.clip = float(data_range), clip
        self.abs_sum = self.sq_sum = self.ssim_sum = 0.0
        self.count = 0

    def add(self, pred: Any, target: Any, mask: Any) -> None:
        """Add one pair (2D slice or (H, W, D) stack of axial slices); an empty mask adds nothing."""
        if not np.asarray(_np(mask), dtype=bool).any():
            return
        p, t, m = _prepare(pred, target, mask, self.clip)
        d = p[m] - t[m]
        self.abs_sum += float(np.abs(d).sum())
        self.sq_sum += float((d * d).sum())
        self.ssim_sum += float(ssim_map(p, t, self.data_range, slicewise=True)[m].sum())
        self.count += int(m.sum())

    def result(self) -> dict[str, float]:
        """``{"mae", "psnr", "ssim", "voxels"}`` over everything added (NaN when nothing was)."""
        if self.count == 0:
            return {"mae": math.nan, "psnr": math.nan, "ssim": math.nan, "voxels": 0}
        mse = self.sq_sum / self.count
        psnr_db = math.inf if mse == 0 else 10.0 * math.log10(self.data_range**2 / mse)
        return {"mae": self.abs_sum / self.count, "psnr": psnr_db, "ssim": self.ssim_sum / self.count,
                "voxels": self.count}


def paired_metrics(
    pred: Any,
    target: Any,
    mask: Any = None,
    data_range: float | None = None,
    clip: tuple[float, float] | None = None,
) -> dict[str, float]:
    """``{"mae", "psnr", "ssim"}`` inside the mask (the SynthRAD set; module docstring: CT settings)."""
    return {
        "mae": mae(pred, target, mask, clip),
        "psnr": psnr(pred, target, mask, data_range, clip),
        "ssim": ssim(pred, target, mask, data_range, clip),
    }
