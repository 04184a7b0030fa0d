"""Reading volumes for conversion (NIfTI, DICOM series, .mha/.nrrd) and writing the NIfTI output.

Every reader returns a channel-first float32 `MetaTensor` (1, X, Y, Z) whose ``affine`` is in RAS
(NIfTI convention). DICOM series are read with SimpleITK's ``ImageSeriesReader`` so the geometry is
exactly what SimpleITK gives (its LPS origin/direction converted to RAS); the series is chosen with
pydicom header scans first so that folders with several series give a clear error.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.data.image_reader import ImageReader, NibabelReader
from monai.transforms import EnsureChannelFirst, LoadImage
from monai.utils import MetaKeys, SpaceKeys

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Transfer syntaxes SimpleITK's GDCM decodes: uncompressed, deflated, RLE, JPEG, JPEG-LS, JPEG 2000.
READABLE_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}


class ConversionError(ValueError):
    """A bad input or output: the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def path_suffix(path: str | os.PathLike) -> str:
    """Lower-case suffix, with the double suffix ``.nii.gz`` kept whole."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def path_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix (``a.nii.gz`` -> ``a``; a folder keeps its name)."""
    p = Path(path)
    suffix = path_suffix(p)
    if p.is_dir() or suffix not in SUPPORTED_SUFFIXES:
        return p.name
    return p.name[: -len(suffix)]


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom_folder(path: str | os.PathLike, probe: int = 20) -> bool:
    """True when a folder directly holds DICOM files (the first ``probe`` files are checked)."""
    p = Path(path)
    if not p.is_dir():
        return False
    files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    return any(is_dicom_file(f) for f in files[:probe])


def input_kind(path: str | os.PathLike) -> str:
    """``"nifti"``, ``"itk"`` or ``"dicom"``; ConversionError for anything else."""
    p = Path(path)
    if not p.exists():
        raise ConversionError(p, "does not exist")
    if p.is_dir():
        return "dicom"
    suffix = path_suffix(p)
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in ITK_SUFFIXES:
        return "itk"
    if is_dicom_file(p):
        raise ConversionError(p, "a single DICOM file; give the folder that holds the whole series")
    raise ConversionError(
        p, f"unsupported input type {suffix!r} (expected {', '.join(SUPPORTED_SUFFIXES)} or a DICOM folder)"
    )


# ----------------------------------------------------------------------------------------------------------
# DICOM series selection


@dataclass
class DicomSeries:
    """One DICOM series of a folder: files sorted in slice order, with their headers."""

    uid: str
    description: str = ""
    modality: str = ""
    files: list[str] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.uid}  {self.modality or '?'}  '{self.description}'  {len(self.files)} slices"


def scan_dicom_folder(folder: str | os.PathLike) -> dict[str, DicomSeries]:
    """Group the DICOM image files directly inside ``folder`` by SeriesInstanceUID (headers only)."""
    folder = Path(folder)
    series: dict[str, DicomSeries] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError):
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid or "Rows" not in ds or "Columns" not in ds:
            continue  # DICOMDIR, structured reports, presentation states...
        s = series.setdefault(
            uid, DicomSeries(uid, str(ds.get("SeriesDescription", "")), str(ds.get("Modality", "")))
        )
        s.files.append(str(f))
        s.headers.append(ds)
    return series


def _slice_normal(ds: Any) -> np.ndarray:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    return np.cross(iop[:3], iop[3:])


def transfer_syntax(ds: Any) -> str:
    """The TransferSyntaxUID of a dataset read from a file ("" when it has no file meta)."""
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""


def _syntax_name(uid: str) -> str:
    """``"<uid> (<name>)"``; pydicom knows the names of the standard syntaxes it cannot decode here too."""
    if not uid:
        return "(none)"
    name = READABLE_TRANSFER_SYNTAXES.get(uid) or pydicom.uid.UID(uid).name
    return f"{uid} ({name})" if name and name != uid else f"{uid} (unknown)"


