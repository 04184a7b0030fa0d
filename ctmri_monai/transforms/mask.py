"""The one head mask: what counts as the head (not air) in a slice or a stack of axial slices.

In the network's [-1, 1] scale of either domain, air sits at -1; a pixel is head when it is above ``threshold``.
Per axial slice, holes are filled (MONAI ``FillHoles``: the skull's dark fat and CSF layers belong to the head) and
only the largest connected component is kept (scipy ``label``: MONAI's ``KeepLargestConnectedComponent`` needs
scikit-image, which nothing else here uses). A slice whose head is smaller than ``min_area`` pixels is empty.
Used by the conversion's background masking and QA, paired metrics, and the volume datasets' slice selection.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.transforms import FillHoles
from scipy import ndimage

__all__ = ["HEAD_THRESHOLD", "head_mask", "head_mask_slice", "with_min_area"]

#: Head / air threshold in the [-1, 1] network scale of both domains (CT -800 HU in a [-1000, 1000] window,
#: just above the floor of a brain window; MRI 10 % of its normalised range).
HEAD_THRESHOLD = -0.8
_fill_holes = FillHoles()


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def head_mask_slice(slice2d: Any, threshold: float = HEAD_THRESHOLD, min_area: int = 0) -> np.ndarray:
    """Boolean head mask of one (H, W) slice: above ``threshold``, holes filled, largest component."""
    mask = _numpy(slice2d) > threshold
    if not mask.any():
        return mask
    mask = np.asarray(_fill_holes(mask[None].astype(np.uint8))[0], dtype=bool)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(sizes.argmax())
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
    array = _numpy(stack)
    if array.ndim == 2:
        return head_mask_slice(array, threshold, min_area)
    if array.ndim != 3:
        raise ValueError(f"head_mask expects (H, W) or (H, W, D), got shape {array.shape}")
    out = np.zeros(array.shape, dtype=bool)
    for k in range(array.shape[2]):
        out[:, :, k] = head_mask_slice(array[:, :, k], threshold, min_area)
    return out
