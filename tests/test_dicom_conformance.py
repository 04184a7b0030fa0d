"""Every DICOM object the project writes passes an independent validator: dicom3tools' ``dciodvfy`` (by DICOM's
editor) finds no error in it, but errors about attributes its 2022 release does not know yet
(`dicom_net.UNKNOWN_TO_VALIDATOR`), and DCMTK's ``dcmdump`` reads it without a warning.

Kinds: synthetic MR from a scanner-like CT series (with PatientPosition HFS), synthetic CT from a scanner-like MR
series (without one), synthetic MR from the phantoms' CT, and the phantoms' CT itself (`dicom_net.write_object_kinds`;
every file of each). Negative controls: the check fails on an object that lacks a Type 2C attribute, on an unknown
attribute that is not on the list, and on a file cut short. Skipped without the tools, a failure in CI
(CTMRI_REQUIRE_DICOM_TOOLS=1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_net import OBJECT_KINDS, dciodvfy_errors, dcmdump_problems, require_tools, write_object_kinds


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path | None]]:
    """Each kind: (folder of the written object's files, folder of its source series or None)."""
    return write_object_kinds(tmp_path_factory.mktemp("conformance"))


@pytest.mark.parametrize("kind", OBJECT_KINDS)
def test_dciodvfy_finds_no_error_and_dcmdump_no_warning(written: dict, kind: str) -> None:
    require_tools("dciodvfy", "dcmdump")
    folder, _ = written[kind]
    files = sorted(folder.glob("*.dcm"))
    assert files
    for path in files:
        assert dciodvfy_errors(path) == [], (kind, path.name)
        assert dcmdump_problems(path) == [], (kind, path.name)


@pytest.mark.parametrize("kind", ["mr_from_ct", "ct_from_mr", "mr_from_phantom_ct"])
def test_position_and_geometry_are_the_sources_and_nothing_is_invented(written: dict, kind: str) -> None:
    folder, source = written[kind]
    src = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, sorted(source.glob("*.dcm")))}
    for ds in map(pydicom.dcmread, sorted(folder.glob("*.dcm"))):
        ref = src[str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        assert ds.PatientPosition == ref.get("PatientPosition", "")  # HFS where the source says so, else empty
        assert ds.FrameOfReferenceUID == ref.FrameOfReferenceUID
        for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
            assert ds.data_element(kw).value == ref.data_element(kw).value, kw
        assert ds.get("BodyPartExamined") == ref.get("BodyPartExamined")
        assert ds.Laterality == ref.Laterality if "Laterality" in ref else "Laterality" not in ds  # HEAD: unpaired
        assert ds.SyntheticData == "YES" and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        acquisition = ("KVP",) if ds.Modality == "CT" else ("RepetitionTime", "EchoTime", "EchoTrainLength")
        assert all(ds.data_element(kw).value in ("", None) for kw in acquisition)  # present, empty: not measured


@pytest.mark.parametrize("kind", ["mr_from_ct", "mr_from_phantom_ct"])
def test_synthetic_mr_has_integer_values_no_modality_lut_and_a_window_on_the_tissue(written: dict, kind: str) -> None:
    folder, _ = written[kind]
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    assert not any(kw in ds for ds in datasets for kw in ("RescaleSlope", "RescaleIntercept", "RescaleType"))
    assert {ds.ImageType[2] for ds in datasets} == {"OTHER"} and {ds.PixelRepresentation for ds in datasets} == {0}
    stored = np.stack([ds.pixel_array for ds in datasets])
    assert stored.dtype == np.uint16 and stored.max() <= 4095
    tissue = stored[stored > stored.min()]
    center, width = float(datasets[0].WindowCenter), float(datasets[0].WindowWidth)
    inside = np.mean((tissue >= center - width / 2) & (tissue <= center + width / 2))
    assert inside >= 0.97 and 0 <= center - width / 2 and center + width / 2 <= 4096, (center, width, inside)


def test_synthetic_ct_is_in_hu_through_the_rescale(written: dict) -> None:
    folder, _ = written["ct_from_mr"]
    for ds in map(pydicom.dcmread, sorted(folder.glob("*.dcm"))):
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept), ds.RescaleType) == (1.0, -1024.0, "HU")
        assert ds.ImageType[2] == "AXIAL"
        hu = ds.pixel_array.astype(np.int32) - 1024
        assert -1024 <= hu.min() and hu.max() <= 3071


def test_negative_control_the_check_fails_on_a_missing_type_2c_attribute(written: dict, tmp_path: Path) -> None:
    require_tools("dciodvfy")
    folder, _ = written["mr_from_ct"]
    ds = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0])
    del ds.PatientPosition
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1  # a Modality LUT the MR IOD does not hold: a warning, no error
    ds.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    errors = dciodvfy_errors(tmp_path / "broken.dcm")
    assert len(errors) == 1 and "PatientPosition" in errors[0], errors


def test_negative_control_only_the_listed_unknown_tags_are_excused(written: dict, tmp_path: Path) -> None:
    require_tools("dciodvfy")
    ds = pydicom.dcmread(sorted(written["ct_from_mr"][0].glob("*.dcm"))[0])
    ds.add_new(0x00109999, "CS", "X")  # an even-group tag no edition defines: not excused like SyntheticData
    ds.save_as(tmp_path / "unknown.dcm", enforce_file_format=True)
    errors = dciodvfy_errors(tmp_path / "unknown.dcm")
    assert len(errors) == 1 and "(0x0010,0x9999)" in errors[0], errors


def test_negative_control_an_unreadable_file_fails_both_tools(written: dict, tmp_path: Path) -> None:
    require_tools("dciodvfy", "dcmdump")
    source = sorted(written["mr_from_ct"][0].glob("*.dcm"))[0]
    (tmp_path / "cut.dcm").write_bytes(source.read_bytes()[:600])  # cut inside the header
    assert dciodvfy_errors(tmp_path / "cut.dcm")
    assert dcmdump_problems(tmp_path / "cut.dcm")