def _check_transfer_syntax(folder: Path, s: DicomSeries) -> None:
    syntaxes = [(Path(f).name, transfer_syntax(h)) for f, h in zip(s.files, s.headers, strict=True)]
    bad = [(name, ts) for name, ts in syntaxes if ts and ts not in READABLE_TRANSFER_SYNTAXES]
    if bad:
        more = f" and {len(bad) - 1} more file(s)" if len(bad) > 1 else ""
        raise ConversionError(
            folder, f"series {s.uid}: unsupported transfer syntax {_syntax_name(bad[0][1])} in {bad[0][0]}{more}; "
            "readable: uncompressed, deflated, RLE, JPEG, JPEG-LS, JPEG 2000 (decompress the series first, "
            "e.g. with `gdcmconv --raw` or `dcmdjpeg`)"
        )


def _check_series(folder: Path, s: DicomSeries) -> None:
    """Raise ConversionError for a series that has no single regular 3D grid or cannot be decoded."""
    headers = s.headers
    _check_transfer_syntax(folder, s)
    if any(int(h.get("NumberOfFrames", 1) or 1) > 1 for h in headers):
        raise ConversionError(folder, f"series {s.uid} is multi-frame; only single-frame series supported")
    if any(int(h.get("SamplesPerPixel", 1)) != 1 for h in headers):
        raise ConversionError(folder, f"series {s.uid} is not grayscale (SamplesPerPixel != 1)")
    sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(sizes) > 1:
        raise ConversionError(folder, f"mixed series {s.uid}: slices of different sizes {sorted(sizes)}")
    missing = [Path(f).name for f, h in zip(s.files, headers, strict=True) if "ImagePositionPatient" not in h
               or "ImageOrientationPatient" not in h]
    if missing:
        raise ConversionError(folder, f"series {s.uid}: no ImagePositionPatient/Orientation in {missing[:3]}")
    iops = np.asarray([[float(v) for v in h.ImageOrientationPatient] for h in headers])
    if np.abs(iops - iops[0]).max() > 1e-4:
        raise ConversionError(folder, f"mixed series {s.uid}: slices with different orientations")
    if len(headers) < 2:
        return
    normal = _slice_normal(headers[0])
    ipp = np.asarray([[float(v) for v in h.ImagePositionPatient] for h in headers])
    pos = ipp @ normal
    steps = np.diff(pos)
    if np.any(np.abs(steps) < 1e-4):
        raise ConversionError(folder, f"mixed series {s.uid}: several slices at the same position")
    if not (np.all(steps > 0) or np.all(steps < 0)):
        raise ConversionError(folder, f"series {s.uid}: slices are not ordered along the slice normal")
    span = ipp[-1] - ipp[0]
    if np.linalg.norm(np.cross(span, normal)) > 1e-3 * np.linalg.norm(span) + 0.5:  # mm off the normal
        raise ConversionError(folder, f"series {s.uid}: slices are not stacked along their normal (gantry "
                                      "tilt or sheared series); resample it to an orthogonal grid first")
    mean = np.abs(steps).mean()
    if np.abs(np.abs(steps) - mean).max() > 0.01 * mean + 1e-3:
        raise ConversionError(
            folder, f"series {s.uid}: irregular slice spacing "
            f"({np.abs(steps).min():.3g}-{np.abs(steps).max():.3g} mm; missing slices?)"
        )


