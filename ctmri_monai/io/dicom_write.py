"""Write a converted volume as a new, derived DICOM series next to its source series (same study).

Per slice, the geometry (position, orientation, pixel spacing, thickness) comes from the source slice the
output slice lies on. New SeriesInstanceUID and SOPInstanceUIDs; ImageType DERIVED\\SECONDARY;
SeriesDescription starting with "SYNTHETIC". Kept from the source: the study identification (StudyInstanceUID,
date, time, ID, accession number, so PACS files the series next to the source), the frame of reference, and
only the patient fields a derived series of the same study needs (PatientName, PatientID, PatientBirthDate,
PatientSex). Nothing else is copied: no names of physicians or operators (ReferringPhysicianName, Type 2, is
written empty), no institution or device, no study description, no private tags.
Synthetic CT: int16 with RescaleIntercept -1024 (HU). Synthetic MRI: uint16 0..4095 with a rescale back to
the network's [-1, 1] scale.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ctmri_monai import __version__
from ctmri_monai.io.dicom_series import DicomSeries

PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
STUDY_KEYWORDS = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber")
#: Type 2 attributes of the modules written: present, but empty (never copied from the source).
EMPTY_TYPE2_KEYWORDS = ("ReferringPhysicianName",)
GEOMETRY_KEYWORDS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                     "SpacingBetweenSlices", "SliceLocation")
MRI_LEVELS = 4095
CT_INTERCEPT = -1024


def _copy(dst: Dataset, src: Dataset, keywords: tuple[str, ...], empty_if_missing: bool = True) -> None:
    for kw in keywords:
        if kw in src:
            setattr(dst, kw, src.data_element(kw).value)
        elif empty_if_missing:
            setattr(dst, kw, "")


def _series_description(source: str, target: str, model_info: Mapping[str, Any] | None) -> str:
    name = Path(str((model_info or {}).get("file") or "")).stem
    text = f"SYNTHETIC {target.upper()} from {source.upper()}" + (f" ({name})" if name else "")
    return text[:64]


def _pixels(slice2d: np.ndarray, target: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Stored values and the pixel-module attributes for one (rows, columns) slice."""
    if target == "ct":
        stored = np.clip(np.asarray(slice2d, np.int32) - CT_INTERCEPT, -32768, 32767).astype(np.int16)
        attrs = {"PixelRepresentation": 1, "RescaleIntercept": CT_INTERCEPT, "RescaleSlope": 1,
                 "RescaleType": "HU", "WindowCenter": 40, "WindowWidth": 400}
    else:
        unit = np.clip(np.asarray(slice2d, np.float32), -1.0, 1.0)
        stored = np.rint((unit + 1.0) * (MRI_LEVELS / 2.0)).astype(np.uint16)
        attrs = {"PixelRepresentation": 0, "RescaleIntercept": -1, "RescaleSlope": f"{2.0 / MRI_LEVELS:.10g}",
                 "RescaleType": "US", "WindowCenter": 0, "WindowWidth": 2}
    return np.ascontiguousarray(stored), attrs


def _slice_dataset(
    src: Dataset, pixels: np.ndarray, attrs: dict[str, Any], target: str, series_uid: str, number: int,
    description: str, derivation: str, now: dt.datetime,
) -> Dataset:
    sop_class = CTImageStorage if target == "ct" else MRImageStorage
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    if "SpecificCharacterSet" in src:
        ds.SpecificCharacterSet = src.SpecificCharacterSet
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    date, time_ = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time_
    _copy(ds, src, STUDY_KEYWORDS)
    for kw in EMPTY_TYPE2_KEYWORDS:
        setattr(ds, kw, "")
    _copy(ds, src, PATIENT_KEYWORDS)
    ds.Modality = "CT" if target == "ct" else "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(src.get("SeriesNumber", 0) or 0) + 1000
    ds.SeriesDescription = description
    ds.SeriesDate, ds.SeriesTime = date, time_
    ds.ContentDate, ds.ContentTime = date, time_
    ds.Manufacturer = ""
    ds.SoftwareVersions = f"ctmri-monai {__version__}"
    ds.FrameOfReferenceUID = src.get("FrameOfReferenceUID", None) or generate_uid()
    ds.PositionReferenceIndicator = src.get("PositionReferenceIndicator", "")
    ds.InstanceNumber = number
    _copy(ds, src, GEOMETRY_KEYWORDS, empty_if_missing=False)
    ds.DerivationDescription = derivation
    ref = Dataset()
    ref.ReferencedSOPClassUID = src.SOPClassUID
    ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
    ds.SourceImageSequence = DicomSequence([ref])
    ds.BurnedInAnnotation = "NO"
    if target == "ct":
        ds.KVP = ""
        ds.AcquisitionNumber = ""
    else:
        ds.ScanningSequence = "RM"  # research mode: no acquisition
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    for kw, value in attrs.items():
        setattr(ds, kw, value)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()
    return ds


def write_dicom_series(
    volume: np.ndarray,
    series: DicomSeries | None,
    output_dir: str | os.PathLike,
    source: str,
    target: str,
    model_info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``volume`` ((X, Y, Z) on the source series' grid: X = columns, Y = rows, Z = the series' slice
    order) as a new series in ``output_dir``, written to a temporary folder and renamed when complete.

    Returns {"folder", "series_uid", "files"}.
    """
    if series is None or not series.files:
        raise ValueError("DICOM output needs the source DICOM series")
    volume = np.asarray(volume)
    if volume.ndim != 3 or volume.shape[2] != len(series.files):
        raise ValueError(f"volume shape {volume.shape} does not fit the {len(series.files)}-slice series")
    out_dir = Path(output_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    series_uid = generate_uid()
    description = _series_description(source, target, model_info)
    info = model_info or {}
    derivation = (f"Synthetic {target.upper()} made slice-wise by a CycleGAN generator from {source.upper()}"
                  f" series {series.uid}; model {Path(str(info.get('file') or 'unknown')).name}"
                  f" sha256 {str(info.get('sha256') or 'unknown')[:12]}. Not an acquisition.")[:1024]
    now = dt.datetime.now()
    files = []
    try:
        for k, (src_file, src) in enumerate(zip(series.files, series.headers, strict=True)):  # headers as scanned
            if (int(src.Rows), int(src.Columns)) != (volume.shape[1], volume.shape[0]):
                raise ValueError(f"{src_file}: slice size {src.Rows}x{src.Columns} differs from the volume's")
            pixels, attrs = _pixels(volume[:, :, k].T, target)
            number = int(src.get("InstanceNumber", k + 1) or k + 1)
            ds = _slice_dataset(src, pixels, attrs, target, series_uid, number, description, derivation, now)
            name = f"{k + 1:04d}.dcm"
            ds.save_as(tmp / name, enforce_file_format=True)
            files.append(str(out_dir / name))
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {"folder": out_dir, "series_uid": series_uid, "files": files}
