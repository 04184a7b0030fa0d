"""Paired image metrics inside a mask, as the SynthRAD challenge reports them (phantoms, registered CT/MR).

Inputs are 2D or 3D arrays (numpy or torch) of the same shape, computed in float64; the mask (same shape,
boolean) selects the voxels that count (SynthRAD: the body/head mask). The mask itself is the caller's job
(the convert package owns the QA head mask). For synthetic CT in HU SynthRAD clips both images to
[-1024, 3000] HU and uses ``data_range = 3000 - (-1024) = 4024`` for PSNR and SSIM: pass
``data_range=CT_DATA_RANGE`` (and ``clip=CT_HU_RANGE``). ``data_range=None`` uses max - min of the target
inside the mask.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

__all__ = ["CT_DATA_RANGE", "CT_HU_RANGE", "mae", "paired_metrics", "psnr", "ssim"]

CT_HU_RANGE = (-1024.0, 3000.0)
CT_DATA_RANGE = CT_HU_RANGE[1] - CT_HU_RANGE[0]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.numpy() if x.dtype == torch.bool else x.double().numpy()
    return np.asarray(x)


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


def ssim(
    pred: Any,
    target: Any,
    mask: Any = None,
    data_range: float | None = None,
    clip: tuple[float, float] | None = None,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean SSIM inside the mask (Wang et al. 2004, Gaussian window).

    The SSIM map is computed over the whole image (2D, or 3D with an isotropic-in-voxels window) with
    ``scipy.ndimage.gaussian_filter(sigma=1.5, truncate=3.5)`` (an 11-tap window, 'reflect' borders, as
    scikit-image's ``gaussian_weights=True``; population covariances as in the paper) and averaged over the
    mask voxels. Uses our own implementation instead of ``monai.metrics.SSIMMetric``, whose map is
    cropped to the valid-convolution region and cannot be averaged over an arbitrary mask.
    """
    p, t, m = _prepare(pred, target, mask, clip)
    r = _range(t, m, data_range)
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma=sigma, truncate=3.5, mode="reflect")

    mu_p, mu_t = blur(p), blur(t)
    var_p = blur(p * p) - mu_p * mu_p
    var_t = blur(t * t) - mu_t * mu_t
    cov = blur(p * t) - mu_p * mu_t
    smap = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return float(smap[m].mean())


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
