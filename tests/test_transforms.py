"""Tests for ctmri_monai.transforms (CPU, tiny data)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandFlipd
from PIL import Image

from ctmri_monai.transforms import (
    HORIZONTAL_FLIP_AXIS,
    INTENSITY_META_KEY,
    CheckImaged,
    CTWindowd,
    EightBitToUnitd,
    InputImageError,
    MRINormalized,
    PadOrCropd,
    SafeLoadImaged,
    SizePolicyd,
    ToGrayscaled,
    ct_from_unit,
    ct_to_unit,
    eight_bit_from_unit,
    find_input_error,
    image_file_transforms,
    intensity_transform,
    mri_from_unit,
    volume_slice_transforms,
)


def _raises_input_error(fn, *args, match: str) -> InputImageError:
    with pytest.raises(Exception) as info:
        fn(*args)
    err = find_input_error(info.value)
    assert err is not None, f"not an InputImageError: {info.value!r}"
    assert match in str(err), str(err)
    return err


# ------------------------------------------------------------------------------------------------ intensity
def test_ct_window_round_trip_within_1_hu():
    hu = torch.linspace(-1500.0, 3000.0, 10001).reshape(1, 73, 137)
    out = CTWindowd("image", window=(-1000.0, 1000.0))({"image": hu})
    x = out["image"]
    assert isinstance(x, MetaTensor) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert x.meta[INTENSITY_META_KEY] == {"kind": "ct_window", "window": [-1000.0, 1000.0]}
    assert len(x.applied_operations) == 0  # intensity is not a MONAI-traced op
    inside = (hu >= -1000) & (hu <= 1000)
    back = CTWindowd("image", window=(-1000.0, 1000.0)).inverse(out)["image"]
    assert float((back - hu)[inside].abs().max()) < 1.0
    assert INTENSITY_META_KEY not in back.meta
    assert float((ct_from_unit(x, (-1000, 1000)) - hu)[inside].abs().max()) < 1.0
    # brain window and the functional form agree
    assert torch.allclose(ct_to_unit(torch.tensor([40.0]), (-40, 120)), torch.tensor([0.0]))


def test_mri_normalize_percentiles_and_inverse():
    rng = np.random.default_rng(0)
    vol = np.zeros((1, 20, 20, 6), np.float32)
    vol[:, 5:15, 5:15] = rng.uniform(100, 900, size=(1, 10, 10, 6))
    t = MRINormalized("image", lower_percentile=1.0, upper_percentile=99.0)
    out = t({"image": vol})
    x = out["image"]
    params = x.meta[INTENSITY_META_KEY]
    assert params["kind"] == "mri_norm"
    fg = vol[vol > 0]
    assert params["lo"] == pytest.approx(np.percentile(fg, 1.0), rel=1e-5)  # background zeros ignored
    assert params["hi"] == pytest.approx(np.percentile(fg, 99.0), rel=1e-5)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    inside = (vol >= params["lo"]) & (vol <= params["hi"])
    back = t.inverse(out)["image"]
    assert np.abs(back.numpy() - vol)[inside].max() < 1e-3
    assert np.abs(mri_from_unit(x, params["lo"], params["hi"]).numpy() - vol)[inside].max() < 1e-3


def test_mri_normalize_constant_image_does_not_divide_by_zero():
    x = MRINormalized("image")({"image": np.full((1, 4, 4), 7.0, np.float32)})["image"]
    assert torch.isfinite(x).all() and float(x.max()) == -1.0


def test_eight_bit_round_trip_and_factory():
    img = torch.arange(256, dtype=torch.float32).reshape(1, 16, 16)
    out = EightBitToUnitd("image")({"image": img})
    assert float(out["image"].min()) == -1.0 and float(out["image"].max()) == 1.0
    assert out["image"].meta[INTENSITY_META_KEY]["kind"] == "eight_bit"
    assert torch.allclose(EightBitToUnitd("image").inverse(out)["image"], img, atol=1e-4)
    assert torch.allclose(eight_bit_from_unit(out["image"]), img, atol=1e-4)
    assert isinstance(intensity_transform("eight_bit"), EightBitToUnitd)
    ct = intensity_transform("ct", ct_window=(-100, 200))
    assert isinstance(ct, CTWindowd) and ct.window == (-100.0, 200.0)
    mr = intensity_transform("mri", mri_percentiles=(2, 98))
    assert isinstance(mr, MRINormalized) and (mr.lower_percentile, mr.upper_percentile) == (2.0, 98.0)
    with pytest.raises(ValueError):
        intensity_transform("pet")


def test_to_grayscale():
    rgb = torch.zeros(3, 2, 2)
    rgb[0], rgb[1], rgb[2] = 100.0, 200.0, 50.0
    g = ToGrayscaled("image")({"image": rgb})["image"]
    assert g.shape == (1, 2, 2)
    assert torch.allclose(g, torch.full((1, 2, 2), 0.299 * 100 + 0.587 * 200 + 0.114 * 50))
    rgba = torch.cat([rgb, torch.full((1, 2, 2), 255.0)])
    assert torch.allclose(ToGrayscaled("image")({"image": rgba})["image"], g)
    one = torch.rand(1, 3, 3)
    assert torch.equal(ToGrayscaled("image")({"image": one})["image"], one)
    with pytest.raises(InputImageError):
        ToGrayscaled("image")({"image": torch.zeros(5, 2, 2)})


# ------------------------------------------------------------------------------------------------ size policy
def _framed(h: int, w: int, rgb: bool, frame: int = 12) -> np.ndarray:
    """Grey picture with a bright frame and a dark marker square near the top-left corner."""
    a = np.full((h, w), 100, np.uint8)
    a[:frame], a[-frame:], a[:, :frame], a[:, -frame:] = 255, 255, 255, 255
    a[frame + 5:frame + 25, frame + 5:frame + 25] = 0
    return np.stack([a] * 3, -1) if rgb else a


SHAPES = [((512, 512), False), ((225, 225), True), ((630, 630), True), ((201, 251), True)]


@pytest.fixture(scope="module")
def framed_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("framed")
    files = []
    for (h, w), rgb in SHAPES:
        path = folder / f"img_{h}x{w}.png"
        Image.fromarray(_framed(h, w, rgb)).save(path)
        files.append(path)
    return files


def _content_box(x: torch.Tensor) -> tuple[slice, slice]:
    rows = torch.nonzero((x[0] > -0.95).any(1)).flatten()
    cols = torch.nonzero((x[0] > -0.95).any(0)).flatten()
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_fit_keeps_whole_picture_upright(framed_files, index):
    (h, w), _ = SHAPES[index]
    x = image_file_transforms(256, "fit", training=False)({"image": str(framed_files[index])})["image"]
    assert x.shape == (1, 256, 256) and x.dtype == torch.float32
    rs, cs = _content_box(x)
    scale = 256 / max(h, w)
    assert rs.stop - rs.start == round(h * scale) and cs.stop - cs.start == round(w * scale)  # not transposed
    box = x[0, rs, cs]
    for edge in (box[0], box[-1], box[:, 0], box[:, -1]):  # the whole frame survived
        assert float(edge.mean()) > 0.8
    # marker (dark) is near the top-left corner, so the picture is upright and not mirrored
    mark = (box < -0.9).nonzero().float().mean(0)
    assert mark[0] < box.shape[0] / 3 and mark[1] < box.shape[1] / 3


@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_crop_policy_pads_small_and_center_crops_large(framed_files, index):
    (h, w), _ = SHAPES[index]
    x = image_file_transforms(256, "crop", training=False)({"image": str(framed_files[index])})["image"]
    assert x.shape == (1, 256, 256)
    rs, cs = _content_box(x)
    assert rs.stop - rs.start == min(h, 256) and cs.stop - cs.start == min(w, 256)
    frame_visible = float(x[0, rs, cs][0].mean()) > 0.8
    assert frame_visible == (h <= 256)  # nothing is cropped below 256, larger images lose their border
    if h <= 256:  # content values unchanged (no scaling)
        src = torch.as_tensor(_framed(h, w, False)[:, :min(w, 256)], dtype=torch.float32) / 127.5 - 1
        assert torch.allclose(x[0, rs, cs][:, :src.shape[1]], src, atol=0.02)


@pytest.mark.parametrize("policy", ["fit", "crop", "resize_crop"])
@pytest.mark.parametrize("training", [False, True])
def test_size_policy_inverse_restores_shape(framed_files, policy, training):
    t = image_file_transforms(256, policy, training=training)
    for path, ((h, w), _) in zip(framed_files, SHAPES, strict=True):
        out = t({"image": str(path)})
        assert out["image"].shape == (1, 256, 256)
        back = t.inverse(out)["image"]
        assert tuple(back.shape) == (1, h, w)


def test_inverse_refills_cropped_parts_with_background():
    img = MetaTensor(torch.ones(1, 40, 30))
    for t in (SizePolicyd("image", 16, "crop"), PadOrCropd("image", (16, 16), background=-1.0)):
        y = t({"image": img.clone()})["image"]
        assert y.shape == (1, 16, 16)
        back = t.inverse({"image": y})["image"]
        assert back.shape == (1, 40, 30)
        assert float(back[0, 12:28, 7:23].min()) == 1.0 and float(back[0, :12].max()) == -1.0
    vol = MetaTensor(torch.ones(1, 40, 30, 3))
    t = PadOrCropd("image", (16, 50, -1))
    y = t({"image": vol})["image"]
    assert y.shape == (1, 16, 50, 3) and float(y.min()) == -1.0
    assert t.inverse({"image": y})["image"].shape == (1, 40, 30, 3)


def test_resize_crop_random_is_reproducible_and_center_otherwise():
    img = MetaTensor(torch.rand(1, 201, 251))
    sums = []
    for seed in (1, 1, 2):
        t = SizePolicyd("image", 32, "resize_crop", random=True)
        t.set_random_state(seed)
        y = t({"image": img.clone()})["image"]
        assert y.shape == (1, 32, 32)
        sums.append(float(y.sum()))
    assert sums[0] == sums[1] and sums[2] != sums[0]  # same seed, same crop; another seed, another crop
    y = SizePolicyd("image", 32, "resize_crop")({"image": img.clone()})["image"]
    op = y.applied_operations
    assert [o["class"] for o in op] == ["Resize", "CenterSpatialCrop"]
    assert min(op[1]["orig_size"]) == round(32 * 286 / 256)
    with pytest.raises(ValueError):
        SizePolicyd("image", 32, "stretch")


def test_horizontal_flip_axis_is_left_right(tmp_path):
    a = np.zeros((30, 40), np.uint8)
    a[:, :5] = 255  # bright left edge
    Image.fromarray(a).save(tmp_path / "edge.png")
    x = image_file_transforms(40, "crop", training=False)({"image": str(tmp_path / "edge.png")})["image"]
    assert float(x[0, 5:35, :5].mean()) == 1.0  # (C, H, W): left edge in the first columns
    flip = RandFlipd("image", prob=1.0, spatial_axis=HORIZONTAL_FLIP_AXIS)
    y = flip({"image": x})["image"]
    assert float(y[0, 5:35, -5:].mean()) == 1.0 and float(y[0, :, :5].max()) < 1.0


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("empty.png", b"", "empty"),
        ("text.png", b"this is not an image at all", "cannot read"),
        ("trunc.png", None, "cannot read"),
    ],
)
def test_bad_image_files_raise_naming_the_file(tmp_path, name, content, problem):
    path = tmp_path / name
    if content is None:
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    t = image_file_transforms(32, training=False)
    err = _raises_input_error(t, {"image": str(path)}, match=problem)
    assert str(path) in str(err)
    _raises_input_error(t, {"image": str(tmp_path / "missing.png")}, match="not found")


def test_check_image_rejects_nan_and_wrong_dims():
    nan = MetaTensor(torch.tensor([[[0.0, float("nan")]]]), meta={"filename_or_obj": "x.nii"})
    with pytest.raises(InputImageError, match="x.nii: image contains NaN"):
        CheckImaged("image", spatial_ndim=2)({"image": nan})
    with pytest.raises(InputImageError, match="expected a 3D image"):
        CheckImaged("image", spatial_ndim=3)({"image": torch.zeros(1, 4, 4)})
    with pytest.raises(InputImageError, match="at most 1 channel"):
        CheckImaged("image", spatial_ndim=3, max_channels=1)({"image": torch.zeros(2, 4, 4, 4)})


# ------------------------------------------------------------------------------------------------ volumes
def _nifti(path, vol, spacing=(1.0, 1.0, 1.0)):
    nib.save(nib.Nifti1Image(vol, np.diag([*spacing, 1.0])), str(path))
    return str(path)


def test_volume_pipeline_ct_shapes_orientation_and_hu_round_trip(tmp_path):
    vol = np.full((40, 30, 6), -1000, np.int16)  # RAS: axis0 -> patient right, axis1 -> anterior
    vol[8:32, 4:26] = 40
    vol[30:36, 22:28] = 900  # marker: patient's right, anterior
    path = _nifti(tmp_path / "ct.nii.gz", vol)
    t = volume_slice_transforms("ct", pixdim=(1.0, 1.0), image_size=48)  # pad only, nothing cropped
    out = t({"image": path})
    x = out["image"]
    assert x.shape == (1, 48, 48, 6) and x.dtype == torch.float32
    assert x.meta[INTENSITY_META_KEY]["kind"] == "ct_window"
    # "PLS": axial slice is upright radiological: anterior at top, patient's right at the viewer's left
    mark = (x[0, :, :, 3] > 0.8).nonzero().float().mean(0)
    assert mark[0] < 24 and mark[1] < 24
    back = Compose(t.transforms).inverse(out)["image"]  # spatial ops only
    assert back.shape == (1, 40, 30, 6)
    hu = ct_from_unit(back, (-1000.0, 1000.0)).numpy()[0]
    inside = np.abs(vol) <= 1000
    assert np.abs(hu - vol)[inside].max() < 1.0
    assert np.allclose(back.affine.numpy(), np.eye(4))


def test_volume_pipeline_resamples_in_plane_only(tmp_path):
    vol = np.random.default_rng(0).uniform(0, 500, (20, 16, 5)).astype(np.float32)
    path = _nifti(tmp_path / "mr.nii.gz", vol, spacing=(2.0, 2.0, 4.0))
    x = volume_slice_transforms("mri", pixdim=(1.0, 1.0), image_size=48)({"image": path})["image"]
    assert x.shape == (1, 48, 48, 5)  # 5 slices kept
    assert x.pixdim.tolist() == pytest.approx([1.0, 1.0, 4.0])
    assert x.meta[INTENSITY_META_KEY]["kind"] == "mri_norm"
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0


@pytest.mark.parametrize(
    "vol, problem",
    [
        (np.zeros((5, 5, 5, 2), np.float32), "channels/frames"),
        (np.zeros((5, 5), np.float32), "expected a 3D image"),
        (np.where(np.eye(5)[..., None] > 0, np.nan, 0).repeat(3, -1).astype(np.float32), "NaN or Inf"),
    ],
)
def test_bad_volumes_raise_naming_the_file(tmp_path, vol, problem):
    path = _nifti(tmp_path / "bad.nii", vol)
    t = volume_slice_transforms("ct", image_size=16)
    err = _raises_input_error(t, {"image": path}, match=problem)
    assert path in str(err)


def test_safe_load_corrupt_nifti(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(InputImageError, match="broken.nii.gz: cannot read image"):
        SafeLoadImaged("image")({"image": str(path)})


def test_palette_alpha_and_16_bit_files_load_as_gray(tmp_path):
    rgb = np.zeros((20, 24, 3), np.uint8)
    rgb[:, 12:] = 255
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.gif")
    Image.fromarray(np.dstack([rgb, np.full((20, 24), 128, np.uint8)])).save(tmp_path / "alpha.png")
    Image.fromarray((np.arange(20 * 24).reshape(20, 24) * 100).astype(np.uint16)).save(tmp_path / "deep.png")
    t = image_file_transforms(24, "crop", training=False)
    for name in ("pal.gif", "alpha.png", "deep.png"):
        x = t({"image": str(tmp_path / name)})["image"]
        assert x.shape == (1, 24, 24) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0, name
    pal = t({"image": str(tmp_path / "pal.gif")})["image"]
    assert float(pal[0, 5, 2]) == -1.0 and float(pal[0, 5, 20]) == pytest.approx(1.0, abs=0.01)
