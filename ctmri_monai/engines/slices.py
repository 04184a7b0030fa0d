"""Translating a volume in memory, slice by slice, on a model's data contract: what conversion and paired
evaluation share.

`translate_volume`: a loaded (1, X, Y, Z) volume -> its frames, once (`frame_volume`: orientation, intensity,
framing, the input's head mask from its own units carried onto the frames) -> generator over axial slices (or
2k + 1 slice stacks) in batches (MONAI ``SliceInferer``) -> back onto the input's exact grid by the frames' inverse
-> background outside the input's head mask -> the target domain's values (synthetic CT in HU through the model's
window, synthetic MRI in [-1, 1]); with the domain gap of the frames (`ctmri_monai.transforms.gap`). The returned
`Translation` keeps the frames and their inverse, so the map and QA need no second preprocessing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer

from ctmri_monai.spec import ModelSpec
from ctmri_monai.transforms.context import slice_stacks
from ctmri_monai.transforms.frames import FramedVolume, frame_volume
from ctmri_monai.transforms.gap import domain_gap
from ctmri_monai.transforms.intensity import ct_from_unit, require_ct_window
from ctmri_monai.utils.amp import autocast, autocast_dtype

__all__ = ["BACKGROUND", "SliceRun", "Translation", "infer_slices", "to_target_domain", "translate_volume",
           "valid_range"]

#: What is written outside the input's head mask: air (HU) in synthetic CT, the bottom of the scale in MRI.
BACKGROUND = {"ct": -1000.0, "mri": -1.0}


def valid_range(spec: ModelSpec, target: str) -> dict[str, Any]:
    """What the synthetic image can hold: inside the head, the model's range; outside it, ``BACKGROUND``."""
    if target == "ct":
        lo, hi = require_ct_window(spec)
        return {"unit": "HU", "min": lo, "max": hi, "background": BACKGROUND["ct"]}
    return {"unit": "network scale", "min": -1.0, "max": 1.0, "background": BACKGROUND["mri"]}


class _SliceNetwork:
    """Calls the generator on (B, 2k + 1, S, S) slice stacks, counts them for a progress bar, returns float32."""

    def __init__(self, generator: Callable[[torch.Tensor], torch.Tensor], progress: Any = None):
        self.generator = generator
        self.progress = progress

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.generator(x)
        if self.progress is not None:
            self.progress.update(int(x.shape[0]))
        return out.float()


def infer_slices(
    generator: Callable[[torch.Tensor], torch.Tensor],
    volume: torch.Tensor,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    amp: bool = True,
    progress: Any = None,
    inferer: SliceInferer | None = None,
    context: int = 0,
) -> torch.Tensor:
    """Run a 2D generator over the axial slices (last axis) of a (1, S, S, D) volume; returns (1, S, S, D)
    float32 on the CPU. With ``context`` k the generator gets each slice's 2k + 1 neighbours as channels (end
    slices repeat). The device holds one batch of ``batch_size`` slices at a time (plus the model); mixed
    precision (bf16 where supported, else fp16) on CUDA when ``amp``.

    The volume is laid out slice-first, (1, 2k + 1, D, S, S), so every slice stack is contiguous in memory and
    MONAI's ``SliceInferer`` runs with ``spatial_dim=0`` on that layout. ``inferer`` replaces the default (e.g. the
    one a bundle config declares); it must slice along ``spatial_dim=0`` and assemble on the CPU.
    """
    device = torch.device(device)
    plain = volume.as_tensor() if isinstance(volume, MetaTensor) else volume
    size = tuple(int(s) for s in plain.shape[1:3])
    slices_first = plain[0].to(torch.float32).permute(2, 0, 1).contiguous()  # (D, S, S)
    stacks = slice_stacks(slices_first, context).permute(1, 0, 2, 3).unsqueeze(0).contiguous()
    if inferer is None:
        inferer = SliceInferer(spatial_dim=0, roi_size=size, sw_batch_size=max(1, int(batch_size)), overlap=0.0,
                               mode="constant", sw_device=device, device=torch.device("cpu"), progress=False)
    network = _SliceNetwork(generator, progress)
    with torch.no_grad(), autocast(device, autocast_dtype(device, amp)):
        out = inferer(stacks, network)
    out = out.as_tensor() if isinstance(out, MetaTensor) else out
    return out[0].permute(0, 2, 3, 1).contiguous()


