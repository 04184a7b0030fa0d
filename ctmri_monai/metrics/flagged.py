"""Figures and pictures from a disagreement map (`ctmri_monai.engines.disagreement`): what is flagged, where, and
how well a map finds known errors.

* `flag_mask`: the flagged voxels: map >= ``FLAG_THRESHOLD`` inside the head, holes closed axial slice by slice
  (an error's edges enclose it), components under ``min_voxels`` dropped.
* `flag_figures`: the share of head voxels flagged, the flagged regions (count; each with voxels, volume in mm^3,
  centroid in voxel indices and in the affine's patient coordinates, peak), the worst axial slices. The axial
  axis comes from the affine: sagittal and coronal acquisitions store it first or second.
* `outline_regions`: an RGB picture of a slice with the flagged regions' outlines drawn on it (QA montage).
* `voxel_auroc`, `region_dice`: how well a map separates known (planted or measured) error voxels from the rest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

from ctmri_monai.io.orientation import axial_axis
from ctmri_monai.metrics.paired import dice

__all__ = ["FLAG_THRESHOLD", "MIN_REGION_VOXELS", "flag_figures", "flag_mask", "outline_regions", "region_dice",
           "voxel_auroc"]

#: A voxel is flagged when the map reaches this value: each signal's own threshold maps to 0.5
#: (`ctmri_monai.engines.disagreement`).
FLAG_THRESHOLD = 0.5
#: Smaller flagged components are dropped (single voxels of noise are not regions).
MIN_REGION_VOXELS = 4


def flag_mask(dmap: np.ndarray, head: np.ndarray | None = None, threshold: float = FLAG_THRESHOLD,
              min_voxels: int = MIN_REGION_VOXELS, axis: int = 2) -> np.ndarray:
    """Boolean flagged voxels of a 3D map whose axial slices lie along array ``axis`` (module docstring)."""
    m = np.asarray(dmap) >= threshold
    head = np.ones(m.shape, bool) if head is None else np.asarray(head, bool)
    m &= head
    for k in np.flatnonzero(m.any(axis=tuple(a for a in range(3) if a != axis))):
        plane = (slice(None),) * axis + (k,)
        m[plane] = ndimage.binary_fill_holes(m[plane]) & head[plane]
    labels, n = ndimage.label(m)
    if n:
        sizes = np.bincount(labels.ravel())
        m &= (sizes >= min_voxels)[labels] & (labels > 0)
    return m


def flag_figures(dmap: np.ndarray, head: np.ndarray, affine: np.ndarray | None = None,
                 threshold: float = FLAG_THRESHOLD, min_voxels: int = MIN_REGION_VOXELS,
                 worst: int = 3, max_regions: int = 10) -> dict[str, Any]:
    """What a reader needs from a map on a volume's grid: ``flagged_share`` of head voxels, ``regions`` (count and
    the ``max_regions`` largest: voxels, volume_mm3, centroid_voxel, centroid_patient (the ``affine``'s world
    coordinates, e.g. RAS mm for NIfTI), peak), ``worst_slices`` (the ``worst`` axial slices with the most flagged
    voxels, with their index along the affine's axial axis and their count), the ``threshold`` and ``min_voxels``
    used. JSON-ready."""
    dmap, head = np.asarray(dmap, np.float32), np.asarray(head, bool)
    affine = np.eye(4) if affine is None else np.asarray(affine, np.float64)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    axis = axial_axis(affine)
    flagged = flag_mask(dmap, head, threshold, min_voxels, axis)
    labels, n = ndimage.label(flagged)
    regions = []
    if n:
        index = np.arange(1, n + 1)
        sizes = ndimage.sum_labels(flagged, labels, index)
        centroids = ndimage.center_of_mass(flagged, labels, index)
        peaks = ndimage.maximum(dmap, labels, index)
        for i in np.argsort(-sizes)[:max_regions]:
            c = np.asarray(centroids[i], np.float64)
            world = affine @ np.append(c, 1.0)
            regions.append({"voxels": int(sizes[i]), "volume_mm3": round(float(sizes[i]) * voxel_mm3, 1),
                            "centroid_voxel": [round(float(v), 1) for v in c],
                            "centroid_patient": [round(float(v), 1) for v in world[:3]],
                            "peak": round(float(peaks[i]), 3)})
    per_slice = flagged.sum(axis=tuple(a for a in range(3) if a != axis))
    order = [int(k) for k in np.argsort(-per_slice, kind="stable")[:worst] if per_slice[k] > 0]
    return {
        "flagged_share": round(float(flagged.sum()) / max(int(head.sum()), 1), 5),
        "flagged_volume_mm3": round(float(flagged.sum()) * voxel_mm3, 1),
        "region_count": int(n),
        "regions": regions,
        "worst_slices": [{"slice": k, "flagged_voxels": int(per_slice[k])} for k in order],
        "threshold": float(threshold),
        "min_voxels": int(min_voxels),
    }


def outline_regions(image: np.ndarray, flagged: np.ndarray, colour: tuple[int, int, int] = (255, 0, 0),
                    zoom: int = 1) -> np.ndarray:
    """An (H * zoom, W * zoom, 3) uint8 picture of a 2D slice (uint8 gray (H, W) or RGB (H, W, 3)) with the
    one-pixel outline of the ``flagged`` (H, W) regions drawn in ``colour``."""
    img = np.asarray(image)
    rgb = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img.copy()
    if rgb.shape[:2] != np.asarray(flagged).shape:
        raise ValueError(f"image {rgb.shape[:2]} and mask {np.asarray(flagged).shape} differ in size")
    block = np.ones((zoom, zoom), bool)
    mask = np.kron(np.asarray(flagged, bool), block).astype(bool)
    rgb = np.kron(rgb, np.ones((zoom, zoom, 1), np.uint8)).astype(np.uint8) if zoom > 1 else rgb.astype(np.uint8)
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    rgb[edge] = colour
    return rgb


def voxel_auroc(score: np.ndarray, truth: np.ndarray, within: np.ndarray | None = None) -> float:
    """Area under the ROC curve of ``score`` separating ``truth`` voxels from the others (inside ``within``):
    the Mann-Whitney probability that a true voxel scores above a false one, ties counting half; NaN when a
    class is empty."""
    within = np.ones(np.shape(score), bool) if within is None else np.asarray(within, bool)
    s, t = np.asarray(score, np.float64)[within], np.asarray(truth, bool)[within]
    n1, n0 = int(t.sum()), int((~t).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[t].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def region_dice(dmap: np.ndarray, truth: np.ndarray, head: np.ndarray | None = None, **flag: Any) -> float:
    """Dice of the map's flagged voxels (`flag_mask`) with the ``truth`` region."""
    return dice(flag_mask(dmap, head, **flag), np.asarray(truth, bool))
