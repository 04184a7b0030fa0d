"""2.5D context: the 2k + 1 neighbouring axial slices of a slice, as channels (edge slices repeat).

A generator with context k reads 2k + 1 slices and writes the middle one. Training needs the translations of the
2k + 1 middle slices of a stack (the other generator reconstructs from them), so its stacks hold 4k + 1 slices.
"""

from __future__ import annotations

import torch

__all__ = ["centre_slice", "centre_window", "context_indices", "context_windows", "slice_stack", "slice_stacks"]


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


def centre_slice(stack: torch.Tensor) -> torch.Tensor:
    """(N, 1, S, S): the middle channel of (N, 2c + 1, S, S) stacks (the slice itself)."""
    mid = (int(stack.shape[1]) - 1) // 2
    return stack[:, mid:mid + 1]


def centre_window(stack: torch.Tensor, context: int) -> torch.Tensor:
    """(N, 2k + 1, S, S): a generator's input for the middle slice of (N, 2m + 1, S, S) stacks, m >= k."""
    mid = (int(stack.shape[1]) - 1) // 2
    return stack[:, mid - context:mid + context + 1]


def context_windows(stack: torch.Tensor, context: int) -> torch.Tensor:
    """(N * (2k + 1), 2k + 1, S, S): the generator inputs of the 2k + 1 middle slices of (N, 4k + 1, S, S) stacks,
    sample by sample (the windows of sample n are rows n * (2k + 1) ... (n + 1) * (2k + 1) - 1)."""
    n, channels = int(stack.shape[0]), int(stack.shape[1])
    if channels != 4 * context + 1:
        raise ValueError(f"need stacks of 4k + 1 = {4 * context + 1} slices for context {context}, got {channels}")
    if context == 0:
        return stack
    windows = stack.unfold(1, 2 * context + 1, 1)  # (N, 2k + 1, S, S, 2k + 1)
    return windows.permute(0, 1, 4, 2, 3).reshape(n * (2 * context + 1), 2 * context + 1, *stack.shape[2:])
