"""Where not to trust a synthetic volume: a voxel-wise disagreement map, computed after the fact from the two
generators of a CycleGAN checkpoint, on the network's (S, S, D) frames.

Three signals that need no paired ground truth, each a per-voxel map smoothed in-plane (Gaussian, ``SMOOTH_PX``):

* ``structure``: ``max_r |MIND_r(output) - MIND_r(input)|`` (`ctmri_monai.losses.mind_descriptor`, 8-neighbourhood)
  of the two images denoised by ``DENOISE_PX``, with the flatness contrast ``MIND_EPS``; in [0, 1]: edges the output
  invented, lost or moved. MIND describes where the edges are, not which side is brighter, so it compares CT with
  MRI; the largest channel change counts (one lost edge direction is enough).
* ``cycle``: ``|backward(output) - input| / 2`` in [0, 1]: what the other generator cannot bring back.
* ``stability``: ``max(|flip G(flip input) - output|, |roll^-1 G(roll input) - output|) / 2`` in [0, 1]: how much
  the output moves under a left-right flip and a one-pixel shift of the input (G: the forward generator).

Normalisation: each signal ``s`` is divided by its scale ``t = max(FLOOR[direction][s], quantile_QUANTILE(s | head))``
and mapped to ``min(s / (2 t), 1)``, so 0.5 is the flagging threshold (`ctmri_monai.metrics.flagged`). The floor is
the signal's 99.9th percentile on clean conversions by a model that converts well (the phantom tissue oracle), so
a good model's clean volume flags about 0.1 % of its head; the per-volume 99th percentile takes over for a weaker
model, whose clean output would otherwise be flagged everywhere (the map then ranks the volume's own most suspect
voxels, and the raw signals stay in ``Disagreement.signals``).

Combination, decided on two benchmarks (scripts/bench_trust.py, bundle/docs/benchmarks.md "Disagreement map"):
the map is the maximum of the normalised structure and stability signals (``COMBINED``). On planted errors (ten
phantom heads, three kinds, two directions) the structure signal ranks and outlines best; a maximum with the
cycle lowered the Dice and, CT -> MRI, the AUROC (a per-pixel model cannot bring bone back from MRI, so honest
cycle errors line the skull); a mean raised some AUROCs but flagged nothing. The planted mistakes are repeated by
the generator under flips and shifts, so stability is zero there and the maximum with it changes nothing. On the
real mistakes of briefly trained models the stability signal predicted the large errors best (AUROC 0.69-0.75,
structure alone 0.46-0.56), and adding it to the map raised its AUROC by 0.05-0.07. The cycle stays a diagnostic:
it is the signal Chu et al. 2017 ("CycleGAN, a master of steganography") warn about. With the input hidden in
faint patterns of the output, the backward generator reads it back whatever the output shows: the cycle-only
AUROC of a planted deletion fell from 0.84 to 0.12 on a bleed while the map's stayed at 0.80
(tests/test_disagreement.py). A low cycle error never clears a voxel. A warning, never a guarantee.

Cost: three extra forward passes per slice (backward on the output, forward on the flipped and on the shifted
input), batched by `infer_slices` like conversion, plus two MIND descriptors per slice; on the CPU the MIND part
is a few milliseconds per 64 x 64 slice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from scipy.ndimage import gaussian_filter

from ctmri_monai.engines.slices import infer_slices
from ctmri_monai.losses import mind_descriptor
from ctmri_monai.spec import ModelSpec
from ctmri_monai.transforms.mask import input_head_mask
from ctmri_monai.transforms.pipelines import volume_pipeline

__all__ = ["COMBINED", "FLOOR", "QUANTILE", "SMOOTH_PX", "Disagreement", "combine_signals",
           "disagreement_map", "disagreement_signals", "on_input_grid", "structure_disagreement"]

Generator = Callable[[torch.Tensor], torch.Tensor]

#: In-plane Gaussian smoothing (px) of every signal: edge responses become regions, voxel noise averages out.
SMOOTH_PX = 1.0
#: In-plane Gaussian denoising (px) of both images before their MIND descriptors: acquisition noise is not structure.
DENOISE_PX = 1.0

#: MIND's flatness contrast for the map: half the structure loss's 0.2, so that the weak grey / white matter edges
#: of CT in a brain window (about 0.25 in [-1, 1]) count as structure once the noise is smoothed away.
MIND_EPS = 0.1
#: Per direction and signal, the level below which it is noise for a model that converts well: the 99.9th
#: percentile inside the head of clean conversions of six phantoms by the tissue oracle (benchmarks.md), rounded.
#: The oracle is exactly flip- and shift-equivariant, so the stability floor is set, not measured: 0.05, a tenth
#: of a grey-matter / white-matter step in [-1, 1].
FLOOR: dict[str, dict[str, float]] = {
    "ct2mri": {"structure": 0.73, "cycle": 0.50, "stability": 0.05},
    "mri2ct": {"structure": 0.89, "cycle": 0.59, "stability": 0.05},
}
#: Per-volume scale: the signal's QUANTILE inside the head, where it is above the floor (a weaker model).
QUANTILE = 0.99
#: The signals the map combines (the others are diagnostics); decided by the benchmark (module docstring).
COMBINED = ("structure", "stability")


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
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.ascontiguousarray(array, dtype=np.float32)


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


def disagreement_signals(source: Any, output: Any, forward: Generator | None, backward: Generator | None, *,
                         context: int = 0, batch_size: int = 16, device: str | torch.device = "cpu",
                         amp: bool = True, flip_axis: int = 1, shift: int = 1) -> tuple[dict[str, np.ndarray], int]:
    """The smoothed raw signals (module docstring) of ``output`` = forward(``source``), both (S, S, D) frames in
    [-1, 1]; a missing generator drops the signals that need it. Returns (signals, extra passes per slice)."""
    x, y = _frames(source), _frames(output)
    if x.shape != y.shape or x.ndim != 3:
        raise ValueError(f"need two (S, S, D) frame stacks of one shape, got {x.shape} and {y.shape}")
    run = {"batch_size": batch_size, "device": device, "amp": amp, "context": context}
    signals = {"structure": _smooth(structure_disagreement(y, x, device=device))}
    passes = 0
    if backward is not None:
        back = infer_slices(backward, torch.from_numpy(y)[None], **run)[0].numpy()
        signals["cycle"] = _smooth(np.abs(back - x) / 2.0)
        passes += 1
    if forward is not None:
        flipped = infer_slices(forward, torch.from_numpy(np.flip(x, flip_axis).copy())[None], **run)[0].numpy()
        rolled = infer_slices(forward, torch.from_numpy(np.roll(x, (shift, shift), (0, 1)))[None], **run)[0].numpy()
        unrolled = np.roll(rolled, (-shift, -shift), (0, 1))
        moved = np.maximum(np.abs(np.flip(flipped, flip_axis) - y), np.abs(unrolled - y))
        # Rounded to 1e-4 of the scale: re-runs of one network differ by float rounding alone (far more under AMP).
        signals["stability"] = np.round(_smooth(moved / 2.0), 4)
        passes += 2
    return signals, passes


def _scale(signal: np.ndarray, head: np.ndarray, name: str, direction: str) -> float:
    if direction not in FLOOR:
        raise ValueError(f"unknown direction {direction!r}; expected one of {tuple(FLOOR)}")
    inside = signal[head] if head.any() else signal.ravel()
    return float(max(FLOOR[direction][name], float(np.quantile(inside, QUANTILE))))


def combine_signals(signals: dict[str, np.ndarray], direction: str, head: np.ndarray | None = None,
                    how: str = "max") -> tuple[np.ndarray, dict[str, float]]:
    """Normalise each signal by its scale (module docstring) and combine them voxel-wise ("max", the default;
    "mean" for the benchmark that chose it). Returns (map, scales)."""
    first = next(iter(signals.values()))
    head = np.ones(first.shape, bool) if head is None else np.asarray(head, bool)
    scales = {name: _scale(s, head, name, direction) for name, s in signals.items()}
    parts = np.stack([np.clip(s / (2.0 * scales[name]), 0.0, 1.0) for name, s in signals.items()])
    if how == "max":
        combined = parts.max(axis=0)
    elif how == "mean":
        combined = parts.mean(axis=0)
    else:
        raise ValueError(f"unknown combination {how!r}; expected 'max' or 'mean'")
    return combined.astype(np.float32), scales


def disagreement_map(source: Any, output: Any, forward: Generator | None, backward: Generator | None,
                     direction: str, *, head: np.ndarray | None = None, context: int = 0, batch_size: int = 16,
                     device: str | torch.device = "cpu", amp: bool = True, flip_axis: int = 1, shift: int = 1,
                     how: str = "max") -> Disagreement:
    """The disagreement map of a conversion on its frames (module docstring).

    ``source``: the generator's input frames (S, S, D) in [-1, 1] (`Translation.source_unit`); ``output``: the
    forward generator's raw output frames (`Translation.fake_unit`); ``forward`` / ``backward``: the generator
    that made it and the other one of the checkpoint (None drops their signals); ``direction``: "ct2mri" or
    "mri2ct" (which floors apply); ``head``: the input's head mask
    (`Translation.source_mask`; outside it the map is 0); ``context``: the checkpoint's 2k + 1 slice context;
    ``flip_axis``: the frames' left-right axis (1 for the contract's "PLS" frames); ``shift``: pixels of the
    shift. Batching, device and mixed precision as `infer_slices`.
    """
    start = time.perf_counter()
    signals, passes = disagreement_signals(source, output, forward, backward, context=context,
                                           batch_size=batch_size, device=device, amp=amp, flip_axis=flip_axis,
                                           shift=shift)
    head_mask = np.ones(signals["structure"].shape, bool) if head is None else np.asarray(head, bool)
    combined, scales = combine_signals({k: signals[k] for k in COMBINED if k in signals}, direction, head_mask, how)
    scales.update({k: _scale(s, head_mask, k, direction) for k, s in signals.items() if k not in scales})
    combined[~head_mask] = 0.0
    return Disagreement(combined, signals, scales, passes, round(time.perf_counter() - start, 4))


def on_input_grid(frames: np.ndarray, image: MetaTensor, spec: ModelSpec, source: str) -> np.ndarray:
    """A (S, S, D) map on the frames of ``image`` (the loaded (1, X, Y, Z) input of ``source``) brought back to the
    input's exact grid by MONAI's inverse of the contract's framing and orientation (`volume_pipeline`), as
    `translate_volume` brings back its output: float32 (X, Y, Z) (resampling interpolates, never overshoots). The
    frames are rebuilt as `translate_volume` built them, with the input's head mask, which "fit" models frame by."""
    pipeline = volume_pipeline(spec, source, head_key="head")
    x = pipeline({"image": image, "head": input_head_mask(image, source)})["image"]
    if tuple(x.shape[1:]) != tuple(frames.shape):
        raise ValueError(f"frames {tuple(frames.shape)} are not this input's frames {tuple(x.shape[1:])}")
    pred = MetaTensor(torch.from_numpy(np.ascontiguousarray(frames, np.float32))[None], meta=dict(x.meta),
                      applied_operations=list(x.applied_operations))
    restored = pipeline.inverse({"image": pred})["image"]
    return restored.as_tensor()[0].numpy().astype(np.float32)
