"""Through-plane consistency and structure preservation of slice-wise translated volumes, inside a head mask.

A 2D generator converts a volume slice by slice, so nothing ties neighbouring output slices together (the volume
flickers along the slice axis) and nothing ties the output's anatomy to the input's. These figures show both.
Volumes are (H, W, D) arrays with axial slices along the last axis (2D (H, W) for `ngf_alignment`), computed in
float64; ``mask`` (same shape, boolean; None: everything) selects the voxels that count.

Each volume may be on its own scale (the network's [-1, 1], HU, MR units): every figure is invariant to
``x -> a x + b`` applied to either volume (``a > 0`` for `z_gradient_correlation`, any ``a != 0`` for the
others), because each is a correlation or a ratio of like quantities of one volume. An empty mask (or, along z,
no pair of neighbouring voxels both in the mask) gives NaN, as does a figure whose denominator vanishes (e.g. a
volume with no z-variation at all); NaN or Inf inside the mask (or within reach of a smoothing filter) raise
``ValueError``.

- `z_gradient_correlation` (output vs a paired real volume of the same modality): Pearson correlation of the
  slice-to-slice differences ``dz = v[..., 1:] - v[..., :-1]`` over voxel pairs inside the mask. In [-1, 1],
  higher is better, 1 when the output changes along z exactly as the reference does.
- `z_edge_correlation` (output vs its input, any modalities): Pearson correlation of ``|dz|``: input edges along
  z should predict output edges along z, whatever the contrast; magnitudes because CT and MR contrasts may
  have opposite signs. Higher is better, 1 for identical volumes.
- `z_roughness_ratio` (output vs its input): ``rho(v) = mean|dz| / mean((|dx| + |dy|) / 2)`` (forward
  differences inside the mask) of the output over that of the input. The anatomy sets rho, not the contrast
  (white noise adds the same to both sides of the fraction, pulling rho towards 1); 1 is best, above 1
  flicker, below 1 over-smoothing along z (in-plane blur also raises it: read it beside `ngf_alignment`).
- `ngf_alignment` (output vs its input): in-plane normalised gradient fields (Haber & Modersitzki, "Intensity
  gradient based registration and fusion of multi-modal images", MICCAI 2006)
  ``n = grad v / sqrt(|grad v|^2 + eps^2)``, per axial slice with Gaussian derivatives (``sigma`` px), and
  ``eps = eta * mean |grad v|`` inside the mask (relative to each volume, so scale-free). Their squared
  alignment, normalised so that identical volumes score 1 (Cauchy-Schwarz bounds it by 1):
  ``sum (n_o . n_s)^2 / sqrt(sum |n_o|^4 * sum |n_s|^4)``. In [0, 1], higher is better; it drops where edges
  move, vanish or appear (flip, blur, flicker). The head-mask Dice stays beside it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

__all__ = [
    "CONSISTENCY_DIRECTIONS",
    "consistency_metrics",
    "ngf_alignment",
    "z_edge_correlation",
    "z_gradient_correlation",
    "z_roughness_ratio",
]

# Metric name -> what a better value looks like: "higher", or "one" (closer to 1).
CONSISTENCY_DIRECTIONS: dict[str, str] = {
    "z_gradient_corr": "higher",
    "z_edge_corr": "higher",
    "z_roughness_ratio": "one",
    "ngf_alignment": "higher",
}


def _filter_radius(sigma: float) -> int:
    """Radius of scipy's Gaussian filters (``truncate=4``) in px, plus one for the derivative."""
    return int(4.0 * float(sigma) + 0.5) + 1


def _array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x if x.dtype == torch.bool else x.double()
        return x.numpy()
    return np.asarray(x)


