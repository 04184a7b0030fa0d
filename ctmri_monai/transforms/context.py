"""2.5D context: the 2k + 1 neighbouring axial slices of a slice, as channels (edge slices repeat)."""

from __future__ import annotations

import torch

__all__ = ["context_indices", "slice_stack", "slice_stacks"]


def context_indices(index: int, depth: int, context: int) -> list[int]:
    """Slice numbers ``index - k .. index + k`` clamped to ``[0, depth - 1]`` (the ends repeat)."""
    return [min(max(index + offset, 0), depth - 1) for offset in range(-context, context + 1)]


def slice_stack(volume: torch.Tensor, index: int, context: int) -> torch.Tensor:
    """(2k + 1, S, S): slice ``index`` of a (1, S, S, D) volume with its ``context`` neighbours each side."""
    picks = context_indices(index, int(volume.shape[-1]), context)
    return volume[0][..., picks].permute(2, 0, 1).contiguous()


def slice_stacks(slices_first: torch.Tensor, context: int) -> torch.Tensor:
    """(D, 2k + 1, S, S) context stacks of a (D, S, S) slice-first volume (the conversion's layout)."""
    if context == 0:
        return slices_first[:, None]
    depth = int(slices_first.shape[0])
    offsets = torch.arange(-context, context + 1)
    picks = (torch.arange(depth)[:, None] + offsets[None, :]).clamp_(0, depth - 1)
    return slices_first[picks]
