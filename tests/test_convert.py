"""Slice-wise volume conversion: geometry, intensity, DICOM in/out, bad inputs, batch job and QA."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from conftest import make_spec
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ctmri_monai.convert import (
    BatchOptions,
    ConvertOptions,
    ModelSource,
    add_convert_arguments,
    collect_inputs,
    consistency_report,
    convert_volume,
    run_batch,
)
from ctmri_monai.io import InputError, load_volume, select_dicom_series

S = 32  # network image size in these tests


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class BlankHalf(torch.nn.Module):
    """Returns its input with the right half of every slice set to background."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[..., x.shape[-1] // 2:] = -1.0
        return out


def head_hu(shape: tuple[int, int, int], seed: int = 0, extent: float = 1.0) -> np.ndarray:
    """An ellipsoid 'head' of soft tissue / bone texture in air, int16 HU inside [-1000, 1000]; ``extent`` scales
    its radii (below 1: an air margin, e.g. so that a model's centre crop does not cut it)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) / extent for s in shape], indexing="ij")
    inside = grids[0] ** 2 / 0.8 + grids[1] ** 2 / 0.7 < 1.0
    tissue = rng.integers(-100, 900, size=shape)
    return np.where(inside, tissue, -1000).astype(np.int16)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_affine(rot: np.ndarray, spacing: tuple[float, float, float], origin=(-20.0, 15.0, 7.5)):
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def write_ct_series(folder: Path, hu: np.ndarray, spacing=(1.0, 1.0, 2.0), iop=(1, 0, 0, 0, 1, 0),
                    origin=(-20.0, -18.0, 30.0), series_uid: str | None = None, study_uid: str | None = None,
                    description: str = "head CT", shear: float = 0.0) -> str:
    """Write (X, Y, Z) HU as a DICOM CT series (int16, intercept -1024), files named in random order."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or "1.2.826.0.1.3680043.8.498.1"
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(row, col)
    order = np.random.default_rng(1).permutation(hu.shape[2])
    for k in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "P123", "19700101", "F"
        ds.PatientAddress = "1 Secret Street"
        ds.OtherPatientIDs = "OTHER-42"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "101010", "ACC1", "S1"
        ds.ReferringPhysicianName = "Ref^Doc"
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "CT", description, 3, k + 1
        position = np.asarray(origin) + k * spacing[2] * normal + k * shear * col  # shear: gantry tilt
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (along columns), column spacing
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        block = ds.private_block(0x0009, "ACME private", create=True)
        block.add_new(0x10, "LO", "private secret")
        ds.PixelData = (hu[:, :, k].T.astype(np.int32) + 1024).astype("<i2").tobytes()
        ds.save_as(folder / f"img{order[k]:03d}.dcm", enforce_file_format=True)
    return series_uid


