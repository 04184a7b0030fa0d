"""DICOM series selection: group a folder's files by series, order them, and check for one regular 3D grid.

Headers are scanned with pydicom (no pixel data) so that folders holding several series, gaps, tilted or mixed
series and undecodable transfer syntaxes are refused with a message that names the folder and the series.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk

from ctmri_monai.io.errors import InputError
from ctmri_monai.io.preconditions import check_dicom_geometry

__all__ = ["READABLE_TRANSFER_SYNTAXES", "SOFTWARE", "DicomSeries", "SyntheticSeriesError", "scan_dicom_folder",
           "select_dicom_series", "synthetic_origin", "transfer_syntax", "undecodable_slice"]

#: The name this software writes as contributing equipment into every derived series.
SOFTWARE = "ctmri-monai"

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


class SyntheticSeriesError(InputError):
    """A series that is synthetic already (SyntheticData YES) or was made by this software: never converted again,
    so that a router that sends every new series back to the converter cannot loop."""


def synthetic_origin(ds: Any) -> str | None:
    """Why a DICOM header must not be converted again, or None: it says SyntheticData YES, or a
    ContributingEquipmentSequence item (or an older derived series' SoftwareVersions) names this software."""
    if str(ds.get("SyntheticData", "")).upper() == "YES":
        return "already synthetic (SyntheticData YES)"
    for item in ds.get("ContributingEquipmentSequence", None) or []:
        if str(item.get("Manufacturer", "")) == SOFTWARE:
            return f"made by {SOFTWARE} (ContributingEquipmentSequence)"
    image_type = ds.get("ImageType", [])
    image_type = [image_type] if isinstance(image_type, str) else list(image_type)
    if str(ds.get("SoftwareVersions", "")).startswith(SOFTWARE) and "DERIVED" in image_type:
        return f"made by {SOFTWARE} (a derived series with SoftwareVersions {ds.SoftwareVersions})"
    return None


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
        raise InputError(
            folder, f"series {s.uid}: unsupported transfer syntax {_syntax_name(bad[0][1])} in {bad[0][0]}{more}; "
            "readable: uncompressed, deflated, RLE, JPEG, JPEG-LS, JPEG 2000 (decompress the series first, "
            "e.g. with `gdcmconv --raw` or `dcmdjpeg`)"
        )


def _check_series(folder: Path, s: DicomSeries) -> None:
    """Raise InputError for a series that has no single regular 3D grid or cannot be decoded."""
    headers = s.headers
    _check_transfer_syntax(folder, s)
    if any(int(h.get("NumberOfFrames", 1) or 1) > 1 for h in headers):
        raise InputError(folder, f"series {s.uid} is multi-frame; only single-frame series supported")
    if any(int(h.get("SamplesPerPixel", 1)) != 1 for h in headers):
        raise InputError(folder, f"series {s.uid} is not grayscale (SamplesPerPixel != 1)")
    sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(sizes) > 1:
        raise InputError(folder, f"mixed series {s.uid}: slices of different sizes {sorted(sizes)}")
    missing = [Path(f).name for f, h in zip(s.files, headers, strict=True) if "ImagePositionPatient" not in h
               or "ImageOrientationPatient" not in h]
    if missing:
        raise InputError(folder, f"series {s.uid}: no ImagePositionPatient/Orientation in {missing[:3]}")
    iops = np.asarray([[float(v) for v in h.ImageOrientationPatient] for h in headers])
    if np.abs(iops - iops[0]).max() > 1e-4:
        raise InputError(folder, f"mixed series {s.uid}: slices with different orientations")
    check_dicom_geometry(folder, s.uid, headers)
    if len(headers) < 2:
        return
    normal = _slice_normal(headers[0])
    ipp = np.asarray([[float(v) for v in h.ImagePositionPatient] for h in headers])
    pos = ipp @ normal
    steps = np.diff(pos)
    if np.any(np.abs(steps) < 1e-4):
        raise InputError(folder, f"mixed series {s.uid}: several slices at the same position")
    if not (np.all(steps > 0) or np.all(steps < 0)):
        raise InputError(folder, f"series {s.uid}: slices are not ordered along the slice normal")
    span = ipp[-1] - ipp[0]
    if np.linalg.norm(np.cross(span, normal)) > 1e-3 * np.linalg.norm(span) + 0.5:  # mm off the normal
        raise InputError(folder, f"series {s.uid}: slices are not stacked along their normal (gantry "
                                      "tilt or sheared series); resample it to an orthogonal grid first")
    mean = np.abs(steps).mean()
    if np.abs(np.abs(steps) - mean).max() > 0.01 * mean + 1e-3:
        raise InputError(
            folder, f"series {s.uid}: irregular slice spacing "
            f"({np.abs(steps).min():.3g}-{np.abs(steps).max():.3g} mm; missing slices?)"
        )


def select_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> DicomSeries:
    """The series to convert, with files in SimpleITK's (GDCM's) slice order; checked for a regular grid.

    Several series and no ``series_uid``, or an unknown ``series_uid``: InputError listing every
    SeriesInstanceUID with its description and slice count.
    """
    folder = Path(folder)
    series = scan_dicom_folder(folder)
    if not series:
        raise InputError(folder, "no DICOM image files in this folder (empty series)")
    listing = "\n".join("  " + s.summary() for s in series.values())
    if series_uid is None and len(series) > 1:
        raise InputError(
            folder, f"{len(series)} DICOM series in one folder; choose one with series_uid / --series-uid:\n"
            + listing
        )
    if series_uid is not None and series_uid not in series:
        raise InputError(folder, f"no series {series_uid}; the folder holds:\n{listing}")
    s = series[series_uid or next(iter(series))]
    origin = synthetic_origin(s.headers[0])
    if origin is not None:
        raise SyntheticSeriesError(folder, f"series {s.uid} is {origin}; refused, a synthetic series is never "
                                           "converted again")
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


def undecodable_slice(folder: Path, series: DicomSeries) -> InputError | None:
    """After a failed series read: the first slice whose pixel data SimpleITK cannot decode, as an error."""
    for f, h in zip(series.files, series.headers, strict=True):
        try:
            sitk.ReadImage(f)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            detail = re.sub(r"^.*?ITK ERROR: \w+\(0x[0-9a-f]+\):\s*", "", lines[-1])[:200] if lines else ""
            return InputError(
                folder, f"series {series.uid}: pixel data of {Path(f).name} cannot be decoded (transfer syntax "
                f"{_syntax_name(transfer_syntax(h))}; corrupt or unsupported compressed data: {detail})"
            )
    return None
