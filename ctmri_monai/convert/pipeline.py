"""Slice-wise conversion of one volume with a 2D generator, written on exactly the input's voxel grid.

load (NIfTI / DICOM series / .mha / .nrrd) -> channel first -> orientation (``"PLS"``: upright axial slices
along array axis 2, as the 2D training images) -> in-plane spacing -> source intensity to [-1, 1] ->
crop/pad to (S, S, D) with -1 -> generator over axial slices in batches (MONAI ``SliceInferer``) ->
MONAI inverse of crop/pad, spacing and orientation -> target intensity (synthetic CT in HU as int16,
synthetic MRI as float32 in [-1, 1]) -> NIfTI with the input's shape and affine, marked SYNTHETIC.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import (
    Compose,
    InvertibleTransform,
    MapTransform,
    Orientationd,
    Resize,
    ResizeWithPadOrCropd,
)

from ctmri_monai.amp import autocast, autocast_dtype
from ctmri_monai.convert.io import (
    ConversionError,
    Volume,
    load_volume,
    nifti_image_like,
    output_error,
    path_stem,
    write_nifti_atomic,
)
from ctmri_monai.convert.qa import consistency_report, save_montage
from ctmri_monai.transforms import DEFAULT_AXCODES, ORIENTATION_LABELS, ct_from_unit, intensity_transform

DOMAINS = ("ct", "mri")


def synthetic_description(source: str, target: str, model_info: Mapping[str, Any] | None = None) -> str:
    """``SYNTHETIC <source>2<target> model=<file>:<sha256[:12]>``, at most 80 characters (NIfTI descrip)."""
    head = f"SYNTHETIC {source}2{target} model="
    info = model_info or {}
    name = Path(str(info.get("file") or "unknown")).name
    tail = f":{str(info.get('sha256'))[:12]}" if info.get("sha256") else ""
    room = 80 - len(head) - len(tail)
    if len(name) > room:
        name = name[: max(room - 1, 0)] + "~"
    return (head + name + tail)[:80]


class InPlaneSpacingd(MapTransform, InvertibleTransform):
    """Resample the two in-plane axes to ``pixdim`` mm, slice axis untouched; MONAI-invertible.

    After ``Orientation`` the in-plane resampling is a per-axis scaling in voxel space, so it is done with
    MONAI's ``Resize`` (separable interpolation) instead of ``Spacing`` (a full 3D sampling grid), which is much
    cheaper. The new size is ``round(size * spacing / pixdim)``, so the spacing equals ``pixdim`` within half a
    pixel over the field of view. It is not identical to ``Spacing`` (used for training volumes): Resize keeps
    the field of view, so its grid can sit a fraction of a pixel away from Spacing's, and interpolated values
    differ slightly.
    ``inverse`` is MONAI's ``Resize.inverse``, driven by the operation recorded in ``applied_operations``.
    """

    def __init__(self, keys: KeysCollection, pixdim: Sequence[float] = (1.0, 1.0), mode: str = "trilinear",
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.pixdim = (float(pixdim[0]), float(pixdim[1]))
        self.resizer = Resize(spatial_size=(-1, -1, -1), mode=mode, align_corners=False)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            spacing = np.linalg.norm(np.asarray(img.affine, dtype=np.float64)[:3, :3], axis=0)
            size = [max(1, int(round(img.shape[i + 1] * spacing[i] / self.pixdim[i]))) for i in range(2)]
            self.resizer.spatial_size = (size[0], size[1], -1)
            d[key] = self.resizer(img)
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizer.inverse(d[key])
        return d


def build_preprocess(
    source: str,
    image_size: int = 256,
    pixdim: Sequence[float] = (1.0, 1.0),
    ct_window: Sequence[float] = (-1000.0, 1000.0),
    mri_percentiles: Sequence[float] = (0.5, 99.5),
    axcodes: str = DEFAULT_AXCODES,
) -> tuple[Compose, Compose]:
    """(forward, spatial): the preprocessing of key "image" and its invertible spatial part (same instances).

    ``spatial.inverse`` undoes crop/pad, spacing and orientation; intensity is not in it (undone by the caller
    in the target domain). `InPlaneSpacingd` keeps the slices: pixdim is the in-plane spacing only.
    """
    if len(pixdim) != 2:
        raise ValueError(f"pixdim is the in-plane spacing (px, py), got {pixdim}")
    if axcodes[2].upper() not in "SI":
        raise ValueError(f"axcodes {axcodes!r} must put the axial (I/S) axis last")
    keys = ["image"]
    orient = Orientationd(keys, axcodes=axcodes, labels=ORIENTATION_LABELS)
    spacing = InPlaneSpacingd(keys, pixdim=pixdim)
    intensity = intensity_transform(source, keys=keys, ct_window=tuple(ct_window),
                                    mri_percentiles=tuple(mri_percentiles))
    pad = ResizeWithPadOrCropd(keys, spatial_size=(image_size, image_size, -1), mode="constant", value=-1.0)
    return Compose([orient, spacing, intensity, pad]), Compose([orient, spacing, pad])


class _SliceNetwork:
    """Calls the generator on (B, 1, S, S) slices, counts them for a progress bar, returns float32."""

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
) -> torch.Tensor:
    """Run a 2D generator over the axial slices (last axis) of a (1, S, S, D) volume; returns (1, S, S, D)
    float32 on the CPU. The device holds one batch of ``batch_size`` slices at a time (plus the model);
    mixed precision (bf16 where supported, else fp16) on CUDA when ``amp``.

    The volume is laid out slice-first, (1, 1, D, S, S), so every slice is contiguous in memory and MONAI's
    ``SliceInferer`` runs with ``spatial_dim=0`` on that layout (the same slices as axis 2 of the input).
    ``inferer`` replaces the default ``SliceInferer`` (e.g. the one a bundle config declares); it must slice
    along ``spatial_dim=0`` and assemble on the CPU.
    """
    device = torch.device(device)
    plain = volume.as_tensor() if isinstance(volume, MetaTensor) else volume
    size = tuple(int(s) for s in plain.shape[1:3])
    slices_first = plain.to(torch.float32).permute(0, 3, 1, 2).contiguous().unsqueeze(0)
    if inferer is None:
        inferer = SliceInferer(spatial_dim=0, roi_size=size, sw_batch_size=max(1, int(batch_size)), overlap=0.0,
                               mode="constant", sw_device=device, device=torch.device("cpu"), progress=False)
    network = _SliceNetwork(generator, progress)
    with torch.no_grad(), autocast(device, autocast_dtype(device, amp)):
        out = inferer(slices_first, network)
    out = out.as_tensor() if isinstance(out, MetaTensor) else out
    return out[0].permute(0, 2, 3, 1).contiguous()


def _prepare_generator(generator: Any, device: torch.device) -> Any:
    if isinstance(generator, torch.nn.Module):
        generator.to(device).eval()
    return generator


def _axial_slice_numbers(volume: Volume, axcodes: str, depth: int) -> tuple[int | None, list[int]]:
    """(axis of the input array that became the axial axis, input index of each oriented slice)."""
    ornt = nib.orientations.io_orientation(volume.affine)
    axial = [j for j in range(3) if int(ornt[j, 0]) == 2]
    if len(axial) != 1 or volume.shape[axial[0]] != depth:
        return None, list(range(depth))
    j = axial[0]
    flip = (ornt[j, 1] < 0) != (axcodes[2].upper() == "I")
    return j, [depth - 1 - k if flip else k for k in range(depth)]


def _check_range(path: str | os.PathLike, image: torch.Tensor, source: str) -> list[str]:
    """Refuse a constant image (nothing to convert: usually missing pixel data); warnings for CT whose values
    do not look like HU (no air or no tissue, or beyond what int16 HU can hold: a wrong rescale)."""
    lo, hi = float(image.min()), float(image.max())
    if lo == hi:
        raise ConversionError(path, f"constant image (every voxel is {lo:g}): no anatomy to convert "
                                    "(blank or missing pixel data?)")
    if source != "ct":
        return []
    if lo > -200.0 or hi < 100.0:
        return [f"CT values {lo:.0f}..{hi:.0f} do not look like Hounsfield units (no air or no tissue); "
                "check the rescale slope/intercept"]
    if lo < -4000.0 or hi > 32767.0:
        return [f"CT values {lo:.4g}..{hi:.4g} go beyond any Hounsfield range (clipped by the CT window); "
                "check the rescale slope/intercept"]
    return []


def to_target_domain(unit: torch.Tensor, target: str, ct_window: Sequence[float]) -> np.ndarray:
    """Network scale -> output values: synthetic CT in HU (rounded, int16), synthetic MRI float32 [-1, 1]."""
    unit = unit.to(torch.float32).clamp_(-1.0, 1.0)
    if target == "ct":
        hu = ct_from_unit(unit, tuple(ct_window))
        return torch.round(hu).clamp_(-32768, 32767).to(torch.int16).numpy()
    return unit.numpy()


def convert_volume(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    generator: Callable[[torch.Tensor], torch.Tensor],
    source: str = "ct",
    target: str = "mri",
    *,
    image_size: int = 256,
    pixdim: Sequence[float] = (1.0, 1.0),
    ct_window: Sequence[float] = (-1000.0, 1000.0),
    mri_percentiles: Sequence[float] = (0.5, 99.5),
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    amp: bool = True,
    model_info: Mapping[str, Any] | None = None,
    series_uid: str | None = None,
    dicom_output_dir: str | os.PathLike | None = None,
    qa_threshold: float = 0.90,
    qa_dir: str | os.PathLike | None = None,
    axcodes: str = DEFAULT_AXCODES,
    progress: Any = None,
    inferer: SliceInferer | None = None,
    max_voxels: int | None = None,
    volume: Volume | None = None,
) -> dict[str, Any]:
    """Convert one volume slice by slice with ``generator`` ((B, 1, S, S) in [-1, 1] -> same) and write
    ``output_path`` (NIfTI) on exactly the input's grid; optionally a synthetic DICOM series and a QA montage.

    ``progress``: an object with ``update(n)`` (e.g. a tqdm bar) advanced by the number of slices done.
    ``inferer``: a ``SliceInferer`` over ``spatial_dim=0`` to use instead of the default (see `infer_slices`).
    ``max_voxels``: refuse larger volumes (checked from the header, before the pixel data is read).
    ``volume``: ``input_path`` already loaded with `load_volume` (a batch reads the next file ahead).
    Returns a dict: input, output, direction, shape, slices, seconds, timings, qa, warnings, dicom_output,
    dicom_series_uid. Bad input raises `ConversionError` naming the file; nothing is left behind then.
    """
    t_start = time.perf_counter()
    if source not in DOMAINS or target not in DOMAINS:
        raise ValueError(f"source and target must be in {DOMAINS}, got {source!r}, {target!r}")
    device = torch.device(device)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 4)
        return now

    if volume is None:
        volume = load_volume(input_path, series_uid=series_uid, max_voxels=max_voxels)
    if dicom_output_dir is not None and volume.kind != "dicom":
        raise ConversionError(input_path, "DICOM output needs a DICOM series input")
    warnings = _check_range(input_path, volume.image, source)
    t = lap("load", t_start)

    forward, spatial = build_preprocess(source, image_size, pixdim, ct_window, mri_percentiles, axcodes)
    try:
        x = forward({"image": volume.image})["image"]
    except Exception as exc:
        raise ConversionError(input_path, f"preprocessing failed ({type(exc).__name__}: {exc})") from exc
    volume.image = None  # type: ignore[assignment]  # free the float32 copy of the input
    t = lap("preprocess", t)
    if progress is not None and hasattr(progress, "reset"):
        progress.reset(total=int(x.shape[-1]))

    fake = infer_slices(_prepare_generator(generator, device), x, batch_size, device, amp, progress, inferer)
    t = lap("inference", t)

    axis, numbers = _axial_slice_numbers(volume, axcodes, int(x.shape[-1]))
    source_unit = x.as_tensor()[0].numpy()
    qa = consistency_report(source_unit, fake[0].numpy(), source, target, qa_threshold, slice_index=numbers)
    qa["slice_axis"] = axis
    if qa_dir is not None:
        montage = Path(qa_dir) / f"{path_stem(output_path)}_qa.png"
        try:
            qa["montage"] = str(save_montage(source_unit, fake[0].numpy(), montage, qa, numbers, axcodes))
        except OSError as exc:
            raise output_error(montage, exc) from exc
    t = lap("qa", t)

    # Invert crop/pad, spacing and orientation with MONAI. The prediction must be a MetaTensor carrying the
    # input's applied operations, or the inverse is silently skipped. Crop's inverse pads with 0, so the
    # inverse runs on (fake + 1), where background is 0, and 1 is taken off again afterwards.
    pred = MetaTensor(fake + 1.0, meta=dict(x.meta), applied_operations=list(x.applied_operations))
    del x, fake, source_unit
    restored = spatial.inverse({"image": pred})["image"]
    del pred
    if tuple(restored.shape[1:]) != volume.shape:
        raise ConversionError(input_path, f"internal error: inverted shape {tuple(restored.shape[1:])} "
                                          f"differs from the input's {volume.shape}")
    out_affine = np.asarray(restored.affine, dtype=np.float64)
    if not np.allclose(out_affine, volume.affine, atol=1e-3):
        raise ConversionError(input_path, "internal error: inverted affine differs from the input's")
    unit = restored.as_tensor()[0].sub_(1.0)
    del restored
    array = to_target_domain(unit, target, ct_window)
    del unit
    t = lap("invert", t)

    description = synthetic_description(source, target, model_info)
    result: dict[str, Any] = {"dicom_output": None, "dicom_series_uid": None}
    output: Path | None = None
    try:
        output = write_nifti_atomic(nifti_image_like(array, volume, description), output_path)
        if dicom_output_dir is not None:
            from ctmri_monai.convert.dicom_out import write_dicom_series

            try:
                dicom = write_dicom_series(array, volume.series, dicom_output_dir, source, target, model_info)
            except OSError as exc:
                raise output_error(dicom_output_dir, exc) from exc
            result.update(dicom_output=str(dicom["folder"]), dicom_series_uid=dicom["series_uid"])
    except Exception:
        if output is not None:
            output.unlink(missing_ok=True)  # all or nothing: no NIfTI without its DICOM series
        if qa.get("montage"):
            Path(qa["montage"]).unlink(missing_ok=True)
        raise
    lap("write", t)

    result.update(
        input=str(input_path),
        output=str(output),
        direction=f"{source}2{target}",
        shape=list(volume.shape),
        slices=int(array.shape[axis]) if axis is not None else None,
        seconds=round(time.perf_counter() - t_start, 3),
        timings=timings,
        qa=qa,
        warnings=warnings,
        description=description,
    )
    return result
