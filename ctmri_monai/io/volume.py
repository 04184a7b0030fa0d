"""The one volume loader: NIfTI, DICOM series folders, .mha/.nrrd -> a (1, X, Y, Z) float32 MetaTensor in RAS.

DICOM series are read with SimpleITK's ``ImageSeriesReader`` so the geometry is exactly what SimpleITK gives (its
LPS origin/direction converted to RAS); the series is chosen with pydicom header scans first so that folders with
several series give a clear error. Training on volumes, conversion and paired evaluation all load with it.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.image_reader import ImageReader, NibabelReader
from monai.transforms import EnsureChannelFirst, LoadImage
from monai.utils import MetaKeys

from ctmri_monai.io.dicom_series import DicomSeries
from ctmri_monai.io.errors import CtmriError, InputError
from ctmri_monai.io.paths import input_kind
from ctmri_monai.io.preconditions import check_nifti_header, geometry_warnings
from ctmri_monai.io.sitk_reader import ImageShapeError, SimpleITKReader, check_voxel_limit

__all__ = ["Volume", "load_volume", "read_error"]


@dataclass
class Volume:
    """A loaded input: ``image`` (1, X, Y, Z) float32 MetaTensor, its RAS ``affine``, where it came from, and
    ``warnings`` about what is unusual in it (`ctmri_monai.io.preconditions`)."""

    path: Path
    kind: str
    image: MetaTensor
    affine: np.ndarray
    nifti_header: Any = None
    series: DicomSeries | None = None
    shape: tuple[int, ...] = ()
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.shape and self.image is not None:
            self.shape = tuple(int(s) for s in self.image.shape[1:])


@functools.lru_cache(maxsize=1)
def _loader() -> LoadImage:
    """One LoadImage (native dtype) for the process: building it registers MONAI's default readers, which
    logs and warns about optional decoders every time."""
    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            return LoadImage(image_only=True, dtype=None)
    finally:
        plugin_log.setLevel(level)


def read_error(path: str | os.PathLike, exc: BaseException) -> InputError:
    """A reader's failure as one `InputError` naming the file: ``cannot read image (Type: first line)``."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InputError(path, f"cannot read image ({type(exc).__name__}: {msg[:300]})")


def load_volume(path: str | os.PathLike, series_uid: str | None = None, max_voxels: int | None = None) -> Volume:
    """Load one 3D volume as a (1, X, Y, Z) float32 MetaTensor in RAS world coordinates.

    Raises InputError naming the file for: missing/empty files, unreadable or truncated data,
    2D or 4D images, non-finite values, a value type or geometry the contract cannot describe
    (`ctmri_monai.io.preconditions`; ContractError), empty or mixed DICOM series, unsupported DICOM transfer syntaxes,
    and (`VolumeTooLargeError`) volumes over ``max_voxels``, checked from the header before the pixel data
    is read.
    """
    path = Path(path)
    kind = input_kind(path)
    if kind != "dicom" and path.stat().st_size == 0:
        raise InputError(path, "empty file (0 bytes)")
    header, nifti_affine, warnings_found = None, None, []
    reader: ImageReader
    if kind == "nifti":
        try:
            nimg = nib.load(str(path))
        except Exception as exc:  # nibabel raises many types for broken headers
            raise read_error(path, exc) from exc
        header = nimg.header
        warnings_found = check_nifti_header(path, _raw_header(path, nimg))  # as written, before nibabel patches it
        nifti_affine = np.asarray(nimg.affine, dtype=np.float64)
        shape = tuple(int(v) for v in nimg.shape)
        check_voxel_limit(path, shape, max_voxels)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) > 3:  # refused from the header: a 4D series is never read into memory
            raise InputError(path, _four_d_problem(shape))
        reader = NibabelReader()
    else:
        reader = SimpleITKReader(series_uid=series_uid, max_voxels=max_voxels)
    try:
        # the reader is given at call time: LoadImage then lets its errors through unchanged
        image = _loader()(str(path), reader=reader)
    except CtmriError:
        raise
    except ImageShapeError as exc:
        raise InputError(path, str(exc)) from exc
    except Exception as exc:
        raise read_error(path, exc) from exc
    image = _as_3d(path, image)
    if image.is_floating_point() and not bool(torch.isfinite(image).all()):
        raise InputError(path, "contains NaN or Inf values")
    image = image.to(torch.float32)
    image = EnsureChannelFirst(channel_dim="no_channel")(image)
    affine = nifti_affine if nifti_affine is not None else np.asarray(image.meta[MetaKeys.AFFINE], np.float64)
    series = reader.series if isinstance(reader, SimpleITKReader) else None
    return Volume(path=path, kind=kind, image=image, affine=affine, nifti_header=header, series=series,
                  warnings=warnings_found + geometry_warnings(affine))


def _raw_header(path: Path, nimg: Any) -> Any:
    """The image's header as the file holds it: nibabel's loaded header has problems fixed silently (a zero pixdim
    becomes 1), which would hide a degenerate qform from the preconditions."""
    try:
        holder = nimg.file_map.get("header") or nimg.file_map["image"]  # .hdr/.img pairs, or one file
        with holder.get_prepare_fileobj("rb") as f:
            return type(nimg.header).from_fileobj(f, check=False)
    except Exception as exc:  # noqa: BLE001 - nib.load read it a moment ago
        raise read_error(path, exc) from exc


def _four_d_problem(shape: tuple[int, ...]) -> str:
    return (f"{len(shape)}D image (shape {shape}) where a 3D volume is expected (a time series or several "
            "volumes in one file); extract the 3D volume to convert first, e.g. with fslroi or nibabel")


def _as_3d(path: Path, image: MetaTensor) -> MetaTensor:
    """Drop trailing singleton dimensions beyond 3; refuse 2D and true 4D+ images."""
    shape = tuple(image.shape)
    while image.ndim > 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim < 3:
        raise InputError(path, f"2D image (shape {shape}) where a 3D volume is expected")
    if image.ndim > 3:
        raise InputError(path, _four_d_problem(shape))
    if min(image.shape) < 1:
        raise InputError(path, f"empty image (shape {shape})")
    return image
