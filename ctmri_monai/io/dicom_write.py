"""The one DICOM writer: a series of 16-bit slices from a template dataset plus per-slice elements.

`write_slices` is the low-level writer every DICOM output goes through (converted volumes here, the phantoms'
CT series in `ctmri_monai.phantoms.write`): the template's elements are encoded once and reused for every slice,
each file is an ordinary Part 10 file (preamble, file meta, explicit VR little endian), and the series is written
into a temporary folder that replaces ``folder`` when complete (`ctmri_monai.io.atomic.atomic_directory`).

`write_dicom_series` writes a converted volume as a new, derived series next to its source series (same study).
Per slice, the geometry (position, orientation, pixel spacing, thickness) comes from the source slice the output
slice lies on. New SeriesInstanceUID and SOPInstanceUIDs; ImageType DERIVED\\SECONDARY\\AXIAL (CT) or
DERIVED\\SECONDARY\\OTHER (MR); SeriesDescription
starting with "SYNTHETIC"; SyntheticData (0008,001C) YES and a ContributingEquipmentSequence naming this software,
its version and the model file's SHA-256 (so that a PACS, a viewer and this software itself know the series is
not an acquisition: `ctmri_monai.io.dicom_series.synthetic_origin` refuses to convert it again).
Kept from the source: the study identification (StudyInstanceUID, date, time, ID,
accession number, so PACS files the series next to the source), the frame of reference, what describes the
patient's position (PatientPosition, Laterality: copied, else present and empty), and only the patient fields a
derived series of the same study needs (PatientName, PatientID, PatientBirthDate, PatientSex). Nothing else is
copied: no names of physicians or operators (ReferringPhysicianName, Type 2, is written empty), no institution or
device, no study description, no private tags. Every Type 1 and Type 2 attribute of the CT / MR Image IOD is
written, and each Type 1C / 2C one whose condition holds; an acquisition attribute nobody measured (KVP,
EchoTime, RepetitionTime, ...) is present and empty (Type 2 / 2C), never invented.
Synthetic CT: int16 stored HU + 1024, RescaleIntercept -1024, RescaleSlope 1, RescaleType HU (the CT IOD's
Modality LUT). Synthetic MR: uint16 0..4095 without a Modality LUT (no Rescale attributes: the MR Image IOD holds
none), stored = round((x + 1) * 4095 / 2) of the network's [-1, 1] output, with a WindowCenter / WindowWidth
that spans the head's 1st to 99th percentile.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import correct_ambiguous_vr, write_dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ctmri_monai import __version__
from ctmri_monai.io.atomic import atomic_directory
from ctmri_monai.io.dicom_series import SOFTWARE, DicomSeries

__all__ = ["DerivedSeries", "derive_series", "write_dicom_series", "write_slices"]

PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
STUDY_KEYWORDS = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber")
#: Type 2 attributes of the modules written: present, but empty (never copied from the source).
EMPTY_TYPE2_KEYWORDS = ("ReferringPhysicianName",)
GEOMETRY_KEYWORDS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SpacingBetweenSlices",
                     "SliceLocation")
#: Per-slice Type 2 geometry: copied, else present and empty.
GEOMETRY_TYPE2_KEYWORDS = ("SliceThickness",)
MRI_LEVELS = 4095
CT_INTERCEPT = -1024


# ------------------------------------------------------------------------------------------ low-level writer
def _encoded_once(template: Dataset) -> Dataset:
    """``template`` encoded (explicit VR little endian) and read back as raw elements: pydicom writes raw
    elements of a dataset whose original encoding matches as they are, without encoding them again."""
    correct_ambiguous_vr(template, True)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, template)
    return read_dataset(DicomBytesIO(fp.getvalue()), is_implicit_VR=False, is_little_endian=True)


def write_slices(folder: str | os.PathLike, template: Dataset, per_slice: Sequence[Dataset], pixels: np.ndarray,
                 names: Sequence[str]) -> list[Path]:
    """Write one DICOM file per slice into ``folder`` (replaced atomically when all are written); returns them.

    File ``names[k]`` holds the elements of ``template`` (needs SOPClassUID), then those of ``per_slice[k]``
    (SOPInstanceUID, InstanceNumber, geometry, ...; they override the template's), the image pixel module of
    ``pixels`` ((slices, rows, columns), int16 or uint16: Rows, Columns, 16 bits, PixelRepresentation, one
    MONOCHROME2 sample) and ``pixels[k]`` as PixelData.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.dtype not in (np.int16, np.uint16):
        raise ValueError(f"pixels must be (slices, rows, columns) int16 or uint16, got {pixels.dtype} "
                         f"{pixels.shape}")
    if not len(per_slice) == len(names) == pixels.shape[0]:
        raise ValueError(f"{pixels.shape[0]} slices, {len(per_slice)} per-slice datasets and {len(names)} names")
    with atomic_directory(folder) as tmp:
        for name, ds in zip(names, _slice_datasets(template, per_slice, pixels), strict=True):
            ds.save_as(tmp / name, enforce_file_format=True)
    return [Path(folder) / name for name in names]


def _slice_datasets(template: Dataset, per_slice: Sequence[Dataset], pixels: np.ndarray) -> Iterator[Dataset]:
    """The datasets `write_slices` writes, one at a time (the template encoded once, see `write_slices`)."""
    if "SOPClassUID" not in template:
        raise ValueError("the template needs a SOPClassUID")
    head = copy.deepcopy(template)  # the caller's template stays as it was
    head.SamplesPerPixel = 1
    head.PhotometricInterpretation = "MONOCHROME2"
    head.Rows, head.Columns = int(pixels.shape[1]), int(pixels.shape[2])
    head.BitsAllocated, head.BitsStored, head.HighBit = 16, 16, 15
    head.PixelRepresentation = int(pixels.dtype == np.int16)
    static = _encoded_once(head)
    encoded, charset = dict(static.items()), static.original_character_set
    little = pixels.dtype.newbyteorder("<")
    for own, plane in zip(per_slice, pixels, strict=True):
        ds = Dataset(dict(encoded))
        ds.set_original_encoding(False, True, charset)
        ds.preamble = b"\x00" * 128
        ds.file_meta = FileMetaDataset()  # complete, so the dataset can travel as it is (C-STORE, STOW-RS)
        ds.file_meta.MediaStorageSOPClassUID = template.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = own.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        validate_file_meta(ds.file_meta, enforce_standard=True)  # the version and implementation elements
        ds.update(own)
        ds.PixelData = plane.astype(little, copy=False).tobytes()
        ds["PixelData"].VR = "OW"
        yield ds


# ----------------------------------------------------------------------------------- converted-volume series
def _copy(dst: Dataset, src: Dataset, keywords: tuple[str, ...], empty_if_missing: bool = True) -> None:
    for kw in keywords:
        if kw in src:
            setattr(dst, kw, src.data_element(kw).value)
        elif empty_if_missing:
            setattr(dst, kw, "")


def _copy_position(dst: Dataset, src: Dataset) -> None:
    """What the source says of the patient's position and the body part (General Series): PatientPosition (Type
    2C: copied, else empty), BodyPartExamined (Type 3: copied when present) and Laterality (Type 2C, needed for a
    paired body part: copied; else empty, i.e. unknown, when the source names no body part either)."""
    _copy(dst, src, ("PatientPosition",))
    _copy(dst, src, ("BodyPartExamined",), empty_if_missing=False)
    _copy(dst, src, ("Laterality",), empty_if_missing="BodyPartExamined" not in src)


def _series_description(source: str, target: str, model_info: Mapping[str, Any] | None) -> str:
    name = Path(str((model_info or {}).get("file") or "")).stem
    text = f"SYNTHETIC {target.upper()} from {source.upper()}" + (f" ({name})" if name else "")
    return text[:64]


def _tissue_window(stored: np.ndarray) -> tuple[int, int]:
    """WindowCenter and WindowWidth over the 1st to 99th percentile of the voxels above the volume's minimum
    (the head; the masked background is the minimum), or the whole stored range if nothing lies above it."""
    tissue = stored[stored > stored.min()]
    lo, hi = (np.percentile(tissue, [1, 99]) if tissue.size else (0, MRI_LEVELS))
    width = max(int(round(hi - lo)), 1) + 1
    return int(round((lo + hi) / 2)), width


def _pixels(volume: np.ndarray, target: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Stored values ((slices, rows, columns): slice ``k`` is ``volume[:, :, k].T``) and the pixel value
    attributes: CT in HU through the Modality LUT (Rescale), MR as plain integers (no Rescale) with a window."""
    planes = np.transpose(volume, (2, 1, 0))
    if target == "ct":
        stored = np.clip(np.asarray(planes, np.int32) - CT_INTERCEPT, -32768, 32767).astype(np.int16)
        attrs = {"RescaleIntercept": CT_INTERCEPT, "RescaleSlope": 1, "RescaleType": "HU", "WindowCenter": 40,
                 "WindowWidth": 400}
    else:
        unit = np.clip(np.asarray(planes, np.float32), -1.0, 1.0)
        stored = np.rint((unit + 1.0) * (MRI_LEVELS / 2.0)).astype(np.uint16)
        center, width = _tissue_window(stored)
        attrs = {"WindowCenter": center, "WindowWidth": width}
    return np.ascontiguousarray(stored), attrs


def _contribution(model_info: Mapping[str, Any], target: str, now: dt.datetime) -> Dataset:
    """One ContributingEquipmentSequence item: this software (name, version) as modifying equipment, the model
    file as the model name, its SHA-256 in the description."""
    item = Dataset()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "109103", "DCM", "Modifying Equipment"
    item.PurposeOfReferenceCodeSequence = DicomSequence([code])
    item.Manufacturer = SOFTWARE
    item.ManufacturerModelName = Path(str(model_info.get("file") or "unknown")).name[:64]
    item.SoftwareVersions = f"{SOFTWARE} {__version__}"
    item.ContributionDateTime = now.strftime("%Y%m%d%H%M%S")
    item.ContributionDescription = (f"synthetic {target.upper()} by a CycleGAN generator; model sha256 "
                                    f"{model_info.get('sha256') or 'unknown'}")[:1024]
    return item


def _series_template(src: Dataset, attrs: dict[str, Any], target: str, series_uid: str, description: str,
                     derivation: str, now: dt.datetime, equipment: Mapping[str, Any]) -> Dataset:
    """The elements every slice of the derived series shares, from the first source header."""
    ds = Dataset()
    if "SpecificCharacterSet" in src:
        ds.SpecificCharacterSet = src.SpecificCharacterSet
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if target == "ct" else "OTHER"]  # CT: a cross-section
    ds.SOPClassUID = CTImageStorage if target == "ct" else MRImageStorage
    date, time_ = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time_
    _copy(ds, src, STUDY_KEYWORDS)
    for kw in EMPTY_TYPE2_KEYWORDS:
        setattr(ds, kw, "")
    _copy(ds, src, PATIENT_KEYWORDS)
    ds.Modality = "CT" if target == "ct" else "MR"
    _copy_position(ds, src)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(src.get("SeriesNumber", 0) or 0) + 1000
    ds.SeriesDescription = description
    ds.SeriesDate, ds.SeriesTime = date, time_
    ds.ContentDate, ds.ContentTime = date, time_
    ds.Manufacturer = ""
    ds.SoftwareVersions = f"{SOFTWARE} {__version__}"
    ds.FrameOfReferenceUID = src.get("FrameOfReferenceUID", None) or generate_uid()
    ds.PositionReferenceIndicator = src.get("PositionReferenceIndicator", "")
    ds.DerivationDescription = derivation
    ds.BurnedInAnnotation = "NO"
    ds.SyntheticData = "YES"
    ds.ContributingEquipmentSequence = DicomSequence([_contribution(equipment, target, now)])
    if target == "ct":
        ds.KVP = ""
        ds.AcquisitionNumber = ""
    else:
        ds.ScanningSequence = "RM"  # research mode: no acquisition
        ds.SequenceVariant = "NONE"
        for kw in ("ScanOptions", "MRAcquisitionType", "RepetitionTime", "EchoTime", "EchoTrainLength"):
            setattr(ds, kw, "")  # Type 2 / 2C (RepetitionTime: unless echo-planar): nothing was acquired
    for kw, value in attrs.items():
        setattr(ds, kw, value)
    return ds


def _slice_elements(src: Dataset, number: int) -> Dataset:
    """A new SOPInstanceUID, the instance number, the source slice's geometry and a reference to it."""
    ds = Dataset()
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = number
    _copy(ds, src, GEOMETRY_KEYWORDS, empty_if_missing=False)
    _copy(ds, src, GEOMETRY_TYPE2_KEYWORDS)
    ref = Dataset()
    ref.ReferencedSOPClassUID = src.SOPClassUID
    ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
    ds.SourceImageSequence = DicomSequence([ref])
    return ds


@dataclass
class DerivedSeries:
    """A derived series in memory: the shared ``template``, the ``per_slice`` elements, the stored ``pixels``
    (slices, rows, columns) and the file ``names``; `datasets` gives the full datasets, `write` the files."""

    series_uid: str
    template: Dataset
    per_slice: list[Dataset]
    pixels: np.ndarray
    names: list[str]

    def datasets(self) -> Iterator[Dataset]:
        """Each slice's full dataset (with file meta), one at a time, exactly as `write` would write it."""
        return _slice_datasets(self.template, self.per_slice, self.pixels)

    def write(self, folder: str | os.PathLike) -> list[Path]:
        """Write the series into ``folder`` (replaced atomically when complete)."""
        return write_slices(folder, self.template, self.per_slice, self.pixels, self.names)


def derive_series(volume: np.ndarray, series: DicomSeries | None, source: str, target: str,
                  model_info: Mapping[str, Any] | None = None) -> DerivedSeries:
    """The new series of ``volume`` ((X, Y, Z) on the source series' grid: X = columns, Y = rows, Z = the series'
    slice order), in memory (see the module docstring for what it holds)."""
    if series is None or not series.files:
        raise ValueError("DICOM output needs the source DICOM series")
    volume = np.asarray(volume)
    if volume.ndim != 3 or volume.shape[2] != len(series.files):
        raise ValueError(f"volume shape {volume.shape} does not fit the {len(series.files)}-slice series")
    headers = list(series.headers)  # as scanned, in the series' slice order
    for src_file, src in zip(series.files, headers, strict=True):
        if (int(src.Rows), int(src.Columns)) != (volume.shape[1], volume.shape[0]):
            raise ValueError(f"{src_file}: slice size {src.Rows}x{src.Columns} differs from the volume's")
    series_uid = generate_uid()
    info = model_info or {}
    derivation = (f"Synthetic {target.upper()} made slice-wise by a CycleGAN generator from {source.upper()}"
                  f" series {series.uid}; model {Path(str(info.get('file') or 'unknown')).name}"
                  f" sha256 {str(info.get('sha256') or 'unknown')[:12]}. Not an acquisition.")[:1024]
    pixels, attrs = _pixels(volume, target)
    template = _series_template(headers[0], attrs, target, series_uid, _series_description(source, target, info),
                                derivation, dt.datetime.now(), info)
    per_slice = [_slice_elements(src, int(src.get("InstanceNumber", k + 1) or k + 1))
                 for k, src in enumerate(headers)]
    names = [f"{k + 1:04d}.dcm" for k in range(len(headers))]
    return DerivedSeries(series_uid, template, per_slice, pixels, names)


def write_dicom_series(
    volume: np.ndarray,
    series: DicomSeries | None,
    output_dir: str | os.PathLike,
    source: str,
    target: str,
    model_info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``volume`` (see `derive_series`) as a new series in ``output_dir``, written to a temporary folder and
    renamed when complete. Returns {"folder", "series_uid", "files"}."""
    derived = derive_series(volume, series, source, target, model_info)
    files = derived.write(output_dir)
    return {"folder": Path(output_dir), "series_uid": derived.series_uid, "files": [str(f) for f in files]}
