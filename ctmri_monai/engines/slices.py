"""Translating a volume in memory, slice by slice, on a model's data contract: what conversion and paired
evaluation share.

`translate_volume`: a loaded (1, X, Y, Z) volume -> the model's `volume_pipeline` with the input's head mask (from
its own units: HU, raw MRI; carried through the same orientation and framing onto the frames) -> generator over
axial slices (or 2k + 1 slice stacks) in batches (MONAI ``SliceInferer``) -> background outside that head mask ->
MONAI inverse of framing and orientation -> the target domain's values (synthetic CT in HU through the model's
window, synthetic MRI in [-1, 1]) on the input's exact grid; with the domain gap of the frames
(`ctmri_monai.transforms.gap`).
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
from monai.data.utils import affine_to_spacing
from monai.inferers import SliceInferer

from ctmri_monai.io.errors import InputError, find_input_error
from ctmri_monai.spec import ModelSpec
from ctmri_monai.transforms.checks import check_framing
from ctmri_monai.transforms.context import slice_stacks
from ctmri_monai.transforms.gap import domain_gap
from ctmri_monai.transforms.intensity import ct_from_unit, require_ct_window
from ctmri_monai.transforms.mask import input_head_mask
from ctmri_monai.transforms.pipelines import volume_pipeline
from ctmri_monai.transforms.spatial import InPlaneFramed
from ctmri_monai.utils.amp import autocast, autocast_dtype

__all__ = ["BACKGROUND", "Translation", "infer_slices", "to_target_domain", "translate_volume", "valid_range"]

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


def _framing(pipeline: Any) -> InPlaneFramed:
    return next(t for t in pipeline.transforms if isinstance(t, InPlaneFramed))


@dataclass
class Translation:
    """A translated volume: ``output`` on the input's grid in the target domain; the generator's ``source_unit``
    input, its head mask ``source_mask`` and the raw ``fake_unit`` output on its (S, S, D) frames and their voxel
    ``spacing`` (mm); ``warnings`` of the framing check; ``timings`` (seconds) of preprocess, inference and
    invert; ``gap``: the domain gap figures (`ctmri_monai.transforms.gap.domain_gap`)."""

    output: np.ndarray
    source_unit: np.ndarray
    source_mask: np.ndarray
    fake_unit: np.ndarray
    warnings: list[str]
    timings: dict[str, float]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gap: dict[str, Any] | None = None


def translate_volume(
    path: str | os.PathLike,
    image: MetaTensor,
    generator: Callable[[torch.Tensor], torch.Tensor],
    spec: ModelSpec,
    source: str,
    target: str,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    amp: bool = True,
    mask_background: bool = True,
    progress: Any = None,
    inferer: SliceInferer | None = None,
) -> Translation:
    """Translate a loaded (1, X, Y, Z) ``image`` (from ``path``, named in errors) of ``source`` into ``target`` on
    the contract ``spec`` (module docstring). ``mask_background``: write background outside the input's head
    mask, where the generator can only invent tissue."""
    device = torch.device(device)
    clock = [time.perf_counter()]
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        clock.append(time.perf_counter())
        timings[name] = round(clock[-1] - clock[-2], 4)

    pipeline = volume_pipeline(spec, source, head_key="head")
    try:
        raw_mask = input_head_mask(image, source)  # on the input's grid, in its own units
        framed = pipeline({"image": image, "head": raw_mask})
        x = framed["image"]
    except Exception as exc:  # MONAI wraps a transform's error in RuntimeError: report the project error inside
        err = find_input_error(exc)
        if err is not None:
            raise type(err)(path, err.problem) from exc
        raise InputError(path, f"preprocessing failed ({type(exc).__name__}: {exc})") from exc
    source_unit = x.as_tensor()[0].numpy()
    source_mask = np.asarray(framed.pop("head"))[0] > 0  # the same mask, oriented and framed like the input
    warnings = check_framing(path, x, _framing(pipeline).frame.last_resized_size, spec, source_mask)
    gap = domain_gap(spec, source, source_unit, source_mask)
    if gap["far"]:
        warnings.append(gap["message"])
    lap("preprocess")
    if progress is not None and hasattr(progress, "reset"):
        progress.reset(total=int(x.shape[-1]))
    fake = infer_slices(_prepare_generator(generator, device), x, batch_size, device, amp, progress, inferer,
                        spec.geometry.context_slices)
    lap("inference")
    fake_unit = fake[0].numpy()
    spacing = tuple(float(v) for v in affine_to_spacing(x.affine, r=3))

    # Invert framing and orientation with MONAI; background goes outside the head mask of the input on its own grid
    # (no resampling erodes its edge). The prediction must be a MetaTensor carrying the input's applied operations,
    # or the inverse is silently skipped.
    pred = MetaTensor(fake[0][None], meta=dict(x.meta), applied_operations=list(x.applied_operations))
    del x, fake
    restored = pipeline.inverse({"image": pred})["image"]
    del pred
    shape = tuple(int(s) for s in image.shape[1:])
    if tuple(restored.shape[1:]) != shape:
        raise InputError(path, f"internal error: inverted shape {tuple(restored.shape[1:])} differs from the "
                               f"input's {shape}")
    if not np.allclose(np.asarray(restored.affine, np.float64), np.asarray(image.affine, np.float64), atol=1e-3):
        raise InputError(path, "internal error: inverted affine differs from the input's")
    unit = restored.as_tensor()
    outside = torch.from_numpy(~raw_mask) if mask_background else None
    output = to_target_domain(unit[0], target, spec, outside)
    lap("invert")
    return Translation(output, source_unit, source_mask, fake_unit, warnings, timings, spacing,  # type: ignore[arg-type]
                       gap)
