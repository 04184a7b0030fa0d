"""Planted errors in converted phantom frames, to prove a disagreement map on mistakes whose place is known.

Frames are (S, S, D) arrays in [-1, 1] with axial slices along the last axis. Each planting returns the planted
copy and the boolean region it changed (voxels that moved by more than ``tol``):

* `plant_blob`: a hallucination, a blob of tissue the input does not have;
* `plant_deletion`: a deletion, a structure of the input filled with the surrounding tissue;
* `plant_shift`: a misplacement, a patch moved by a few pixels.

`ConsistentMistake` makes a generator repeat a planted mistake the way a trained network repeats its own: the
same input gives the same mistake, a flipped or shifted input the flipped or shifted mistake. A test that compares
the output with a re-run of the clean generator would find the plant trivially; with this wrapper the stability
signal sees nothing, and the map must find the mistake from what the input supports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ctmri_monai.phantoms.anatomy import LABELS
from ctmri_monai.transforms.context import centre_slice

__all__ = ["KINDS", "ConsistentMistake", "plant_blob", "plant_cases", "plant_deletion", "plant_shift"]

KINDS = ("hallucination", "deletion", "misplacement")

PLANT_TOL = 0.05  # smallest change (in [-1, 1]) that counts as planted


def _changed(planted: np.ndarray, frames: np.ndarray, tol: float) -> np.ndarray:
    return np.abs(planted - frames) > tol


def plant_blob(frames: np.ndarray, centre: Sequence[int], radius_px: float, value: float, half_depth: int = 1,
               tol: float = PLANT_TOL) -> tuple[np.ndarray, np.ndarray]:
    """A hallucination: an ellipsoid of ``value`` at voxel ``centre`` (i, j, k), ``radius_px`` in-plane and
    ``half_depth`` slices either side, with a one-pixel soft edge."""
    i, j, k = (np.arange(n, dtype=np.float32) for n in frames.shape)
    r = np.sqrt((i[:, None, None] - centre[0]) ** 2 + (j[None, :, None] - centre[1]) ** 2
                + ((k[None, None, :] - centre[2]) * radius_px / (half_depth + 0.5)) ** 2)
    weight = np.clip(radius_px + 0.5 - r, 0.0, 1.0).astype(np.float32)
    planted = (frames * (1.0 - weight) + np.float32(value) * weight).astype(np.float32)
    return planted, _changed(planted, frames, tol)


def plant_deletion(frames: np.ndarray, structure: np.ndarray, ring_px: int = 2,
                   tol: float = PLANT_TOL) -> tuple[np.ndarray, np.ndarray]:
    """A deletion: every voxel of ``structure`` (boolean, same shape) set to the median of the tissue in a ring
    ``ring_px`` wide around it in its slice."""
    structure = np.asarray(structure, bool)
    grown = ndimage.binary_dilation(structure, np.ones((2 * ring_px + 1, 2 * ring_px + 1, 1), bool))
    ring = grown & ~structure
    if not ring.any():
        raise ValueError("the structure has no surrounding tissue to fill it with")
    planted = frames.copy()
    planted[structure] = np.float32(np.median(frames[ring]))
    return planted, _changed(planted, frames, tol)


def plant_shift(frames: np.ndarray, box: tuple[slice, slice, slice], shift_px: Sequence[int],
                tol: float = PLANT_TOL) -> tuple[np.ndarray, np.ndarray]:
    """A misplacement: the patch ``frames[box]`` moved in-plane by ``shift_px`` (di, dj) pixels (it must stay in
    the frames)."""
    di, dj = (int(s) for s in shift_px)
    target = (slice(box[0].start + di, box[0].stop + di), slice(box[1].start + dj, box[1].stop + dj), box[2])
    planted = frames.copy()
    planted[target] = frames[box]
    return planted, _changed(planted, frames, tol)


def plant_cases(frames: np.ndarray, labels: np.ndarray, radius_px: float = 3.5,
                shift_px: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The three `KINDS` planted into converted ``frames`` of a phantom with its ``labels`` (`LABELS`, same
    grid): a hallucination, a disc of ``radius_px`` (three slices) of the output's CSF value in the deepest white
    matter of a slice without a lesion; a deletion of the lesion (bleed, or mass with its oedema); a misplacement
    of the lesion's box (2 px margin) moved ``shift_px`` pixels along both in-plane axes. The phantom must hold a
    lesion. Returns kind -> (planted frames, planted region)."""
    lesion = np.isin(labels, (LABELS["bleed"], LABELS["mass"], LABELS["edema"]))
    if not lesion.any():
        raise ValueError("the phantom holds no lesion to delete or move")
    depth = ndimage.distance_transform_edt(labels == LABELS["white_matter"], sampling=(1.0, 1.0, 3.0))
    depth[:, :, lesion.any(axis=(0, 1))] = 0.0
    depth[:, :, :3] = depth[:, :, -3:] = 0.0
    centre = np.unravel_index(int(np.argmax(depth)), depth.shape)
    csf = float(np.median(frames[labels == LABELS["csf"]]))
    where = np.argwhere(lesion)
    lo, hi = np.maximum(where.min(axis=0) - 2, 0), where.max(axis=0) + 3
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(where[:, 2].min(), where[:, 2].max() + 1))
    return {"hallucination": plant_blob(frames, centre, radius_px, csf, 1),
            "deletion": plant_deletion(frames, lesion),
            "misplacement": plant_shift(frames, box, (shift_px, shift_px))}


class ConsistentMistake(nn.Module):
    """``base`` plus a planted difference ``delta`` (S, S, D) that follows its input ``source`` (S, S, D): on the
    slices of ``source``, of ``source`` flipped along ``flip_axis`` and of ``source`` rolled by ``shift`` pixels
    on both in-plane axes, the matching slice of ``delta`` (flipped or rolled alike) is added; other inputs pass
    through ``base`` unchanged. (N, C, H, W) in, (N, 1, H, W) out."""

    def __init__(self, base: Callable[[torch.Tensor], torch.Tensor], source: np.ndarray, delta: np.ndarray,
                 flip_axis: int = 1, shift: int = 1) -> None:
        super().__init__()
        self.base = base
        self.table: dict[bytes, np.ndarray] = {}
        for k in range(source.shape[2]):
            xs, ds = source[:, :, k], delta[:, :, k]
            for fx, fd in ((xs, ds), (np.flip(xs, flip_axis), np.flip(ds, flip_axis)),
                           (np.roll(xs, (shift, shift), (0, 1)), np.roll(ds, (shift, shift), (0, 1)))):
                self.table.setdefault(np.ascontiguousarray(fx, np.float32).tobytes(),
                                      np.ascontiguousarray(fd, np.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x).float()
        centre = centre_slice(x).float().cpu().numpy()
        for n in range(centre.shape[0]):
            add = self.table.get(np.ascontiguousarray(centre[n, 0]).tobytes())
            if add is not None:
                out[n, 0] += torch.from_numpy(add).to(out.device)
        return out