def sitk_ras_affine(img: sitk.Image) -> np.ndarray:
    """Independent LPS -> RAS conversion of SimpleITK's geometry, for comparisons."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())[None, :]
    m[:3, 3] = img.GetOrigin()
    m[:2] *= -1.0
    return m


def read_series(folder: Path) -> tuple[sitk.Image, list[str], list[str]]:
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute(), list(ids), list(files)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or "partial" in p.name)


# ------------------------------------------------------------------------------------------------ geometry

GEOMETRIES = {
    "oblique_aniso": (rotation(0.3, -0.2, 0.5), (0.8, 1.3, 3.0)),
    "lps": (np.diag([-1.0, -1.0, 1.0]), (0.9, 0.9, 2.5)),
    "ras": (np.eye(3), (1.0, 1.0, 2.0)),
    "sagittal_stack": (np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]]), (1.2, 0.7, 1.0)),
}


@pytest.mark.parametrize("shape", [(41, 37, 7), (23, 19, 5)], ids=["larger", "smaller"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_output_geometry_equals_input(tmp_path: Path, name: str, shape: tuple[int, int, int]) -> None:
    rot, spacing = GEOMETRIES[name]
    affine = make_affine(rot, spacing)
    src = save_nifti(tmp_path / "in.nii.gz", head_hu(shape, extent=0.55), affine)
    out = tmp_path / "out" / "in_ct2mri.nii.gz"
    result = convert_volume(src, out, Identity(), make_spec(S), "ct", "mri")
    img, ref = nib.load(out), nib.load(src)
    assert img.shape == shape and result["shape"] == list(shape)
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    for coded in ("get_sform", "get_qform"):
        a, code_a = getattr(img.header, coded)(coded=True)
        b, code_b = getattr(ref.header, coded)(coded=True)
        assert code_a == code_b
        if code_b:
            np.testing.assert_allclose(a, b, atol=1e-6)
    data = np.asarray(img.dataobj)
    assert data.dtype == np.float32 and data.min() >= -1.0 and data.max() <= 1.0
    assert leftovers(tmp_path) == []


def test_synthetic_ct_is_int16_hu(tmp_path: Path) -> None:
    affine = make_affine(*GEOMETRIES["oblique_aniso"])
    src = save_nifti(tmp_path / "mr.nii.gz", (head_hu((30, 28, 6)) + 1000).astype(np.float32), affine)
    out = tmp_path / "mr_mri2ct.nii.gz"
    convert_volume(src, out, Identity(), make_spec(S, window=(-1000.0, 1000.0)), "mri", "ct")
    img = nib.load(out)
    assert img.get_data_dtype() == np.int16
    data = np.asarray(img.dataobj)
    assert data.min() >= -1000 and data.max() <= 1000
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)


# ----------------------------------------------------------------------------------------------- intensity


@pytest.mark.parametrize("flip", [(1, 1), (-1, -1), (-1, 1)], ids=["ras", "lps", "las"])
def test_identity_ct_to_ct_returns_input_hu(tmp_path: Path, flip: tuple[int, int]) -> None:
    shape = (27, 36, 6)  # smaller and larger than S in-plane
    hu = head_hu(shape, seed=3)
    affine = make_affine(np.diag([flip[0], flip[1], 1.0]), (1.0, 1.0, 2.5))
    src = save_nifti(tmp_path / "ct.nii.gz", hu, affine)
    out = tmp_path / "ct_ct2ct.nii.gz"
    convert_volume(src, out, Identity(), make_spec(40), "ct", "ct")
    data = np.asarray(nib.load(out).dataobj)
    assert data.dtype == np.int16
    assert np.abs(data.astype(np.int32) - hu).max() <= 1


def test_identity_ct_to_ct_with_in_plane_resampling_is_close(tmp_path: Path) -> None:
    shape = (40, 36, 5)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    hu = (300 * np.sin(2 * grids[0]) + 200 * grids[1]).astype(np.int16)  # smooth: interpolation is near exact
    affine = make_affine(rotation(0.2, 0.1, -0.4), (1.3, 1.3, 2.0))
    src = save_nifti(tmp_path / "ct.nii.gz", hu, affine)
    out = tmp_path / "o.nii.gz"
    convert_volume(src, out, Identity(), make_spec(64, pixdim=(0.9, 0.9)), "ct", "ct")
    diff = np.abs(np.asarray(nib.load(out).dataobj).astype(np.float64) - hu)
    assert np.median(diff) < 3.0 and diff[3:-3, 3:-3].max() < 40.0


@pytest.mark.parametrize("name", ["oblique_aniso", "lps", "sagittal_stack"])
def test_preprocessed_slices_sit_where_their_affine_says(tmp_path: Path, name: str) -> None:
    """Forward geometry in world coordinates (a round trip alone would hide an error made both ways): a
    linear function of world position, sampled by the preprocessing, matches the function at each voxel's
    world position given by the preprocessed affine."""
    from ctmri_monai.transforms import ct_from_unit, volume_pipeline

    rot, spacing = GEOMETRIES[name]
    affine = make_affine(rot, spacing)
    shape = (30, 26, 6)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    values = (4.0 * world[:, 0] - 3.0 * world[:, 1] + 2.0 * world[:, 2]).reshape(shape).astype(np.float32)
    volume = load_volume(save_nifti(tmp_path / "lin.nii.gz", values, affine))
    forward = volume_pipeline(make_spec(S, pixdim=(0.9, 0.9), window=(-5000.0, 5000.0)), "ct")
    x = forward({"image": volume.image})["image"]
    out_affine = np.asarray(x.affine, dtype=np.float64)
    np.testing.assert_allclose(np.linalg.norm(out_affine[:3, :2], axis=0), 0.9, rtol=0.05)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in x.shape[1:]], indexing="ij"), -1).reshape(-1, 3)
    pts = grid @ out_affine[:3, :3].T + out_affine[:3, 3]
    src = (pts - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T  # voxel position in the input
    inside = np.all((src > 0.6) & (src < np.asarray(shape) - 1.6), axis=1)
    assert inside.sum() > 500
    expected = 4.0 * pts[:, 0] - 3.0 * pts[:, 1] + 2.0 * pts[:, 2]
    got = ct_from_unit(x[0].reshape(-1), (-5000.0, 5000.0)).numpy()
    assert np.abs(got[inside] - expected[inside]).max() < 0.5


def test_nifti_header_is_marked_and_carries_no_identifiers(tmp_path: Path) -> None:
    img = nib.Nifti1Image(head_hu((24, 20, 4)), np.diag([1.0, 1.0, 2.0, 1.0]))
    img.header["descrip"] = b"Doe^Jane P123"
    img.header["aux_file"] = b"P123"
    img.header["db_name"] = b"Doe"
    nib.save(img, tmp_path / "in.nii.gz")
    info = {"file": "/models/a_very_long_checkpoint_name_" + "x" * 60 + ".pt",
            "sha256": "0123456789abcdef" * 4}
    out = tmp_path / "o.nii.gz"
    result = convert_volume(tmp_path / "in.nii.gz", out, Identity(), make_spec(S), "ct", "mri",
                            model_info=info)
    header = nib.load(out).header
    descrip = header["descrip"].item().decode()
    assert descrip.startswith("SYNTHETIC ct2mri model=a_very_long") and descrip.endswith(":0123456789ab")
    assert len(descrip) <= 80 and result["description"] == descrip
    assert header["aux_file"].item() == b"" and header["db_name"].item() == b""
    short = convert_volume(tmp_path / "in.nii.gz", out, Identity(), make_spec(S), "ct", "mri",
                           model_info={"file": "g.pt", "sha256": "ab" * 32})
    assert short["description"] == "SYNTHETIC ct2mri model=g.pt:abababababab"


# --------------------------------------------------------------------------------------------------- DICOM


def test_dicom_series_converts_on_simpleitk_geometry(tmp_path: Path) -> None:
    hu = head_hu((30, 26, 6), seed=5)
    iop = (0.9659258, 0.2588190, 0.0, -0.2588190, 0.9659258, 0.0)  # 15 degrees in-plane rotation
    series = tmp_path / "dicom"
    write_ct_series(series, hu, spacing=(1.0, 1.0, 2.5), iop=iop)
    out = tmp_path / "out.nii.gz"
    result = convert_volume(series, out, Identity(), make_spec(S), "ct", "ct")
    ref, _, _ = read_series(series)
    img = nib.load(out)
    assert img.shape == ref.GetSize() == hu.shape and result["slices"] == hu.shape[2]
    np.testing.assert_allclose(img.affine, sitk_ras_affine(ref), atol=1e-4)
    np.testing.assert_allclose(img.header.get_qform(), sitk_ras_affine(ref), atol=1e-4)
    ref_hu = sitk.GetArrayFromImage(ref).transpose(2, 1, 0)
    assert np.abs(ref_hu.astype(np.int32) - hu).max() == 0  # the series really is in HU
    assert np.abs(np.asarray(img.dataobj).astype(np.int32) - ref_hu).max() <= 1


def test_dicom_series_anisotropic_pixels_geometry(tmp_path: Path) -> None:
    series = tmp_path / "dicom"
    write_ct_series(series, head_hu((34, 25, 5)), spacing=(0.7, 1.2, 3.0), iop=(0, 1, 0, 0, 0, -1))
    out = tmp_path / "out.nii.gz"
    convert_volume(series, out, Identity(), make_spec(S), "ct", "mri")
    ref, _, _ = read_series(series)
    np.testing.assert_allclose(nib.load(out).affine, sitk_ras_affine(ref), atol=1e-4)
    assert nib.load(out).shape == ref.GetSize()


@pytest.mark.parametrize("target", ["ct", "mri"])
def test_dicom_output_is_a_new_derived_series_of_the_same_study(tmp_path: Path, target: str) -> None:
    hu = head_hu((28, 24, 5), seed=7)
    series = tmp_path / "in"
    src_uid = write_ct_series(series, hu, spacing=(1.0, 1.0, 2.0))
    dicom_out = tmp_path / "out_dicom"
    result = convert_volume(series, tmp_path / "o.nii.gz", Identity(), make_spec(S), "ct", target,
                            dicom_output_dir=dicom_out)
    img, ids, files = read_series(dicom_out)
    src_img, _, src_files = read_series(series)
    assert ids == [result["dicom_series_uid"]] and ids[0] != src_uid
    assert img.GetSize() == src_img.GetSize()
    np.testing.assert_allclose(img.GetOrigin(), src_img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(img.GetDirection(), src_img.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(img.GetSpacing(), src_img.GetSpacing(), atol=1e-4)
    source_sops = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in src_files}
    sops = set()
    for f in files:
        ds = pydicom.dcmread(f)
        sops.add(ds.SOPInstanceUID)
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL" if target == "ct" else "OTHER"]
        assert ds.SeriesDescription.startswith("SYNTHETIC")
        assert ds.SeriesInstanceUID == ids[0]
        assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.1" and ds.AccessionNumber == "ACC1"
        assert ds.FrameOfReferenceUID == "1.2.826.0.1.3680043.8.498.2"
        assert str(ds.PatientName) == "Doe^Jane" and ds.PatientID == "P123"
        assert "PatientAddress" not in ds and "OtherPatientIDs" not in ds
        assert not any(elem.tag.is_private for elem in ds)
        assert ds.Modality == ("CT" if target == "ct" else "MR")
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in source_sops
    assert len(sops) == len(files) and not sops & source_sops
    values = sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(np.float64)
    if target == "ct":
        assert np.abs(values - hu).max() <= 1
    else:
        expected = np.rint((np.clip((hu + 1000.0) / 1000.0 - 1.0, -1, 1) + 1.0) * 4095 / 2)  # no Modality LUT
        assert np.abs(values - expected).max() <= 1


def test_several_series_in_one_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    uid_a = write_ct_series(folder / "a", head_hu((20, 18, 4)), description="axial soft")
    uid_b = write_ct_series(folder / "b", head_hu((20, 18, 3)), description="axial bone")
    for sub in ("a", "b"):
        for f in (folder / sub).iterdir():
            f.rename(folder / f"{sub}_{f.name}")
    with pytest.raises(InputError) as err:
        load_volume(folder)
    msg = str(err.value)
    assert str(folder) in msg and uid_a in msg and uid_b in msg
    assert "axial soft" in msg and "4 slices" in msg and "3 slices" in msg
    vol = load_volume(folder, series_uid=uid_b)
    assert vol.shape == (20, 18, 3) and vol.series.uid == uid_b
    with pytest.raises(InputError, match="no series 1.2.3"):
        select_dicom_series(folder, "1.2.3")
    out = tmp_path / "o.nii.gz"
    convert_volume(folder, out, Identity(), make_spec(S), "ct", "mri", series_uid=uid_a)
    assert nib.load(out).shape == (20, 18, 4)


def test_bad_dicom_series(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="no DICOM"):
        load_volume(empty)
    gap = tmp_path / "gap"
    write_ct_series(gap, head_hu((20, 18, 5)))
    files = select_dicom_series(gap).files
    Path(files[2]).unlink()  # a missing slice: no regular grid any more
    with pytest.raises(InputError, match="irregular slice spacing"):
        load_volume(gap)
    sizes = tmp_path / "sizes"
    uid = write_ct_series(sizes, head_hu((20, 18, 3)))
    write_ct_series(tmp_path / "other", head_hu((22, 18, 2)), series_uid=uid, origin=(-20.0, -18.0, 40.0))
    for f in (tmp_path / "other").iterdir():
        f.rename(sizes / f"x_{f.name}")
    with pytest.raises(InputError, match="mixed series"):
        load_volume(sizes)
    tilted = tmp_path / "tilted"
    write_ct_series(tilted, head_hu((20, 18, 6)), spacing=(1.0, 1.0, 2.0), shear=0.5)
    with pytest.raises(InputError, match="gantry tilt"):
        load_volume(tilted)


def test_dicom_output_needs_dicom_input(tmp_path: Path) -> None:
    src = save_nifti(tmp_path / "a.nii.gz", head_hu((20, 18, 3)), np.eye(4))
    with pytest.raises(InputError, match="DICOM output"):
        convert_volume(src, tmp_path / "o.nii.gz", Identity(), make_spec(S), dicom_output_dir=tmp_path / "d")
    assert not (tmp_path / "o.nii.gz").exists()


# ---------------------------------------------------------------------------------------------- ITK files


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_files_through_simpleitk_reader(tmp_path: Path, suffix: str) -> None:
    hu = head_hu((26, 22, 5), seed=2)
    img = sitk.GetImageFromArray(hu.transpose(2, 1, 0))
    img.SetSpacing((1.0, 1.0, 2.0))
    img.SetOrigin((10.0, -5.0, 3.0))
    img.SetDirection(tuple(rotation(0.0, 0.0, 0.4).ravel()))
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(img, str(path))
    out = tmp_path / "o.nii.gz"
    convert_volume(path, out, Identity(), make_spec(S), "ct", "ct")
    result = nib.load(out)
    np.testing.assert_allclose(result.affine, sitk_ras_affine(img), atol=1e-5)
    assert np.abs(np.asarray(result.dataobj).astype(np.int32) - hu).max() <= 1


# ----------------------------------------------------------------------------------------------- bad input


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = save_nifti(tmp_path / "good.nii.gz", head_hu((20, 18, 4)), np.eye(4)).read_bytes()
    cases: dict[str, tuple[Path, str]] = {}
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    cases["empty"] = (tmp_path / "empty.nii.gz", "empty file")
    (tmp_path / "trunc.nii.gz").write_bytes(good[: len(good) // 2])
    cases["truncated"] = (tmp_path / "trunc.nii.gz", "cannot read image")
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"hello, not an image" * 30))
    cases["not_an_image"] = (tmp_path / "text.nii.gz", "cannot read image")
    (tmp_path / "plain.nii").write_text("definitely not a NIfTI header")
    cases["not_nifti"] = (tmp_path / "plain.nii", "cannot read image")
    cases["2d"] = (save_nifti(tmp_path / "flat.nii.gz", np.zeros((20, 18), np.int16), np.eye(4)), "2D image")
    four = save_nifti(tmp_path / "time.nii.gz", np.zeros((20, 18, 4, 3), np.int16), np.eye(4))
    cases["4d"] = (four, "4D image")
    nan = head_hu((20, 18, 4)).astype(np.float32)
    nan[3, 3, 1] = np.nan
    cases["nan"] = (save_nifti(tmp_path / "nan.nii.gz", nan, np.eye(4)), "NaN or Inf")
    inf = head_hu((20, 18, 4)).astype(np.float32)
    inf[3, 3, 1] = np.inf
    cases["inf"] = (save_nifti(tmp_path / "inf.nii.gz", inf, np.eye(4)), "NaN or Inf")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n")
    cases["unsupported"] = (tmp_path / "photo.png", "unsupported input type")
    cases["missing"] = (tmp_path / "missing.nii.gz", "does not exist")
    return cases


def test_bad_inputs_give_one_clear_error_and_no_output(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name, (path, problem) in _bad_inputs(tmp_path).items():
        with pytest.raises(InputError) as err:
            convert_volume(path, out_dir / f"{name}.nii.gz", Identity(), make_spec(S))
        assert str(path) in str(err.value) and problem in str(err.value), (name, str(err.value))
    assert list(out_dir.iterdir()) == []


def test_singleton_fourth_dimension_is_accepted(tmp_path: Path) -> None:
    src = save_nifti(tmp_path / "a.nii.gz", head_hu((20, 18, 4))[..., None], np.diag([1.0, 1.0, 2.0, 1.0]))
    out = tmp_path / "o.nii.gz"
    convert_volume(src, out, Identity(), make_spec(S), "ct", "ct")
    assert nib.load(out).shape == (20, 18, 4)


# ------------------------------------------------------------------------------------------------------ QA


def test_qa_flags_generator_that_blanks_half_of_every_slice(tmp_path: Path) -> None:
    src = save_nifti(tmp_path / "ct.nii.gz", head_hu((30, 28, 6)), make_affine(np.eye(3), (1.0, 1.0, 2.0)))
    good = convert_volume(src, tmp_path / "id.nii.gz", Identity(), make_spec(S), "ct", "mri",
                          qa_dir=tmp_path / "qa")
    bad = convert_volume(src, tmp_path / "half.nii.gz", BlankHalf(), make_spec(S), "ct", "mri",
                         qa_dir=tmp_path / "qa")
    assert not good["qa"]["flagged"] and good["qa"]["dice_min"] == 1.0 and good["qa"]["slices_below"] == []
    assert bad["qa"]["flagged"] and bad["qa"]["dice_mean"] < 0.8
    assert bad["qa"]["slices_below"] == sorted(bad["qa"]["dice"]) and bad["qa"]["slices_evaluated"] == 6
    for result in (good, bad):
        png = Path(result["qa"]["montage"])
        assert png.parent == tmp_path / "qa" and png.stat().st_size > 0
        from PIL import Image

        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 2 * S


@pytest.mark.parametrize("z_step", [2.0, -2.0], ids=["superior", "inferior"])
def test_qa_slice_numbers_are_input_indices(tmp_path: Path, z_step: float) -> None:
    hu = head_hu((24, 22, 6))
    hu[:, :, 2:] = -1000  # head only on input slices 0 and 1
    src = save_nifti(tmp_path / "ct.nii.gz", hu, np.diag([1.0, -1.0, z_step, 1.0]))
    result = convert_volume(src, tmp_path / "o.nii.gz", BlankHalf(), make_spec(S), "ct", "mri")
    assert sorted(result["qa"]["dice"]) == [0, 1] and result["qa"]["slices_below"] == [0, 1]
    assert result["qa"]["slice_axis"] == 2


def test_consistency_report_slice_rules() -> None:
    src = -np.ones((32, 32, 4), np.float32)
    src[8:24, 8:24, 1:3] = 0.5  # head only on slices 1 and 2
    src[12:16, 12:16, 1] = -1.0  # a hole that gets filled
    out = src.copy()
    out[2, 2, 0] = 0.5  # a speck below the minimum area on an empty slice
    out[8:24, 16:24, 2] = -1.0  # half the head gone on slice 2
    report = consistency_report(src, out, threshold=0.9, slice_index=[10, 11, 12, 13])
    assert sorted(report["dice"]) == [11, 12] and report["dice"][11] == 1.0
    assert report["slices_below"] == [12] and report["flagged"]
    assert report["dice_min"] == pytest.approx(2 * 128 / (256 + 128), abs=1e-3)


# --------------------------------------------------------------------------------------------------- batch


def _batch_inputs(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    save_nifti(data / "a.nii.gz", head_hu((24, 20, 4), 1), make_affine(np.eye(3), (1.0, 1.0, 2.0)))
    save_nifti(data / "b.nii", head_hu((22, 26, 3), 2), make_affine(rotation(0.1, 0.0, 0.3), (0.9, 1.1, 3.0)))
    good = (data / "a.nii.gz").read_bytes()
    (data / "broken.nii.gz").write_bytes(good[: len(good) // 3])
    write_ct_series(data / "series1", head_hu((20, 18, 4), 3))
    return data


def test_batch_goes_on_after_a_bad_file_and_skips_finished_outputs(tmp_path: Path, capsys) -> None:
    data = _batch_inputs(tmp_path)
    out = tmp_path / "out"
    info = {"file": "m.pt", "sha256": "f" * 64, "model_spec": {"image_size": S}}
    status = run_batch([data], out, "ct2mri", ModelSource(generator=Identity(), spec=make_spec(S), model_info=info),
                       BatchOptions(convert=ConvertOptions.for_run("cpu", batch_size=3), progress=False, dicom=True))
    assert status == 1
    summary = json.loads((out / "summary.json").read_text())
    by_name = {Path(r["file"]).name: r for r in summary["files"]}
    assert set(by_name) == {"a.nii.gz", "b.nii", "broken.nii.gz", "series1"}
    assert by_name["broken.nii.gz"]["status"] == "failed"
    assert "broken.nii.gz" in by_name["broken.nii.gz"]["error"]
    for name in ("a.nii.gz", "b.nii", "series1"):
        rec = by_name[name]
        assert rec["status"] == "ok" and rec["qa"]["dice_min"] == 1.0 and rec["seconds"] > 0
        assert nib.load(rec["output"]).shape == tuple(rec["shape"])
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a_ct2mri.nii.gz", "b_ct2mri.nii.gz",
                                                            "series1_ct2mri.nii.gz"]
    assert (out / "series1_ct2mri_dicom").is_dir() and by_name["series1"]["dicom_series_uid"]
    assert not (out / "broken_ct2mri.nii.gz").exists() and leftovers(out) == []
    assert summary["counts"] == {"ok": 3, "flagged": 0, "skipped": 0, "failed": 1}
    table = capsys.readouterr().out
    assert "failed" in table and "broken.nii.gz" in table

    before = (out / "a_ct2mri.nii.gz").stat().st_mtime_ns
    status = run_batch([data], out, "ct2mri",
                       ModelSource(generator=Identity(), spec=make_spec(S),
                                   model_info={"model_spec": {"image_size": S}}),
                       BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False, dicom=True))
    assert status == 1
    again = {Path(r["file"]).name: r for r in json.loads((out / "summary.json").read_text())["files"]}
    assert [again[n]["status"] for n in ("a.nii.gz", "b.nii", "series1", "broken.nii.gz")] == [
        "skipped", "skipped", "skipped", "failed"]
    assert again["a.nii.gz"]["qa"]["dice_min"] == 1.0  # figures of the earlier run are kept
    assert (out / "a_ct2mri.nii.gz").stat().st_mtime_ns == before

    (data / "broken.nii.gz").unlink()
    status = run_batch([data], out, "ct2mri",
                       ModelSource(generator=BlankHalf(), spec=make_spec(S),
                                   model_info={"model_spec": {"image_size": S}}),
                       BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False, overwrite=True))
    assert status == 0
    final = json.loads((out / "summary.json").read_text())
    assert final["counts"]["flagged"] == 3 and (out / "qa" / "a_ct2mri_qa.png").exists()


def test_ranks_convert_disjoint_shares_of_one_batch(tmp_path: Path) -> None:
    """Under torchrun each rank converts its share; together they cover the batch once, with one summary each."""
    data = _batch_inputs(tmp_path)
    (data / "broken.nii.gz").unlink()
    out = tmp_path / "out"
    info = {"model_spec": {"image_size": S}}
    for rank in (0, 1):
        assert run_batch([data], out, "ct2mri", ModelSource(generator=Identity(), spec=make_spec(S), model_info=info),
                         BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False, rank=rank,
                                      world_size=2)) == 0
    summaries = [json.loads((out / f"summary_rank{r}.json").read_text()) for r in (0, 1)]
    done = [[Path(rec["file"]).name for rec in s["files"]] for s in summaries]
    assert sorted(done[0] + done[1]) == ["a.nii.gz", "b.nii", "series1"] and all(done)
    assert [s["rank"] for s in summaries] == [0, 1] and not (out / "summary.json").exists()
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a_ct2mri.nii.gz", "b_ct2mri.nii.gz",
                                                            "series1_ct2mri.nii.gz"]


def test_read_ahead_loads_the_next_file_while_one_converts(tmp_path: Path, monkeypatch) -> None:
    import threading

    import ctmri_monai.convert.batch as batch

    data = _batch_inputs(tmp_path)
    loads: list[tuple[str, str]] = []

    def recording_load(path, **kwargs):
        loads.append((Path(path).name, threading.current_thread().name))
        return load_volume(path, **kwargs)

    monkeypatch.setattr(batch, "load_volume", recording_load)
    results = {}
    for read_ahead in (True, False):
        out = tmp_path / f"out_{read_ahead}"
        assert run_batch([data], out, "ct2mri",
                         ModelSource(generator=Identity(), spec=make_spec(S),
                                     model_info={"model_spec": {"image_size": S}}),
                         BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False,
                                      read_ahead=read_ahead)) == 1
        results[read_ahead] = {Path(r["file"]).name: (r["status"], r["shape"])
                               for r in json.loads((out / "summary.json").read_text())["files"]}
    assert results[True] == results[False] and results[True]["broken.nii.gz"][0] == "failed"
    ahead, inline = loads[:4], loads[4:]
    assert sorted(n for n, _ in ahead) == ["a.nii.gz", "b.nii", "broken.nii.gz", "series1"]
    assert all(t.startswith("ctmri-read") for _, t in ahead)
    assert all(t == threading.current_thread().name for _, t in inline)


def test_batch_list_file_missing_entries_and_checkpoint_loader(tmp_path: Path) -> None:
    data = _batch_inputs(tmp_path)
    (data / "broken.nii.gz").unlink()
    listing = tmp_path / "inputs.txt"
    listing.write_text("# volumes\ndata/a.nii.gz\n\ndata/series1\ndata/nope.nii.gz\n")
    calls = []

    def load_model(path, direction, device):
        calls.append((str(path), direction, device))
        return Identity(), {"file": str(path), "sha256": "a" * 64, "spec": make_spec(S)}

    out = tmp_path / "out"
    status = run_batch([listing], out, "ct2mri", ModelSource(checkpoint=tmp_path / "g.pt", load_model=load_model),
                       BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False))
    assert status == 1 and calls == [(str(tmp_path / "g.pt"), "ct2mri", "cpu")]
    summary = json.loads((out / "summary.json").read_text())
    statuses = {Path(r["file"]).name: r["status"] for r in summary["files"]}
    assert statuses == {"a.nii.gz": "ok", "series1": "ok", "nope.nii.gz": "failed"}
    assert summary["model"] == {"file": str(tmp_path / "g.pt"), "sha256": "a" * 64}
    assert nib.load(out / "a_ct2mri.nii.gz").header["descrip"].item().decode() == (
        "SYNTHETIC ct2mri model=g.pt:aaaaaaaaaaaa")


def test_collect_inputs_names_and_exclusions(tmp_path: Path) -> None:
    data = _batch_inputs(tmp_path)
    (data / "sub").mkdir()
    save_nifti(data / "sub" / "a.nii.gz", head_hu((20, 18, 3)), np.eye(4))
    (data / "notes.md").write_text("ignored")
    found = collect_inputs([data, data / "a.nii.gz"], exclude=[data / "sub"])
    names = sorted(p.name for p, problem in found if problem is None)
    assert names == ["a.nii.gz", "b.nii", "broken.nii.gz", "series1"]
    from ctmri_monai.convert.inputs import output_names

    both = [data / "a.nii.gz", data / "sub" / "a.nii.gz"]
    assert output_names(both, "ct2mri") == ["data_a_ct2mri", "sub_a_ct2mri"]


def test_batch_converter_object_and_slice_progress(tmp_path: Path) -> None:
    from ctmri_monai.convert import BatchConverter

    src = save_nifti(tmp_path / "a.nii.gz", head_hu((20, 18, 5)), np.eye(4))
    job = BatchConverter(str(src), tmp_path / "out", "ct2mri", ModelSource(generator=Identity(), spec=make_spec(S)),
                         BatchOptions(convert=ConvertOptions.for_run("cpu", batch_size=2), progress=False))
    assert job.run() == 0 and (tmp_path / "out" / "a_ct2mri.nii.gz").exists()

    class Counter:
        total, done = None, 0

        def reset(self, total=None):
            self.total = total

        def update(self, n=1):
            self.done += n

    bar = Counter()
    convert_volume(src, tmp_path / "b.nii.gz", Identity(), make_spec(S), batch_size=2, progress=bar)
    assert bar.total == 5 and bar.done == 5


def test_convert_arguments() -> None:
    import argparse

    parser = add_convert_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--direction", "mri2ct", "--checkpoint", "g.pt", "a.nii.gz", "dcm/",
                              "--output-dir", "out", "--batch-size", "8", "--no-amp", "--dicom",
                              "--series-uid", "1.2.3", "--overwrite", "--device", "cpu"])
    assert args.inputs == ["a.nii.gz", "dcm/"] and args.direction == "mri2ct" and args.amp is False
    assert args.batch_size == 8 and args.dicom and args.overwrite and args.series_uid == "1.2.3"


def test_qa_through_plane_figures_tell_a_flickering_conversion_from_a_steady_one(tmp_path: Path) -> None:
    """A generator that shifts every other slice by one pixel (slice-wise flicker) scores a lower through-plane
    correlation and a higher roughness than the identity, with the same structure figure order."""
    from ctmri_monai.phantoms import make_subject

    subject = make_subject(0, shape=(48, 48, 16), spacing=(4.0, 4.0, 6.0))
    src = save_nifti(tmp_path / "ct.nii.gz", subject.ct, subject.affine)

    class Flicker(torch.nn.Module):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Flicker.calls += 1
            return torch.roll(x, 1, dims=-1) if Flicker.calls % 2 else x

    spec = make_spec(S, pixdim=(6.0, 6.0))
    steady = convert_volume(src, tmp_path / "a.nii.gz", Identity(), spec, "ct", "mri", batch_size=1)["qa"]
    flicker = convert_volume(src, tmp_path / "b.nii.gz", Flicker(), spec, "ct", "mri", batch_size=1)["qa"]
    assert steady["through_plane"] > flicker["through_plane"] + 0.1
    assert flicker["roughness"] > steady["roughness"] + 0.1 and abs(steady["roughness"] - 1.0) < 0.05
    assert steady["structure"] > flicker["structure"]