def select_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> DicomSeries:
    """The series to convert, with files in SimpleITK's (GDCM's) slice order; checked for a regular grid.

    Several series and no ``series_uid``, or an unknown ``series_uid``: ConversionError listing every
    SeriesInstanceUID with its description and slice count.
    """
    folder = Path(folder)
    series = scan_dicom_folder(folder)
    if not series:
        raise ConversionError(folder, "no DICOM image files in this folder (empty series)")
    listing = "\n".join("  " + s.summary() for s in series.values())
    if series_uid is None and len(series) > 1:
        raise ConversionError(
            folder, f"{len(series)} DICOM series in one folder; choose one with series_uid / --series-uid:\n"
            + listing
        )
    if series_uid is not None and series_uid not in series:
        raise ConversionError(folder, f"no series {series_uid}; the folder holds:\n{listing}")
    s = series[series_uid or next(iter(series))]
    order = [str(Path(f)) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s.uid)]
    by_file = {str(Path(f)): h for f, h in zip(s.files, s.headers, strict=True)}
    if sorted(order) == sorted(by_file):
        s.files, s.headers = order, [by_file[f] for f in order]
    else:  # GDCM grouped differently: sort along the slice normal ourselves
        normal = _slice_normal(s.headers[0]) if "ImageOrientationPatient" in s.headers[0] else np.zeros(3)
        keyed = sorted(zip(s.files, s.headers, strict=True), key=lambda fh: float(np.dot(
            [float(v) for v in fh[1].get("ImagePositionPatient", [0, 0, 0])], normal)))
        s.files, s.headers = [f for f, _ in keyed], [h for _, h in keyed]
    _check_series(folder, s)
    return s


def _undecodable(folder: Path, series: DicomSeries) -> ConversionError | None:
    """After a failed series read: the first slice whose pixel data SimpleITK cannot decode, as an error."""
    for f, h in zip(series.files, series.headers, strict=True):
        try:
            sitk.ReadImage(f)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            detail = re.sub(r"^.*?ITK ERROR: \w+\(0x[0-9a-f]+\):\s*", "", lines[-1])[:200] if lines else ""
            return ConversionError(
                folder, f"series {series.uid}: pixel data of {Path(f).name} cannot be decoded (transfer syntax "
                f"{_syntax_name(transfer_syntax(h))}; corrupt or unsupported compressed data: {detail})"
            )
    return None


# ----------------------------------------------------------------------------------------------------------
# Size limits, checked from the headers before any pixel data is read


class VolumeTooLargeError(ConversionError):
    """A volume with more voxels than the configured ``max_voxels``."""


def check_voxel_limit(path: str | os.PathLike, shape: Sequence[int] | None, max_voxels: int | None) -> None:
    """Raise VolumeTooLargeError when ``prod(shape)`` exceeds ``max_voxels`` (None: no limit or no shape)."""
    if max_voxels is None or not shape:
        return
    n = int(np.prod([int(v) for v in shape], dtype=np.int64))
    if n > int(max_voxels):
        dims = "x".join(str(int(v)) for v in shape)
        raise VolumeTooLargeError(
            path, f"volume too large: {dims} = {n:,} voxels (about {n * 4 / 2**30:.2f} GiB as float32), over the "
            f"limit max_voxels={int(max_voxels):,} (about {int(max_voxels) * 4 / 2**30:.2f} GiB); raise the limit "
            "(--max-voxels) on a machine with enough memory, or crop / resample the volume"
        )


def itk_header_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """Size (x, y, z[, components]) of an .mha/.nrrd file from its header only; None when unreadable."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None  # the full read reports the problem
    size = tuple(int(v) for v in reader.GetSize())
    components = int(reader.GetNumberOfComponents())
    return size + ((components,) if components > 1 else ())


# ----------------------------------------------------------------------------------------------------------
# A MONAI ImageReader on SimpleITK (MONAI's ITKReader needs the large `itk` package)


class ImageShapeError(ValueError):
    """Raised by `SimpleITKReader.get_data` for images that are not one-component 3D volumes."""


def sitk_affine_ras(image: sitk.Image) -> np.ndarray:
    """4x4 RAS affine of a 3D SimpleITK image (ITK works in LPS)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(np.asarray(image.GetSpacing(), dtype=np.float64))
    affine[:3, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)
    return LPS_TO_RAS @ affine


