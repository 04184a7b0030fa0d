"""No identity leaks: NIfTI outputs carry nothing of the patient; synthetic DICOM series keep only the patient and
study fields a derived series of the same study needs, and are marked synthetic."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from conftest import make_spec
from test_convert import Identity, head_hu, write_ct_series

from ctmri_monai.convert import BatchOptions, ConvertOptions, ModelSource, run_batch

S = 32
INFO = {"file": "m.pt", "sha256": "0" * 64, "model_spec": {"image_size": S}}
PATIENT = {"PatientName": "Leakcheck^Zebulon", "PatientID": "PID-7Q3X9", "PatientBirthDate": "19411107",
           "PatientSex": "O"}
STUDY = {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.777", "StudyDate": "20230405", "StudyID": "STU-88K",
         "AccessionNumber": "ACC-5521Z"}
# source-only fields that identify the patient, the staff or the site: none may reach any output
SOURCE_ONLY = {"InstitutionName": "St Quirinus Hospital", "InstitutionAddress": "12 Marrowbone Lane",
               "ReferringPhysicianName": "Refdoc^Hortensia", "OperatorsName": "Tech^Barnaby",
               "PerformingPhysicianName": "Perf^Ottoline", "StationName": "CTSCAN-WEST-4",
               "DeviceSerialNumber": "SN-990413", "OtherPatientNames": "Oldname^Zebulon",
               "OtherPatientIDs": "OTHER-PID-31", "PatientAddress": "7 Quince Court", "PatientAge": "081Y",
               "PatientWeight": "73.5", "PatientComments": "allergic to iodine, see Dr Refdoc",
               "StudyDescription": "HEAD Leakcheck follow-up", "RequestingPhysician": "Req^Anselm"}
PRIVATE_VALUE = "private Leakcheck note"
# what a written slice may hold (file meta aside): the modules of a derived CT / MR image, nothing more
ALLOWED = {
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "SOPInstanceUID", "InstanceCreationDate",
    "InstanceCreationTime", *STUDY, "StudyTime", "ReferringPhysicianName", *PATIENT, "Modality",
    "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime", "ContentDate",
    "ContentTime", "Manufacturer", "SoftwareVersions", "FrameOfReferenceUID", "PositionReferenceIndicator",
    "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "SliceLocation", "DerivationDescription", "SourceImageSequence", "BurnedInAnnotation",
    "KVP", "AcquisitionNumber", "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType",
    "RepetitionTime", "EchoTime", "EchoTrainLength", "PatientPosition", "Laterality", "BodyPartExamined",
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "RescaleIntercept", "RescaleSlope",
    "RescaleType", "WindowCenter", "WindowWidth", "PixelData",
    "SyntheticData", "ContributingEquipmentSequence",  # the synthetic labels (this software, its version, model hash)
}


def _identified_series(folder: Path) -> str:
    uid = write_ct_series(folder, head_hu((24, 20, 4)), study_uid=STUDY["StudyInstanceUID"])
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        for kw, value in {**PATIENT, **STUDY, **SOURCE_ONLY}.items():
            setattr(ds, kw, value)
        ds.private_block(0x0011, "LEAKCHECK private", create=True).add_new(0x01, "LO", PRIVATE_VALUE)
        ds.save_as(f, enforce_file_format=True)
    return uid


def _identifying_strings() -> list[bytes]:
    values = [*PATIENT.values(), *SOURCE_ONLY.values(), STUDY["AccessionNumber"], STUDY["StudyID"], PRIVATE_VALUE]
    parts = [p for v in (PATIENT["PatientName"], SOURCE_ONLY["ReferringPhysicianName"]) for p in v.split("^")]
    return [v.encode() for v in [*values, *parts] if len(v) >= 4]


def test_nifti_and_dicom_outputs_from_dicom_input_leak_no_identity(tmp_path: Path) -> None:
    source_uid = _identified_series(tmp_path / "data" / "series")
    out = tmp_path / "out"
    assert run_batch([tmp_path / "data"], out, "ct2mri",
                     ModelSource(generator=Identity(), spec=make_spec(S), model_info=INFO),
                     BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False, dicom=True)) == 0

    nifti = out / "series_ct2mri.nii.gz"
    raw = gzip.decompress(nifti.read_bytes())  # header, extensions and voxels
    leaked = [s for s in _identifying_strings() if s in raw]
    assert not leaked, leaked
    img = nib.load(nifti)
    assert len(img.header.extensions) == 0
    assert img.header["descrip"].item().startswith(b"SYNTHETIC ct2mri")

    files = sorted((out / "series_ct2mri_dicom").iterdir())
    source_sops = {pydicom.dcmread(f).SOPInstanceUID for f in (tmp_path / "data" / "series").iterdir()}
    assert len(files) == 4
    for f in files:
        blob = f.read_bytes()
        leaked = [s for s in _identifying_strings() if s in blob and s.decode() not in (
            *PATIENT.values(), *PATIENT["PatientName"].split("^"), STUDY["AccessionNumber"], STUDY["StudyID"])]
        assert not leaked, (f.name, leaked)
        ds = pydicom.dcmread(f)
        keywords = {elem.keyword for elem in ds}
        assert keywords <= ALLOWED, keywords - ALLOWED
        assert not any(elem.tag.is_private for elem in ds)
        assert {kw: str(ds.data_element(kw).value) for kw in PATIENT} == PATIENT
        assert {kw: str(ds.data_element(kw).value) for kw in STUDY} == STUDY
        assert ds.ReferringPhysicianName == ""  # Type 2: present, empty
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and ds.SeriesDescription.startswith("SYNTHETIC")
        assert "Not an acquisition" in ds.DerivationDescription
        assert ds.SeriesInstanceUID not in (source_uid, "") and ds.SOPInstanceUID not in source_sops
        (item,) = ds.SourceImageSequence
        assert {e.keyword for e in item} == {"ReferencedSOPClassUID", "ReferencedSOPInstanceUID"}
        assert item.ReferencedSOPInstanceUID in source_sops


def test_nifti_input_extensions_and_text_fields_are_not_copied(tmp_path: Path) -> None:
    """The other NIfTI text fields (descrip, aux_file, db_name) are covered by
    tests/test_convert.py::test_nifti_header_is_marked_and_carries_no_identifiers."""
    img = nib.Nifti1Image(head_hu((24, 20, 4)), np.diag([1.0, 1.0, 2.0, 1.0]))
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"Leakcheck^Zebulon PID-7Q3X9"))
    img.header["intent_name"] = b"PID-7Q3X9"
    nib.save(img, tmp_path / "in.nii.gz")
    out = tmp_path / "out"
    assert run_batch([tmp_path / "in.nii.gz"], out, "ct2mri",
                     ModelSource(generator=Identity(), spec=make_spec(S), model_info=INFO),
                     BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False)) == 0
    raw = gzip.decompress((out / "in_ct2mri.nii.gz").read_bytes())
    assert b"Leakcheck" not in raw and b"PID-7Q3X9" not in raw
    assert len(nib.load(out / "in_ct2mri.nii.gz").header.extensions) == 0
