"""The domain gap: how far an input reaches the generator from what its training images looked like.

Two figures per volume, both against the contract's `TrainingReference` of the source domain:

* ``intensity_ratio``: the 1-Wasserstein distance between the in-head [-1, 1] values the generator gets and the
  training images' in-head values (from their recorded quantiles), over the distance between two random halves of
  the training set (``halves_distance``). 1 is as close as training is to itself.
* ``head_size_ratio``: the framed head's median per-slice extent (longer side of each slice's bounding box, frame
  px, `slice_extent`) over the training images' median; for models trained on volumes, the head's extent over the
  whole volume over the training volumes' median, as those were measured.

A volume is "far from training" when its intensity distance exceeds what single training images (volumes, for
models trained on volumes) reach (the 95th percentile of their distances to the whole training set,
``image_distance_p95``; ``FAR_INTENSITY_RATIO`` times the
halves' distance for contracts without it) or the head size differs from the training median by more than
``FAR_HEAD_SIZE`` (relative); the message names both figures and the limit. 1-D
Wasserstein distances come from quantile functions (W1 = integral over u of |F^-1(u) - G^-1(u)|), approximated on
the 101 recorded levels by the trapezoid rule; ``scipy.stats.wasserstein_distance`` needs both samples, and the
contract keeps only quantiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ctmri_monai.spec import QUANTILE_LEVELS, ModelSpec
from ctmri_monai.transforms.mask import reference_head_extent

__all__ = ["FAR_HEAD_SIZE", "FAR_INTENSITY_RATIO", "domain_gap", "in_head_quantiles", "quantile_distance"]

#: Without a recorded single-image limit, flag a volume beyond five times the training halves' intensity distance;
#: always, one with a head more than 15 % off the training median size. Measured on the phantoms: standardised MRI
#: of any gain / gamma 0.5-0.9x the halves' distance; an unseen subject through the percentiles its training images
#: were made with 4.4x; the same with a gamma of 0.6-2, 10-14x.
FAR_INTENSITY_RATIO, FAR_HEAD_SIZE = 5.0, 0.15


def in_head_quantiles(values: Any, mask: Any = None, levels: Sequence[float] = QUANTILE_LEVELS) -> np.ndarray:
    """Quantiles (at percent ``levels``) of ``values`` inside ``mask`` (all values without one)."""
    array = np.asarray(values, dtype=np.float32)
    inside = array[np.asarray(mask, dtype=bool)] if mask is not None else array.ravel()
    if inside.size == 0:
        raise ValueError("no values inside the head mask")
    return np.percentile(inside, list(levels)).astype(np.float64)


def quantile_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """1-Wasserstein distance of two distributions given by quantiles at the same evenly spaced levels."""
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float((diff[:-1] + diff[1:]).mean() / 2.0)


def domain_gap(spec: ModelSpec, domain: str, frames: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """The gap figures of a framed (S, S, D) input of ``domain`` with its head ``mask`` (module docstring):
    intensity_distance, intensity_ratio, intensity_limit, head_extent_px, head_size_ratio, far (bool), message;
    figures the contract cannot give (a checkpoint without training references) are None."""
    ref = spec.reference(domain)
    out: dict[str, Any] = {"intensity_distance": None, "intensity_ratio": None, "intensity_limit": None,
                           "head_extent_px": None, "head_size_ratio": None, "far": False, "message": None}
    extent = reference_head_extent(mask, spec.layout)  # measured as the training references were
    if extent is not None:
        out["head_extent_px"] = round(extent, 2)
        if ref.head_extent_px:
            out["head_size_ratio"] = round(extent / ref.head_extent_px, 4)
    if ref.quantiles is not None and mask.any():
        distance = quantile_distance(in_head_quantiles(frames, mask), ref.quantiles)
        out["intensity_distance"] = round(distance, 5)
        if ref.halves_distance:
            out["intensity_ratio"] = round(distance / ref.halves_distance, 3)
    limit = FAR_INTENSITY_RATIO
    if ref.image_distance_p95 and ref.halves_distance:
        limit = round(ref.image_distance_p95 / ref.halves_distance, 2)
    out["intensity_limit"] = limit if ref.quantiles is not None else None
    far_intensity = out["intensity_ratio"] is not None and out["intensity_ratio"] > limit
    units = "volumes" if spec.layout == "volumes" else "images"
    far_size = out["head_size_ratio"] is not None and abs(out["head_size_ratio"] - 1.0) > FAR_HEAD_SIZE
    if far_intensity or far_size:
        out["far"] = True
        out["message"] = (f"far from training: in-head intensities {out['intensity_ratio']}x the training halves' "
                          f"distance (limit {limit:g}x: single training {units}), head size "
                          f"{out['head_size_ratio']}x the training median (limit +-{FAR_HEAD_SIZE:.0%})")
    return out