def _prepare_generator(generator: Any, device: torch.device) -> Any:
    if isinstance(generator, torch.nn.Module):
        generator.to(device).eval()
    return generator


def to_target_domain(unit: torch.Tensor, target: str, spec: ModelSpec,
                     outside: torch.Tensor | None = None) -> np.ndarray:
    """Network scale -> output values: synthetic CT in HU through the model's window (rounded, int16), synthetic
    MRI float32 [-1, 1]; ``outside`` (bool, same shape) is set to ``BACKGROUND``."""
    unit = unit.to(torch.float32).clamp_(-1.0, 1.0)
    values = ct_from_unit(unit, spec.ct.window) if target == "ct" else unit  # type: ignore[arg-type]
    if outside is not None:
        values[outside] = BACKGROUND[target]
    if target == "ct":
        return torch.round(values).clamp_(-32768, 32767).to(torch.int16).numpy()
    return values.numpy()


@dataclass(frozen=True)
class SliceRun:
    """How the generator runs over the slices (`infer_slices`): ``batch_size`` slices a batch on ``device``,
    mixed precision with ``amp`` on CUDA, a ``progress`` bar (``update(n)``), an ``inferer`` replacing the
    default ``SliceInferer``."""

    batch_size: int = 16
    device: str | torch.device = "cpu"
    amp: bool = True
    progress: Any = None
    inferer: SliceInferer | None = None


@dataclass
class Translation:
    """A translated volume: ``output`` on the input's grid in the target domain; ``frames`` the input on the
    network's frames with its head mask and the way back (`FramedVolume`, ``frames.inverse.to_input``);
    ``fake_unit`` the raw generator output on the frames ((S, S, D) float32 in [-1, 1]); ``warnings`` of the
    framing check and the domain gap; ``timings`` (seconds) of preprocess, inference and invert; ``gap``: the
    domain gap figures (`ctmri_monai.transforms.gap.domain_gap`)."""

    output: np.ndarray
    frames: FramedVolume
    fake_unit: np.ndarray
    warnings: list[str]
    timings: dict[str, float]
    gap: dict[str, Any] | None = None

    @property
    def source_unit(self) -> np.ndarray:
        """The generator's input frames, (S, S, D) float32 in [-1, 1]."""
        return self.frames.unit

    @property
    def source_mask(self) -> np.ndarray:
        """The input's head mask on the frames, (S, S, D) bool."""
        return self.frames.head

    @property
    def spacing(self) -> tuple[float, float, float]:
        """The frames' voxel size (mm)."""
        return self.frames.spacing


def translate_volume(path: str | os.PathLike, image: MetaTensor, generator: Callable[[torch.Tensor], torch.Tensor],
                     spec: ModelSpec, source: str, target: str, run: SliceRun | None = None, *,
                     mask_background: bool = True) -> Translation:
    """Translate a loaded (1, X, Y, Z) ``image`` (from ``path``, named in errors) of ``source`` into ``target`` on
    the contract ``spec`` (module docstring), the generator run as ``run`` says. ``mask_background``: write
    background outside the input's head mask, where the generator can only invent tissue."""
    run = run or SliceRun()
    device = torch.device(run.device)
    clock = [time.perf_counter()]
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        clock.append(time.perf_counter())
        timings[name] = round(clock[-1] - clock[-2], 4)

    frames = frame_volume(path, image, spec, source)
    gap = domain_gap(spec, source, frames.unit, frames.head)
    warnings = list(frames.warnings) + ([gap["message"]] if gap["far"] else [])
    lap("preprocess")
    if run.progress is not None and hasattr(run.progress, "reset"):
        run.progress.reset(total=int(frames.image.shape[-1]))
    fake = infer_slices(_prepare_generator(generator, device), frames.image, run.batch_size, device, run.amp,
                        run.progress, run.inferer, spec.geometry.context_slices)[0].numpy()
    lap("inference")
    # Background goes outside the head mask of the input on its own grid (no resampling erodes its edge).
    unit = torch.from_numpy(frames.inverse.to_input(fake))
    outside = torch.from_numpy(~frames.inverse.input_head) if mask_background else None
    output = to_target_domain(unit, target, spec, outside)
    lap("invert")
    return Translation(output, frames, fake, warnings, timings, gap)