def _prepare(output: Any, other: Any, mask: Any, ndims: tuple[int, ...] = (3,), margin: int = 0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 copies and the boolean mask, cropped to the mask's bounding box (``margin`` px more in-plane, for
    filters; the figures only read voxels inside the mask). An empty mask comes back empty."""
    o, s = _array(output).astype(np.float64), _array(other).astype(np.float64)
    if o.shape != s.shape:
        raise ValueError(f"volume shapes differ: {o.shape} vs {s.shape}")
    if o.ndim not in ndims:
        raise ValueError(f"expected an array of {' or '.join(map(str, ndims))} dimensions, got shape {o.shape}")
    m = np.ones(o.shape, dtype=bool) if mask is None else _array(mask).astype(bool)
    if m.shape != o.shape:
        raise ValueError(f"mask shape {m.shape} differs from volume shape {o.shape}")
    if not m.any():
        return o[..., :0], s[..., :0], m[..., :0]
    box = []
    for axis in range(m.ndim):
        idx = np.flatnonzero(m.any(axis=tuple(a for a in range(m.ndim) if a != axis)))
        pad = margin if axis < 2 else 0
        box.append(slice(max(int(idx[0]) - pad, 0), int(idx[-1]) + 1 + pad))
    box_t = tuple(box)
    o, s, m = o[box_t], s[box_t], m[box_t]
    read = m if margin == 0 else np.ones_like(m)  # filters also read the margin around the mask
    if not (np.isfinite(o[read]).all() and np.isfinite(s[read]).all()):
        raise ValueError("volumes contain NaN or Inf inside the mask (or within a filter's reach of it)")
    return o, s, m


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0 or np.ptp(a) == 0 or np.ptp(b) == 0:  # no pairs, or a constant side: undefined
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else math.nan


def _z_pairs(m: np.ndarray) -> np.ndarray:
    """Mask of the slice-to-slice differences: both voxels of the pair inside ``m``."""
    return m[..., 1:] & m[..., :-1]


def z_gradient_correlation(output: Any, reference: Any, mask: Any = None) -> float:
    """Pearson correlation of the z-differences of ``output`` and a paired ``reference`` (same modality) inside
    the mask; higher is better, 1 at best, NaN without voxel pairs (module docstring)."""
    o, r, m = _prepare(output, reference, mask)
    mz = _z_pairs(m)
    return _pearson(np.diff(o, axis=-1)[mz], np.diff(r, axis=-1)[mz])


def z_edge_correlation(output: Any, source: Any, mask: Any = None, sigma: float = 0.0) -> float:
    """Pearson correlation of ``|dz|`` of ``output`` and of its input ``source`` (any modalities) inside the mask;
    ``sigma`` > 0 smooths each slice first (px). Higher is better, 1 at best, NaN without voxel pairs."""
    o, s, m = _prepare(output, source, mask, margin=_filter_radius(sigma) if sigma > 0 else 0)
    if sigma > 0:
        o, s = gaussian_filter(o, (sigma, sigma, 0.0)), gaussian_filter(s, (sigma, sigma, 0.0))
    mz = _z_pairs(m)
    return _pearson(np.abs(np.diff(o, axis=-1))[mz], np.abs(np.diff(s, axis=-1))[mz])


def _roughness(v: np.ndarray, m: np.ndarray) -> float:
    dz = np.abs(np.diff(v, axis=2))[_z_pairs(m)]
    dx = np.abs(np.diff(v, axis=0))[m[1:] & m[:-1]]
    dy = np.abs(np.diff(v, axis=1))[m[:, 1:] & m[:, :-1]]
    if dz.size == 0 or dx.size == 0 or dy.size == 0:
        return math.nan
    in_plane = 0.5 * (float(dx.mean()) + float(dy.mean()))
    return float(dz.mean()) / in_plane if in_plane > 0 else math.nan


def z_roughness_ratio(output: Any, source: Any, mask: Any = None) -> float:
    """Through-plane over in-plane roughness of ``output`` relative to its input's (module docstring): 1 is
    best, above 1 flicker, below 1 over-smoothing along z; NaN without voxel pairs or when undefined."""
    o, s, m = _prepare(output, source, mask)
    ro, rs = _roughness(o, m), _roughness(s, m)
    return ro / rs if rs > 0 else math.nan  # NaN propagates (comparisons with NaN are False)


def _ngf(v: np.ndarray, m: np.ndarray, sigma: float, eta: float) -> tuple[np.ndarray, np.ndarray]:
    """In-plane NGF components at the mask voxels (1D arrays)."""
    sig = (sigma, sigma, 0.0)
    gx = gaussian_filter(v, sig, order=(1, 0, 0))[m]
    gy = gaussian_filter(v, sig, order=(0, 1, 0))[m]
    mag2 = gx * gx + gy * gy
    eps = eta * float(np.sqrt(mag2).mean())
    den = np.sqrt(mag2 + eps * eps)
    den[den == 0] = 1.0  # flat volume: n = 0
    return gx / den, gy / den


def ngf_alignment(output: Any, source: Any, mask: Any = None, sigma: float = 0.7, eta: float = 0.5) -> float:
    """Normalised in-plane NGF alignment of ``output`` and its input ``source`` inside the mask, in [0, 1]; higher
    is better, 1 for identical volumes (module docstring); (H, W) slices work too. NaN for an empty mask."""
    if not sigma > 0 or not eta > 0:
        raise ValueError(f"sigma and eta must be > 0, got sigma={sigma!r}, eta={eta!r}")
    o, s, m = _prepare(output, source, mask, ndims=(2, 3), margin=_filter_radius(sigma))
    if not m.any():
        return math.nan
    if o.ndim == 2:
        o, s, m = o[..., None], s[..., None], m[..., None]
    ox, oy = _ngf(o, m, sigma, eta)
    sx, sy = _ngf(s, m, sigma, eta)
    dot2 = float(((ox * sx + oy * sy) ** 2).sum())
    den = math.sqrt(float(((ox * ox + oy * oy) ** 2).sum()) * float(((sx * sx + sy * sy) ** 2).sum()))
    return dot2 / den if den > 0 else math.nan


def consistency_metrics(output: Any, source: Any, mask: Any = None, reference: Any = None) -> dict[str, float]:
    """All four figures (``CONSISTENCY_DIRECTIONS`` names), ``z_gradient_corr`` NaN without a ``reference``."""
    return {
        "z_gradient_corr": math.nan if reference is None else z_gradient_correlation(output, reference, mask),
        "z_edge_corr": z_edge_correlation(output, source, mask),
        "z_roughness_ratio": z_roughness_ratio(output, source, mask),
        "ngf_alignment": ngf_alignment(output, source, mask),
    }
