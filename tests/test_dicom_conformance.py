"""Every DICOM object the project writes passes an independent validator: dicom3tools' ``dciodvfy`` (by DICOM's
editor) finds no error in it, but errors about attributes its 2022 release does not know yet
(`dicom_net.UNKNOWN_TO_VALIDATOR`), and DCMTK's ``dcmdump`` reads it without a warning.

Kinds: synthetic MR from a scanner-like CT series (with PatientPosition HFS), synthetic CT from a scanner-like MR
series (without one), synthetic MR from the phantoms' CT, and the phantoms' CT itself. A negative control shows the
check fails on an object that lacks a Type 2C attribute. Skipped without the tools, a failure in CI
(CTMRI_REQUIRE_DICOM_TOOLS=1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import write_tiny_checkpoint
from dicom_net import dciodvfy_errors, dcmdump_problems, require_tools, scanner_series

from ctmri_monai.convert import ConversionService, ConvertOptions
from ctmri_monai.phantoms import make_phantoms

KINDS = ("mr_from_ct", "ct_from_mr", "mr_from_phantom_ct", "phantom_ct")


def _write(datasets: list[pydicom.Dataset], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for k, ds in enumerate(datasets):
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path | None]]:
    """Each kind: (folder of the written object's files, folder of its source series or None)."""
    tmp = tmp_path_factory.mktemp("conformance")
    service = ConversionService.from_checkpoint(write_tiny_checkpoint(tmp / "m.pt"), "cpu",
                                                options=ConvertOptions(batch_size=4, device="cpu"))
    make_phantoms(tmp / "phantoms", subjects=1, shape=(32, 32, 12), spacing=(6.0, 6.0, 8.0), seed=0)
    phantom = tmp / "phantoms" / "dicom" / "ct" / "subj000"
    sources = {"mr_from_ct": _write(scanner_series("CT", 4, patient_position="HFS"), tmp / "ct"),
               "ct_from_mr": _write(scanner_series("MR", 4, patient_position=None, seed=1), tmp / "mr"),
               "mr_from_phantom_ct": phantom}
    out: dict[str, tuple[Path, Path | None]] = {"phantom_ct": (phantom, None)}
    for kind, source in sources.items():
        service.convert_series(source).derived.write(tmp / kind)
        out[kind] = (tmp / kind, source)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_dciodvfy_finds_no_error_and_dcmdump_no_warning(written: dict, kind: str) -> None:
    require_tools("dciodvfy", "dcmdump")
    folder, _ = written[kind]
    files = sorted(folder.glob("*.dcm"))
    assert files
    for path in (files[0], files[-1]):
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
