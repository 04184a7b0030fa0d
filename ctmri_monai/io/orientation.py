"""The one orientation helper: which input axis became the frames' axial axis, which input slice each oriented
slice came from, and which frame axis runs left-right. Map figures, QA and writers all read these."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np

__all__ = ["axial_axis", "axial_slice_numbers", "left_right_axis"]


def axial_axis(affine: Any) -> int:
    """The array axis of a volume with ``affine`` that runs inferior-superior (nibabel's orientation); 2 when no
    axis does (an oblique grid nibabel cannot assign)."""
    ornt = nib.orientations.io_orientation(np.asarray(affine, np.float64))
    hits = np.flatnonzero(ornt[:, 0] == 2)
    return int(hits[0]) if hits.size else 2


def axial_slice_numbers(affine: Any, shape: Sequence[int], axcodes: str, depth: int) -> tuple[int | None, list[int]]:
    """(axis of the input array of ``shape`` / ``affine`` that became the axial axis of frames oriented to
    ``axcodes``, input index of each of the ``depth`` oriented slices); (None, 0..depth-1) when the input has no
    single inferior-superior axis of that depth."""
    ornt = nib.orientations.io_orientation(np.asarray(affine, np.float64))
    axial = [j for j in range(3) if int(ornt[j, 0]) == 2]
    if len(axial) != 1 or int(shape[axial[0]]) != depth:
        return None, list(range(depth))
    j = axial[0]
    flip = (ornt[j, 1] < 0) != (axcodes[2].upper() == "I")
    return j, [depth - 1 - k if flip else k for k in range(depth)]


def left_right_axis(axcodes: str) -> int:
    """The frames' axis (0 or 1) that runs left-right under the contract's ``axcodes`` (1 for "PLS")."""
    codes = axcodes.upper()
    for axis in (0, 1):
        if codes[axis] in "LR":
            return axis
    raise ValueError(f"axcodes {axcodes!r}: neither in-plane axis runs left-right")
