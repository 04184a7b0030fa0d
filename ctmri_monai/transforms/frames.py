"""A volume on the network's frames, built once, with the way back: what conversion, paired evaluation, the
disagreement map and the training references share.

`frame_volume`: a loaded (1, X, Y, Z) volume -> the model's `volume_pipeline` (orientation, source intensity,
in-plane framing) with the input's head mask from its own units (`input_head_mask`) carried onto the frames ->
`FramedVolume`: the (1, S, S, D) generator input, the head on the frames, their voxel size, the framing check's
warnings and a `FrameInverse`. `FrameInverse.to_input` maps ANY (S, S, D) frame-space array (an output, a map, a
mask as float) onto the input's exact grid by MONAI's inverse of the recorded operations, without preprocessing
the input again.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import Compose

from ctmri_monai.io.errors import InputError, find_input_error
from ctmri_monai.spec import ModelSpec
from ctmri_monai.transforms.checks import check_framing
from ctmri_monai.transforms.mask import input_head_mask
from ctmri_monai.transforms.pipelines import volume_pipeline
from ctmri_monai.transforms.spatial import frame_record

__all__ = ["FrameInverse", "FramedVolume", "frame_volume"]


@dataclass(frozen=True)
class FrameInverse:
    """The way from a volume's frames back to its input grid: the pipeline that framed it and the operations it
    recorded (``meta``, ``operations``), the input's ``affine`` and ``shape``, its head mask ``input_head``
    ((X, Y, Z) bool, from its own units), the ``frames_shape`` (S, S, D) it inverts and ``path`` (named in
    errors)."""

    pipeline: Compose
    meta: dict[str, Any]
    operations: list[Any]
    affine: np.ndarray
    shape: tuple[int, int, int]
    input_head: np.ndarray
    frames_shape: tuple[int, int, int]
    path: str = "<in-memory volume>"

    def to_input(self, frames: Any) -> np.ndarray:
        """An (S, S, D) array on the frames -> float32 (X, Y, Z) on the input's exact grid (MONAI's inverse of
        framing and orientation; resampling interpolates, never overshoots)."""
        array = frames.detach().cpu() if isinstance(frames, torch.Tensor) else torch.from_numpy(
            np.ascontiguousarray(frames, np.float32))
        if tuple(array.shape) != self.frames_shape:
            raise ValueError(f"{self.path}: frames {tuple(array.shape)} are not this input's frames "
                             f"{self.frames_shape}")
        pred = MetaTensor(array.to(torch.float32)[None], meta=copy.deepcopy(self.meta),
                          applied_operations=copy.deepcopy(self.operations))
        restored = self.pipeline.inverse({"image": pred})["image"]
        if tuple(restored.shape[1:]) != self.shape:
            raise InputError(self.path, f"internal error: inverted shape {tuple(restored.shape[1:])} differs from "
                                        f"the input's {self.shape}")
        if not np.allclose(np.asarray(restored.affine, np.float64), self.affine, atol=1e-3):
            raise InputError(self.path, "internal error: inverted affine differs from the input's")
        out = restored.as_tensor()[0]
        return out.numpy().astype(np.float32, copy=False)


@dataclass
class FramedVolume:
    """A volume on the network's frames: ``image`` the (1, S, S, D) generator input in [-1, 1] (MetaTensor with
    its applied operations), ``head`` the input's head mask on the frames ((S, S, D) bool), ``spacing`` the frames'
    voxel size (mm), ``warnings`` of the framing check, ``inverse`` the way back, ``resized`` the in-plane size
    the input was resized to before crop / pad, ``head_cut`` the head-centred cut (None: centre crop / pad)."""

    image: MetaTensor
    head: np.ndarray
    spacing: tuple[float, float, float]
    warnings: list[str]
    inverse: FrameInverse
    resized: tuple[int, int] = (0, 0)
    head_cut: tuple[int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def unit(self) -> np.ndarray:
        """The generator input as a (S, S, D) float32 array."""
        return self.image.as_tensor()[0].numpy()


def _reraise(path: str | os.PathLike, exc: Exception) -> None:
    """MONAI wraps a transform's error in RuntimeError: report the project error inside, naming ``path``."""
    err = find_input_error(exc)
    if err is not None:
        raise type(err)(path, err.problem) from exc
    raise InputError(path, f"preprocessing failed ({type(exc).__name__}: {exc})") from exc


def frame_volume(path: str | os.PathLike, image: MetaTensor, spec: ModelSpec, source: str,
                 check: bool = True) -> FramedVolume:
    """Frame a loaded (1, X, Y, Z) ``image`` of ``source`` (from ``path``, named in errors) on the contract
    ``spec`` once (module docstring). ``check``: run the framing check (refuses a head the frame cuts, warns
    about a tiny one). Bad input raises `InputError` or `ContractError`."""
    pipeline = volume_pipeline(spec, source, head_key="head")
    try:
        input_head = input_head_mask(image, source)  # on the input's grid, in its own units
        framed = pipeline({"image": image, "head": input_head})
    except Exception as exc:  # noqa: BLE001 - one error naming the file
        _reraise(path, exc)
    x = framed["image"]
    head = np.asarray(framed["head"])[0] > 0  # the same mask, oriented and framed like the input
    record = frame_record(x)
    resized = tuple(int(v) for v in record["resized"])
    warnings = check_framing(path, x, resized, spec, head) if check else []  # type: ignore[arg-type]
    inverse = FrameInverse(pipeline, dict(x.meta), list(x.applied_operations), np.asarray(image.affine, np.float64),
                           tuple(int(v) for v in image.shape[1:]), input_head,  # type: ignore[arg-type]
                           tuple(int(v) for v in x.shape[1:]), str(path))  # type: ignore[arg-type]
    spacing = tuple(float(v) for v in affine_to_spacing(x.affine, r=3))
    cut = record["head_cut"]
    return FramedVolume(x, head, spacing, warnings, inverse, resized,  # type: ignore[arg-type]
                        None if cut is None else tuple(int(v) for v in cut))  # type: ignore[arg-type]