class SimpleITKReader(ImageReader):
    """MONAI `ImageReader` for .mha/.mhd/.nrrd/.nhdr files and DICOM series folders, via SimpleITK.

    Data come back as (X, Y, Z) arrays (ITK index order) with a RAS ``affine``; DICOM rescale
    slope/intercept is applied by SimpleITK, so CT arrives in HU. For a folder, ``series_uid`` picks
    the series; after `read`, ``self.series`` holds the chosen `DicomSeries`.
    """

    def __init__(self, series_uid: str | None = None, max_voxels: int | None = None):
        super().__init__()
        self.series_uid = series_uid
        self.max_voxels = max_voxels
        self.series: DicomSeries | None = None

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(Path(n).is_dir() or path_suffix(n) in ITK_SUFFIXES for n in names)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> sitk.Image:
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        if len(names) != 1:
            raise ValueError("SimpleITKReader reads one file or one DICOM folder at a time")
        path = Path(names[0])
        if path.is_dir():
            self.series = select_dicom_series(path, self.series_uid)
            first = self.series.headers[0]
            check_voxel_limit(path, (int(first.Columns), int(first.Rows), len(self.series.files)), self.max_voxels)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(self.series.files)
            try:
                return reader.Execute()
            except RuntimeError as exc:
                found = _undecodable(path, self.series)
                if found is None:
                    raise
                raise found from exc
        check_voxel_limit(path, itk_header_shape(path), self.max_voxels)
        return sitk.ReadImage(str(path))

    def get_data(self, img: sitk.Image) -> tuple[np.ndarray, dict]:
        if img.GetNumberOfComponentsPerPixel() != 1:
            components = img.GetNumberOfComponentsPerPixel()
            raise ImageShapeError(f"{components} components per pixel; expected grayscale")
        if img.GetDimension() != 3:
            raise ImageShapeError(f"{img.GetDimension()}D image where a 3D volume is expected")
        data = sitk.GetArrayViewFromImage(img).transpose(2, 1, 0)  # (Z, Y, X) -> (X, Y, Z)
        affine = sitk_affine_ras(img)
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(data.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        }
        return np.array(data), meta  # a copy: the view dies with the SimpleITK image


# ----------------------------------------------------------------------------------------------------------
# Loading a volume


@dataclass
class Volume:
    """A loaded input: ``image`` (1, X, Y, Z) float32 MetaTensor, its RAS ``affine``, where it came from."""

    path: Path
    kind: str
    image: MetaTensor
    affine: np.ndarray
    nifti_header: Any = None
    series: DicomSeries | None = None
    shape: tuple[int, ...] = ()

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


def _read_error(path: Path, exc: BaseException) -> ConversionError:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConversionError(path, f"cannot read image ({type(exc).__name__}: {msg[:300]})")


def load_volume(path: str | os.PathLike, series_uid: str | None = None, max_voxels: int | None = None) -> Volume:
    """Load one 3D volume as a (1, X, Y, Z) float32 MetaTensor in RAS world coordinates.

    Raises ConversionError naming the file for: missing/empty files, unreadable or truncated data,
    2D or 4D images, non-finite values, empty or mixed DICOM series, unsupported DICOM transfer syntaxes,
    and (`VolumeTooLargeError`) volumes over ``max_voxels``, checked from the header before the pixel data
    is read.
    """
    path = Path(path)
    kind = input_kind(path)
    if kind != "dicom" and path.stat().st_size == 0:
        raise ConversionError(path, "empty file (0 bytes)")
    header, nifti_affine = None, None
    reader: ImageReader
    if kind == "nifti":
        try:
            nimg = nib.load(str(path))
            header, nifti_affine = nimg.header, np.asarray(nimg.affine, dtype=np.float64)
        except Exception as exc:  # nibabel raises many types for broken headers
            raise _read_error(path, exc) from exc
        shape = tuple(int(v) for v in nimg.shape)
        check_voxel_limit(path, shape, max_voxels)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) > 3:  # refused from the header: a 4D series is never read into memory
            raise ConversionError(path, _four_d_problem(shape))
        reader = NibabelReader()
    else:
        reader = SimpleITKReader(series_uid=series_uid, max_voxels=max_voxels)
    try:
        # the reader is given at call time: LoadImage then lets its errors through unchanged
        image = _loader()(str(path), reader=reader)
    except ConversionError:
        raise
    except ImageShapeError as exc:
        raise ConversionError(path, str(exc)) from exc
    except Exception as exc:
        raise _read_error(path, exc) from exc
    image = _as_3d(path, image)
    if image.is_floating_point() and not bool(torch.isfinite(image).all()):
        raise ConversionError(path, "contains NaN or Inf values")
    image = image.to(torch.float32)
    image = EnsureChannelFirst(channel_dim="no_channel")(image)
    affine = nifti_affine if nifti_affine is not None else np.asarray(image.meta[MetaKeys.AFFINE], np.float64)
    series = reader.series if isinstance(reader, SimpleITKReader) else None
    return Volume(path=path, kind=kind, image=image, affine=affine, nifti_header=header, series=series)


