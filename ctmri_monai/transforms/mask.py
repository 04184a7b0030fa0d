"""The one head mask: what counts as the head (not air) in a slice or a stack of axial slices.

In the network's [-1, 1] scale of either domain, air sits at -1; a pixel is head when it is above ``threshold``.
Per axial slice, holes are filled (MONAI ``FillHoles``: the skull's dark fat and CSF layers belong to the head) and
only the largest connected component is kept (scipy ``label``: MONAI's ``KeepLargestConnectedComponent`` needs
scikit-image, which nothing else here uses). A slice whose head is smaller than ``min_area`` pixels is empty.
Used by QA of the generator's output, paired metrics, and the volume datasets' slice selection.

The mask of an *input* comes from its own physical units, never from the windowed network input (in a brain
window, fat is as black as air and the skin is a thin ring outside it): `physical_head_mask` thresholds a CT in HU
at ``CT_HEAD_HU`` (fat at about -100 HU is far from air at -1000) and an MRI at ``MRI_HEAD_FRACTION`` of its raw
range, keeps the largest 3D component (a couch or a headrest that does not touch the head goes) and fills each
slice's holes. 2D 8-bit images have no other units than their grey levels: `image_head_mask` thresholds just above
black, keeps the pieces near the largest (a windowed CT's broken skin ring) and fills their convex hull, so the fat
under the skin is head (an axial head section is nearly convex).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import FillHoles, MapTransform
from monai.utils import convert_to_numpy
from scipy import ndimage
from scipy.spatial import ConvexHull, Delaunay, QhullError

from ctmri_monai.io.orientation import axial_axis

__all__ = ["CT_HEAD_HU", "HEAD_SLICE_SHARE", "HEAD_THRESHOLD", "MRI_HEAD_FRACTION", "HeadMaskd", "head_mask",
           "head_mask_slice", "image_head_mask", "image_head_mask_slice", "input_head_mask", "largest_component",
           "mask_extent", "physical_head_mask", "physical_threshold", "reference_head_extent", "slice_extent",
           "slice_extents", "to_numpy", "with_min_area"]

#: Head / air threshold in the [-1, 1] network scale of both domains (CT -800 HU in a [-1000, 1000] window,
#: just above the floor of a brain window; MRI 10 % of its normalised range).
HEAD_THRESHOLD = -0.8
#: Head / air threshold of a CT in Hounsfield units: half way between air (-1000) and fat (about -100).
CT_HEAD_HU = -500.0
#: Head / air threshold of a raw MRI: this fraction of the way from its minimum (air) to its foreground's 99.5th
#: percentile (the phantoms' scalp sits at about half of it, their air noise near 1.5 %).
MRI_HEAD_FRACTION = 0.1
#: 2D 8-bit images: above black by about 13 grey levels; pieces within 4 % of the image size of the head belong to it.
IMAGE_THRESHOLD, IMAGE_REACH = -0.9, 0.04
_fill_holes = FillHoles()


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """A tensor (any device, MetaTensor too) or array-like as a numpy array (MONAI's ``convert_to_numpy``)."""
    return convert_to_numpy(x, dtype=dtype)


def _fill(mask: np.ndarray) -> np.ndarray:
    return np.asarray(_fill_holes(mask[None].astype(np.uint8))[0], dtype=bool)


def largest_component(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    """The largest connected component of a boolean ``mask`` (scipy ``label`` with ``structure``); an empty mask
    stays empty."""
    labels, n = ndimage.label(mask, structure)
    if n <= 1:
        return np.asarray(mask, dtype=bool) if n else np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def head_mask_slice(slice2d: Any, threshold: float = HEAD_THRESHOLD, min_area: int = 0) -> np.ndarray:
    """Boolean head mask of one (H, W) slice: above ``threshold``, holes filled, largest component."""
    mask = to_numpy(slice2d) > threshold
    if not mask.any():
        return mask
    mask = largest_component(_fill(mask))
    if int(mask.sum()) < min_area:
        mask[:] = False
    return mask


def with_min_area(mask: np.ndarray, min_area: int) -> np.ndarray:
    """A (H, W, D) head mask with the slices whose head is smaller than ``min_area`` pixels emptied: what
    `head_mask` with that ``min_area`` gives, from a mask already computed without it."""
    small = mask.sum(axis=(0, 1)) < min_area
    return np.where(small[None, None, :], False, mask)


def head_mask(stack: Any, threshold: float = HEAD_THRESHOLD, min_area: int = 0) -> np.ndarray:
    """Head mask of an (H, W) slice or an (H, W, D) stack of axial slices (each slice on its own)."""
    array = to_numpy(stack)
    if array.ndim == 2:
        return head_mask_slice(array, threshold, min_area)
    if array.ndim != 3:
        raise ValueError(f"head_mask expects (H, W) or (H, W, D), got shape {array.shape}")
    out = np.zeros(array.shape, dtype=bool)
    for k in range(array.shape[2]):
        out[:, :, k] = head_mask_slice(array[:, :, k], threshold, min_area)
    return out


def _hull(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its convex hull filled (scipy ``ConvexHull`` / ``Delaunay``)."""
    points = np.argwhere(mask)
    try:
        hull = Delaunay(points[ConvexHull(points).vertices])
    except (QhullError, ValueError, IndexError):  # fewer than 3 points, or all on a line
        return mask
    grid = np.indices(mask.shape).reshape(2, -1).T
    return (hull.find_simplex(grid) >= 0).reshape(mask.shape) | mask


def image_head_mask_slice(image: Any) -> np.ndarray:
    """Head mask of one 2D 8-bit image in the [-1, 1] scale: above ``IMAGE_THRESHOLD``; the largest component
    and every piece within ``IMAGE_REACH`` of the image size of it (a windowed CT's broken skin ring); their convex
    hull (the fat under the skin, black in a brain window, is head)."""
    mask = to_numpy(image) > IMAGE_THRESHOLD
    eight = np.ones((3, 3), bool)
    labels, n = ndimage.label(mask, eight)
    if n == 0:
        return mask
    reach = max(1, int(round(IMAGE_REACH * max(mask.shape))))
    near = ndimage.binary_dilation(largest_component(mask, eight), iterations=reach)
    keep = np.zeros(n + 1, bool)
    keep[np.unique(labels[near & mask])] = True
    keep[0] = False
    return _hull(keep[labels])


def image_head_mask(image: Any) -> np.ndarray:
    """`image_head_mask_slice` of an (H, W) image or of each slice of an (H, W, D) stack."""
    array = to_numpy(image)
    if array.ndim == 2:
        return image_head_mask_slice(array)
    return np.stack([image_head_mask_slice(array[:, :, k]) for k in range(array.shape[2])], axis=2)


def physical_threshold(values: Any, domain: str) -> float:
    """The head / air threshold of an input in its own units: ``CT_HEAD_HU`` for CT, ``MRI_HEAD_FRACTION`` of the
    raw range for MRI (minimum to the 99.5th percentile of the values above it)."""
    if domain == "ct":
        return CT_HEAD_HU
    if domain != "mri":
        raise ValueError(f"unknown domain {domain!r}; expected 'ct' or 'mri'")
    array = to_numpy(values).astype(np.float32, copy=False)
    lo = float(array.min())
    above = array[array > lo]
    hi = float(np.percentile(above, 99.5)) if above.size else lo
    return lo + MRI_HEAD_FRACTION * (hi - lo)


def physical_head_mask(volume: Any, domain: str) -> np.ndarray:
    """Head mask of an (X, Y, Z) volume (or an (H, W) slice) of ``domain`` in its own units: HU for CT, raw
    intensities for MRI (module docstring). Never pass it a windowed or normalised image."""
    array = to_numpy(volume)
    if array.ndim not in (2, 3):
        raise ValueError(f"physical_head_mask expects (H, W) or (X, Y, Z), got shape {array.shape}")
    mask = largest_component(array > physical_threshold(array, domain))
    if mask.ndim == 2:
        return _fill(mask)
    for k in range(mask.shape[2]):
        if mask[:, :, k].any():
            mask[:, :, k] = _fill(mask[:, :, k])
    return mask


def mask_extent(mask: np.ndarray, spacing: Any = (1.0, 1.0)) -> tuple[float, tuple[float, float]] | None:
    """(longer side, centre) of the in-plane bounding box of a (H, W) or (H, W, D) mask over all its slices:
    the side in the units of ``spacing`` (pixels by default), the centre in pixels; None for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    plane = mask.any(axis=2) if mask.ndim == 3 else mask
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    if rows.size == 0:
        return None
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    side = max(h * float(spacing[0]), w * float(spacing[1]))
    return side, ((rows[0] + rows[-1]) / 2.0, (cols[0] + cols[-1]) / 2.0)


#: The slices of a volume that hold a head, for its per-slice head size: at least this share of the largest axial
#: section's area (drops the vertex caps and stray pieces; the phantoms' training images keep the slices whose head
#: fills 5 % of the frame, about a tenth of the widest section).
HEAD_SLICE_SHARE = 0.1


def slice_extents(mask: np.ndarray) -> np.ndarray:
    """Longer side (px) of the head's bounding box in each axial slice of an (H, W, D) mask (an (H, W) mask: one
    slice), over the slices that hold a head (``HEAD_SLICE_SHARE``); empty when no slice does."""
    mask = np.asarray(mask, dtype=bool)
    mask = mask[:, :, None] if mask.ndim == 2 else mask
    area = mask.sum(axis=(0, 1))
    if not area.any():
        return np.zeros(0)
    rows, cols = mask.any(axis=1), mask.any(axis=0)  # (H, D), (W, D)

    def span(hit: np.ndarray) -> np.ndarray:
        n = hit.shape[0]
        first, last = hit.argmax(axis=0), n - 1 - hit[::-1].argmax(axis=0)
        return np.where(hit.any(axis=0), last - first + 1, 0)

    sides = np.maximum(span(rows), span(cols)).astype(np.float64)
    return sides[area >= HEAD_SLICE_SHARE * area.max()]


def slice_extent(mask: np.ndarray) -> float | None:
    """The median per-slice head extent (px) of a mask (`slice_extents`): the head size a slice of it shows, to
    compare with the training images' median; None without a head."""
    sides = slice_extents(mask)
    return float(np.median(sides)) if sides.size else None


def reference_head_extent(mask: np.ndarray, layout: str) -> float | None:
    """The head size (frame px) that a training reference of ``layout`` records, and that a conversion is
    compared with: for "volumes" (a whole volume is the unit) the head's bounding box over the whole volume
    (`mask_extent`); for images the head size a slice shows (`slice_extent`). None without a head."""
    if layout == "volumes":
        whole = mask_extent(mask)
        return None if whole is None else whole[0]
    return slice_extent(mask)


def input_head_mask(image: Any, domain: str) -> np.ndarray:
    """`physical_head_mask` of a loaded (1, X, Y, Z) volume of ``domain`` on its own grid, holes filled in its axial
    slices (found from its affine)."""
    array = to_numpy(image)[0]
    axis = axial_axis(image.affine) if isinstance(image, MetaTensor) else 2
    return np.moveaxis(physical_head_mask(np.moveaxis(array, axis, 2), domain), 2, axis)


class HeadMaskd(MapTransform):
    """Put the head mask of ``data[key]`` (a (1, X, Y, Z) volume of ``domain`` in its own units, before any
    intensity mapping) under ``mask_key`` as a (1, X, Y, Z) MetaTensor with the image's affine: +1 head, -1 air,
    so that it is oriented and framed like the image (air is the frame's background). A bool array already under
    ``mask_key`` (the caller computed `input_head_mask` for its own use) is taken instead of computing it again."""

    def __init__(self, key: str, domain: str, mask_key: str = "head") -> None:
        super().__init__([key])
        self.domain, self.mask_key = domain, mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        img = d[self.keys[0]]
        given = d.get(self.mask_key)
        mask = np.asarray(given, bool) if given is not None else input_head_mask(img, self.domain)
        out = torch.from_numpy(mask[None].astype(np.float32) * 2.0 - 1.0)
        d[self.mask_key] = MetaTensor(out, affine=img.affine) if isinstance(img, MetaTensor) else out
        return d
