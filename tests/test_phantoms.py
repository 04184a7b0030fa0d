"""Tests for the synthetic CT / MRI head phantoms (tiny shapes, a few seconds in all)."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import fail_dicom_write_at
from PIL import Image
from scipy import ndimage

from ctmri_monai.phantoms import (
    LABELS,
    MRI_PNG_PERCENTILES,
    ct_to_png,
    make_label_map,
    make_phantoms,
    make_subject,
    mri_to_png,
    n_test_subjects,
    phantom_affine,
    radiological_slice,
)
from ctmri_monai.transforms import mri_range

SHAPE = (48, 48, 16)
SPACING = (2.0, 2.0, 3.0)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("phantoms")
    return make_phantoms(out, subjects=3, seed=0, shape=SHAPE, spacing=SPACING)


def _names(folder: str | Path) -> set[str]:
    return {p.name for p in Path(folder).glob("*.png")}


def test_layout_and_counts(phantoms):
    out = Path(phantoms["output_dir"])
    assert phantoms["train_subjects"] == ["subj000", "subj001"]
    assert phantoms["test_subjects"] == ["subj002"]
    for kind in ("ct", "mri", "labels"):
        assert sorted(p.name for p in (out / "volumes" / kind).iterdir()) == [
            f"subj00{i}.nii.gz" for i in range(3)
        ]
    assert phantoms["ct_volumes"] == [str(out / "volumes" / "ct" / f"subj00{i}.nii.gz") for i in range(3)]
    for i in range(3):
        assert len(list((out / "dicom" / "ct" / f"subj00{i}").glob("*.dcm"))) == SHAPE[2]
    assert phantoms["dicom_files"] == 3 * SHAPE[2]
    assert Path(phantoms["manifest"]).is_file()

    train_a, train_b = _names(out / "trainA"), _names(out / "trainB")
    test_a, test_b = _names(out / "testA"), _names(out / "testB")
    assert train_a == train_b and test_a == test_b  # CT/MRI pairs share the name
    assert train_a and test_a
    assert {n[:7] for n in train_a} == {"subj000", "subj001"} and {n[:7] for n in test_a} == {"subj002"}
    assert all(re.fullmatch(r"subj\d{3}_z\d{3}\.png", n) for n in train_a | test_a)
    for d, names in (("trainA", train_a), ("trainB", train_b), ("testA", test_a), ("testB", test_b)):
        assert phantoms["png_counts"][d] == len(names)
    # Nearly empty slices (above the vertex) are skipped, the brain slices are kept.
    assert len(test_a) < SHAPE[2]
    img = Image.open(out / "trainA" / sorted(train_a)[0])
    assert img.mode == "L" and img.size == (SHAPE[0], SHAPE[1])


def test_nifti_geometry_and_header(phantoms):
    ct = nib.load(phantoms["ct_volumes"][0])
    mri = nib.load(phantoms["mri_volumes"][0])
    assert ct.get_data_dtype() == np.int16 and mri.get_data_dtype() == np.float32
    assert ct.shape == SHAPE == mri.shape
    np.testing.assert_allclose(ct.affine, phantom_affine(SHAPE, SPACING))
    np.testing.assert_allclose(ct.header.get_zooms(), SPACING)
    centre = ct.affine @ np.array([(n - 1) / 2 for n in SHAPE] + [1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-6)
    assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
    for img in (ct, mri):
        assert b"PHANTOM" in img.header["descrip"].tobytes()
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1


def test_ct_hu_plausible(phantoms):
    ct = np.asarray(nib.load(phantoms["ct_volumes"][0]).dataobj)
    labels = np.asarray(nib.load(phantoms["label_volumes"][0]).dataobj)
    assert ct.dtype == np.int16
    air = labels == LABELS["background"]
    assert abs(np.median(ct[air]) + 1000) < 15
    bone = ct[labels == LABELS["bone"]]
    assert (bone >= 700).sum() > 0.3 * bone.size and bone.max() <= 1600
    brain = ndimage.binary_erosion(np.isin(labels, [LABELS["grey_matter"], LABELS["white_matter"]]))
    lo, hi = np.percentile(ct[brain], [0.5, 99.5])
    assert 0 <= lo and hi <= 100
    gm, wm = (ct[labels == LABELS[k]].mean() for k in ("grey_matter", "white_matter"))
    assert 30 < gm < 50 and 15 < wm < 35 and gm > wm


def test_mri_t1_contrast():
    ph = make_subject(0, seed=0, shape=SHAPE, spacing=SPACING)
    assert ph.mri.dtype == np.float32 and ph.ct.shape == ph.mri.shape == ph.labels.shape == SHAPE
    mean = {k: ph.mri[ph.labels == v].mean() for k, v in LABELS.items() if (ph.labels == v).any()}
    assert mean["white_matter"] > mean["grey_matter"] > mean["csf"] > mean["background"]
    assert mean["fat"] > mean["grey_matter"] > mean["bone"] > mean["background"]
    np.testing.assert_array_equal(ph.labels, make_label_map(SHAPE, SPACING, seed=0, index=0))


def test_lesions_render():
    found = set()
    for i in range(12):
        ph = make_subject(i, seed=1, shape=SHAPE, spacing=SPACING)
        for kind in ("bleed", "mass"):
            m = ph.labels == LABELS[kind]
            if m.any() and ph.info["lesion"] == kind:
                found.add(kind)
                if kind == "bleed":
                    core = ndimage.binary_erosion(m) if ndimage.binary_erosion(m).any() else m
                    assert 55 < ph.ct[core].mean() < 85
                    assert ph.ct[core].mean() > ph.ct[ph.labels == LABELS["grey_matter"]].mean()
    assert found == {"bleed", "mass"}


def test_pngs_match_volumes(phantoms):
    out = Path(phantoms["output_dir"])
    ct = np.asarray(nib.load(phantoms["ct_volumes"][1]).dataobj)
    mri = np.asarray(nib.load(phantoms["mri_volumes"][1]).dataobj)
    lo, hi = mri_range(mri, MRI_PNG_PERCENTILES)  # the contract's MRI normalisation of the whole volume
    for name in sorted(_names(out / "trainA"))[::4]:
        if not name.startswith("subj001"):
            continue
        z = int(name[9:12])
        ct_png = np.asarray(Image.open(out / "trainA" / name))
        mri_png = np.asarray(Image.open(out / "trainB" / name))
        np.testing.assert_array_equal(ct_png, ct_to_png(radiological_slice(ct, z)))
        assert np.abs(mri_png.astype(int) - mri_to_png(radiological_slice(mri, z), lo, hi)).max() <= 1
    # Display layout: anterior at the top, patient's right on the image's left.
    vol = np.zeros((4, 5, 2))
    vol[3, 4, 1] = 1  # most right (+x) and most anterior (+y) voxel
    assert radiological_slice(vol, 1)[0, 0] == 1


def test_determinism(tmp_path):
    a = make_subject(1, seed=5, shape=SHAPE, spacing=SPACING)
    b = make_subject(1, seed=5, shape=SHAPE, spacing=SPACING)
    c = make_subject(1, seed=6, shape=SHAPE, spacing=SPACING)
    for attr in ("labels", "ct", "mri"):
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))
        assert not np.array_equal(getattr(a, attr), getattr(c, attr))
    # Same seed, two output folders: byte-identical files (PNG, NIfTI, DICOM).
    r1 = make_phantoms(tmp_path / "one", subjects=2, seed=3, shape=SHAPE, spacing=SPACING)
    r2 = make_phantoms(tmp_path / "two", subjects=2, seed=3, shape=SHAPE, spacing=SPACING)
    files1 = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    files2 = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert files1 == files2
    for rel in files1:
        if rel.name == "phantoms.json":  # holds the output path
            continue
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel
    assert r1["png_counts"] == r2["png_counts"]
    # The written volumes are exactly make_subject's arrays.
    sub1 = make_subject(1, seed=3, shape=SHAPE, spacing=SPACING)
    np.testing.assert_array_equal(np.asarray(nib.load(r1["ct_volumes"][1]).dataobj), sub1.ct)
    np.testing.assert_array_equal(np.asarray(nib.load(r1["mri_volumes"][1]).dataobj), sub1.mri)


def test_dicom_series_reads_back(phantoms):
    series_uids = set()
    for i in range(3):
        folder = phantoms["dicom_series"][i]
        reader = sitk.ImageSeriesReader()
        ids = reader.GetGDCMSeriesIDs(folder)
        assert len(ids) == 1
        files = reader.GetGDCMSeriesFileNames(folder, ids[0])
        assert len(files) == SHAPE[2]
        reader.SetFileNames(files)
        dcm = reader.Execute()
        np.testing.assert_allclose(dcm.GetSpacing(), SPACING, atol=1e-6)
        nii = sitk.ReadImage(phantoms["ct_volumes"][i])
        np.testing.assert_allclose(nii.GetSpacing(), SPACING, atol=1e-6)
        # Same physical grid (different direction conventions): resample the NIfTI onto the DICOM grid.
        same = sitk.Resample(nii, dcm, sitk.Transform(), sitk.sitkNearestNeighbor, -2000.0)
        a = sitk.GetArrayFromImage(dcm).astype(np.int32)
        b = sitk.GetArrayFromImage(same).astype(np.int32)
        assert np.abs(a - b).max() <= 1
        ct = np.asarray(nib.load(phantoms["ct_volumes"][i]).dataobj)
        np.testing.assert_array_equal(a[5], radiological_slice(ct, 5))

        ds = pydicom.dcmread(files[0])
        assert ds.Modality == "CT" and str(ds.PatientName) == f"PHANTOM^00{i}"
        assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == -1024.0
        assert ds.pixel_array.dtype == np.int16 and ds.PixelRepresentation == 1
        np.testing.assert_allclose([float(x) for x in ds.PixelSpacing], SPACING[:2])
        assert float(ds.SliceThickness) == SPACING[2]
        assert [float(x) for x in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert "PHANTOM" in ds.SeriesDescription
        uids = {pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in files}
        assert len(uids) == 1
        series_uids |= uids
    assert len(series_uids) == 3


def test_split_rules_and_validation(tmp_path):
    assert n_test_subjects(8, 0.25) == 2
    assert n_test_subjects(2, 0.0) == 1
    assert n_test_subjects(3, 0.9) == 2
    assert n_test_subjects(1, 0.5) == 0
    with pytest.raises(ValueError, match="test_fraction"):
        n_test_subjects(4, 1.0)
    with pytest.raises(ValueError, match="subjects"):
        make_phantoms(tmp_path, subjects=0)
    with pytest.raises(ValueError, match="shape"):
        make_phantoms(tmp_path, subjects=1, shape=(48, 48))


def test_rerun_replaces_stale_outputs(tmp_path):
    small = (32, 32, 8)
    make_phantoms(tmp_path, subjects=3, seed=0, shape=small)
    r = make_phantoms(tmp_path, subjects=2, seed=0, shape=small, write_dicom=False)
    assert r["train_subjects"] == ["subj000"] and r["test_subjects"] == ["subj001"]
    leftovers = [p for p in tmp_path.rglob("subj002*")]
    assert leftovers == []
    assert not any(n.startswith("subj001") for n in _names(tmp_path / "trainA"))
    assert r["dicom_series"] == [] and not any((tmp_path / "dicom" / "ct").iterdir())


def test_failed_dicom_write_leaves_no_partial_series(tmp_path, monkeypatch):
    """The CT series goes through the one DICOM writer: a slice that fails leaves no series and no temporaries."""
    fail_dicom_write_at(monkeypatch, 3)
    with pytest.raises(OSError, match="No space left"):
        make_phantoms(tmp_path, subjects=1, seed=0, shape=(32, 32, 8))
    assert list((tmp_path / "dicom" / "ct").iterdir()) == []
    assert not [p for p in tmp_path.rglob("*") if ".partial" in p.name]