def _four_d_problem(shape: tuple[int, ...]) -> str:
    return (f"{len(shape)}D image (shape {shape}) where a 3D volume is expected (a time series or several "
            "volumes in one file); extract the 3D volume to convert first, e.g. with fslroi or nibabel")


def _as_3d(path: Path, image: MetaTensor) -> MetaTensor:
    """Drop trailing singleton dimensions beyond 3; refuse 2D and true 4D+ images."""
    shape = tuple(image.shape)
    while image.ndim > 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim < 3:
        raise ConversionError(path, f"2D image (shape {shape}) where a 3D volume is expected")
    if image.ndim > 3:
        raise ConversionError(path, _four_d_problem(shape))
    if min(image.shape) < 1:
        raise ConversionError(path, f"empty image (shape {shape})")
    return image


# ----------------------------------------------------------------------------------------------------------
# Writing


def temp_path_for(output_path: str | os.PathLike) -> Path:
    """A hidden temporary name in the output's folder with the same suffix (so writers pick the format)."""
    out = Path(output_path)
    suffix = path_suffix(out) or ".tmp"
    return out.with_name(f".{path_stem(out)}.partial-{uuid.uuid4().hex[:8]}{suffix}")


_NIFTI_GEOMETRY_FIELDS = (
    "pixdim", "xyzt_units", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
    "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z",
)


def nifti_image_like(array: np.ndarray, volume: Volume, descrip: str) -> nib.Nifti1Image:
    """A NIfTI image of ``array`` on the input's grid, with no patient-identifying header fields.

    NIfTI input: the geometry fields (pixdim, units, qform, sform and their codes) are copied verbatim,
    nothing else. Other inputs: qform and sform are set to the RAS affine with code 1 (scanner).
    """
    if tuple(array.shape) != volume.shape:
        raise ValueError(f"output shape {array.shape} differs from the input's {volume.shape}")
    header = nib.Nifti1Header()
    header.set_data_dtype(array.dtype)
    if volume.nifti_header is not None and isinstance(volume.nifti_header, nib.Nifti1Header):
        src = volume.nifti_header
        for name in _NIFTI_GEOMETRY_FIELDS:
            header[name] = src[name]
        img = nib.Nifti1Image(array, None, header=header)
    else:
        img = nib.Nifti1Image(array, volume.affine, header=header)
        img.set_qform(volume.affine, code=1)
        img.set_sform(volume.affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = descrip.encode("ascii", "replace")[:80]
    return img


def output_error(path: str | os.PathLike, exc: OSError) -> ConversionError:
    """A write failure (full disk, read-only or missing folder...) as a ConversionError naming the output."""
    why = exc.strerror or str(exc) or type(exc).__name__
    return ConversionError(path, f"cannot write output ({type(exc).__name__}: {why}); nothing was written")


def write_nifti_atomic(image: nib.Nifti1Image, output_path: str | os.PathLike) -> Path:
    """Write to a temporary name in the output folder, then `os.replace` it into place.

    Any OSError (full disk, unwritable folder, a file where the folder should be) becomes a ConversionError
    naming the output; the temporary file is removed and an existing output is left as it was.
    """
    out = Path(output_path)
    tmp = temp_path_for(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        nib.save(image, str(tmp))
        os.replace(tmp, out)
    except OSError as exc:
        raise output_error(out, exc) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return out
