"""Where not to trust a synthetic volume: a voxel-wise disagreement map of a conversion, on the network's (S, S, D)
frames, from the forward generator alone (any exported model, one direction, can give one).

Two signals that need no paired ground truth, each a per-voxel map smoothed in-plane (Gaussian, ``SMOOTH_PX``):

* ``structure``: ``max_r |MIND_r(output) - MIND_r(input)|`` (`ctmri_monai.losses.mind_descriptor`, 8-neighbourhood)
  of the two images denoised by ``DENOISE_PX``, with the flatness contrast ``MIND_EPS``; in [0, 1]: edges the output
  invented, lost or moved. MIND describes where the edges are, not which side is brighter, so it compares CT with
  MRI. No extra forward pass.
* ``stability``: ``max(|flip G(flip input) - output|, |roll^-1 G(roll input) - output|) / 2`` in [0, 1]: how much
  the output moves under a left-right flip and a one-pixel shift of the input (G: the forward generator; one
  extra forward pass per move in ``MOVES``).

Normalisation: each signal ``s`` is divided by its scale ``t = max(FLOOR[direction][s], quantile_QUANTILE(s | head))``
and mapped to ``min(s / (2 t), 1)``, so 0.5 is the flagging threshold (`ctmri_monai.metrics.flagged`). The floor is
the signal's 99.9th percentile on clean conversions by a model that converts well (the phantom tissue oracle); the
per-volume 99th percentile takes over for a weaker model, whose clean output would otherwise be flagged everywhere.
The map is the voxel-wise maximum of the normalised signals, zero outside the head.

Why these two, decided on scripts/bench_trust.py (bundle/docs/benchmarks.md "Disagreement map"): the structure
signal carries the planted errors, which a network repeats under flips and shifts; the stability signal ranks the
real mistakes of trained models best. The cycle through the backward generator did neither better and can be
fooled by a CycleGAN that hides its input in its output (Chu et al. 2017), so it is not computed. A warning, never
a guarantee.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_numpy
from scipy.ndimage import gaussian_filter

from ctmri_monai.engines.slices import infer_slices
from ctmri_monai.losses import mind_descriptor

__all__ = ["FLOOR", "MOVES", "QUANTILE", "SIGNALS", "SMOOTH_PX", "Disagreement", "combine_signals",
           "disagreement_map", "disagreement_signals", "stability_disagreement", "structure_disagreement"]

Generator = Callable[[torch.Tensor], torch.Tensor]

#: In-plane Gaussian smoothing (px) of every signal: edge responses become regions, voxel noise averages out.
SMOOTH_PX = 1.0
#: In-plane Gaussian denoising (px) of both images before their MIND descriptors: acquisition noise is not structure.
DENOISE_PX = 1.0

#: MIND's flatness contrast for the map: half the structure loss's 0.2, so that the weak grey / white matter edges
#: of CT in a brain window (about 0.25 in [-1, 1]) count as structure once the noise is smoothed away.
MIND_EPS = 0.1
#: The map's signals (module docstring), in the order they are combined.
SIGNALS = ("structure", "stability")
#: The stability signal's moves of the input, one extra forward pass each: a left-right flip, a one-pixel shift.
MOVES = ("flip", "shift")
#: Per direction and signal, the level below which it is noise for a model that converts well: the 99.9th
#: percentile inside the head of clean conversions of six phantoms by the tissue oracle (benchmarks.md), rounded.
#: The oracle is exactly flip- and shift-equivariant, so the stability floor is set, not measured: 0.05, a tenth
#: of a grey-matter / white-matter step in [-1, 1].
FLOOR: dict[str, dict[str, float]] = {
    "ct2mri": {"structure": 0.73, "stability": 0.05},
    "mri2ct": {"structure": 0.89, "stability": 0.05},
}
#: Per-volume scale: the signal's QUANTILE inside the head, where it is above the floor (a weaker model).
QUANTILE = 0.99


@dataclass
class Disagreement:
    """A disagreement map on the frames: ``map`` float32 (S, S, D) in [0, 1] (1 most suspect, 0.5 the flagging
    threshold); ``signals`` the raw smoothed signals (float32, same shape); ``scales`` each signal's scale
    (its value that maps to 0.5); ``passes`` extra forward passes per slice; ``seconds`` wall time."""

    map: np.ndarray
    signals: dict[str, np.ndarray]
    scales: dict[str, float] = field(default_factory=dict)
    passes: int = 0
    seconds: float = 0.0


def _frames(x: Any) -> np.ndarray:
    return np.ascontiguousarray(convert_to_numpy(x), dtype=np.float32)


def _smooth(x: np.ndarray, sigma: float = SMOOTH_PX) -> np.ndarray:
    if sigma <= 0:
        return x
    return gaussian_filter(x, sigma=(sigma, sigma, 0.0), mode="nearest").astype(np.float32)


def structure_disagreement(a: np.ndarray, b: np.ndarray, chunk: int = 64,
                           device: str | torch.device = "cpu") -> np.ndarray:
    """``max_r |MIND_r(a) - MIND_r(b)|`` per voxel of two (S, S, D) frame stacks (axial slices along the last
    axis), float32 in [0, 1], unsmoothed; the descriptors of ``chunk`` slices at a time on ``device``."""
    ta = torch.from_numpy(_smooth(_frames(a), DENOISE_PX)).permute(2, 0, 1).unsqueeze(1)
    tb = torch.from_numpy(_smooth(_frames(b), DENOISE_PX)).permute(2, 0, 1).unsqueeze(1)
    out = torch.empty(ta.shape[0], ta.shape[2], ta.shape[3])
    for i in range(0, ta.shape[0], chunk):
        ma = mind_descriptor(ta[i:i + chunk].to(device), eps=MIND_EPS)
        mb = mind_descriptor(tb[i:i + chunk].to(device), eps=MIND_EPS)
        out[i:i + chunk] = (ma - mb).abs().amax(dim=1).cpu()
    return out.permute(1, 2, 0).contiguous().numpy()


def stability_disagreement(source: np.ndarray, output: np.ndarray, forward: Generator,
                           moves: Sequence[str] = MOVES, flip_axis: int = 1, shift: int = 1,
                           **run: Any) -> np.ndarray:
    """``max over moves |move^-1 G(move source) - output| / 2`` per voxel (module docstring), float32 in [0, 1],
    unsmoothed; one `infer_slices` pass of ``forward`` per move (``run``: its batch_size, device, amp, context)."""
    def flip(a: np.ndarray) -> np.ndarray:
        return np.flip(a, flip_axis)

    def roll(a: np.ndarray, k: int) -> np.ndarray:
        return np.roll(a, (k, k), (0, 1))

    undo = {"flip": (flip, flip), "shift": (lambda a: roll(a, shift), lambda a: roll(a, -shift))}
    unknown = sorted(set(moves) - set(undo))
    if unknown or not moves:
        raise ValueError(f"unknown stability moves {unknown or list(moves)}; expected some of {MOVES}")
    moved = np.zeros_like(output)
    for name in moves:
        there, back = undo[name]
        again = infer_slices(forward, torch.from_numpy(np.ascontiguousarray(there(source)))[None], **run)[0]
        moved = np.maximum(moved, np.abs(back(again.numpy()) - output))
    return moved / 2.0


def disagreement_signals(source: Any, output: Any, forward: Generator | None, *, moves: Sequence[str] = MOVES,
                         flip_axis: int = 1, shift: int = 1, **run: Any) -> tuple[dict[str, np.ndarray], int]:
    """The smoothed raw signals (module docstring) of ``output`` = forward(``source``), both (S, S, D) frames in
    [-1, 1]; without ``forward`` the structure signal alone. ``run``: `infer_slices`' batch_size, device, amp and
    context. Returns (signals, extra forward passes per slice)."""
    x, y = _frames(source), _frames(output)
    if x.shape != y.shape or x.ndim != 3:
        raise ValueError(f"need two (S, S, D) frame stacks of one shape, got {x.shape} and {y.shape}")
    device = run.get("device", "cpu")
    signals = {"structure": _smooth(structure_disagreement(y, x, device=device))}
    if forward is None:
        return signals, 0
    moved = stability_disagreement(x, y, forward, moves, flip_axis, shift, **run)
    # Rounded to 1e-4 of the scale: re-runs of one network differ by float rounding alone (far more under AMP).
    signals["stability"] = np.round(_smooth(moved), 4)
    return signals, len(moves)


def _scale(signal: np.ndarray, head: np.ndarray, name: str, direction: str) -> float:
    if direction not in FLOOR:
        raise ValueError(f"unknown direction {direction!r}; expected one of {tuple(FLOOR)}")
    inside = signal[head] if head.any() else signal.ravel()
    return float(max(FLOOR[direction][name], float(np.quantile(inside, QUANTILE))))


def combine_signals(signals: Mapping[str, np.ndarray], direction: str, head: np.ndarray | None = None,
                    how: str = "max") -> tuple[np.ndarray, dict[str, float]]:
    """Normalise each signal by its scale (module docstring) and combine them voxel-wise ("max", the map's;
    "mean" and "sum" (clipped to 1) for the benchmark that compares them). Returns (map, scales)."""
    first = next(iter(signals.values()))
    head = np.ones(first.shape, bool) if head is None else np.asarray(head, bool)
    scales = {name: _scale(s, head, name, direction) for name, s in signals.items()}
    parts = np.stack([np.clip(s / (2.0 * scales[name]), 0.0, 1.0) for name, s in signals.items()])
    combine = {"max": lambda p: p.max(axis=0), "mean": lambda p: p.mean(axis=0),
               "sum": lambda p: np.minimum(p.sum(axis=0), 1.0)}
    if how not in combine:
        raise ValueError(f"unknown combination {how!r}; expected one of {tuple(combine)}")
    return combine[how](parts).astype(np.float32), scales


def disagreement_map(source: Any, output: Any, forward: Generator | None, direction: str, *,
                     head: np.ndarray | None = None, flip_axis: int = 1, **run: Any) -> Disagreement:
    """The disagreement map of a conversion on its frames (module docstring).

    ``source``: the generator's input frames (S, S, D) in [-1, 1]; ``output``: the forward generator's raw
    output frames; ``forward``: the generator that made it (None: the structure signal alone); ``direction``:
    "ct2mri" or "mri2ct" (which floors apply); ``head``: the input's head mask on the frames (outside it the map
    is 0); ``flip_axis``: the frames' left-right axis (1 for the contract's "PLS" frames); ``run``:
    `infer_slices`' batch_size, device, amp and context (the checkpoint's 2k + 1 slice context).
    """
    start = time.perf_counter()
    signals, passes = disagreement_signals(source, output, forward, flip_axis=flip_axis, **run)
    head_mask = np.ones(signals["structure"].shape, bool) if head is None else np.asarray(head, bool)
    combined, scales = combine_signals(signals, direction, head_mask)
    combined[~head_mask] = 0.0
    return Disagreement(combined, signals, scales, passes, round(time.perf_counter() - start, 4))
