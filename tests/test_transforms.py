"""Tests for ctmri_monai.transforms: intensity, the one in-plane framing, head mask, context, loading, pipelines."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import RandFlipd
from PIL import Image

from ctmri_monai.io import InputError, find_input_error
from ctmri_monai.spec import CTIntensity, ModelSpec, MRIIntensity, SliceGeometry
from ctmri_monai.transforms import (
    HORIZONTAL_FLIP_AXIS,
    CheckImaged,
    InPlaneFrame,
    MRINormalized,
    SafeLoadImaged,
    ct_from_unit,
    ct_to_unit,
    framed_size,
    head_mask,
    image_pipeline,
    mri_range,
    volume_intensity,
    volume_pipeline,
)
from ctmri_monai.transforms.context import context_indices, slice_stack, slice_stacks


def _raises_input_error(fn, *args, match: str) -> InputError:
    with pytest.raises(Exception) as info:
        fn(*args)
    err = find_input_error(info.value)
    assert err is not None, f"not an InputError: {info.value!r}"
    assert match in str(err), str(err)
    return err


def image_spec(size: int, framing: str = "fit") -> ModelSpec:
    """The contract of a model trained on 2D images framed by ``framing``."""
    return ModelSpec(ct=CTIntensity(window=(-20.0, 100.0), stored_as="eight_bit"),
                     mri=MRIIntensity(stored_as="eight_bit"),
                     geometry=SliceGeometry(image_size=size, framing=framing, pixdim=None), layout="images")


def volume_spec(size: int, pixdim=(1.0, 1.0), window=(-1000.0, 1000.0)) -> ModelSpec:
    return ModelSpec(ct=CTIntensity(window=window), geometry=SliceGeometry(image_size=size, pixdim=pixdim))


# ------------------------------------------------------------------------------------------------ intensity
def test_ct_window_round_trip_within_1_hu_and_the_pipeline_uses_the_same_formula():
    hu = torch.linspace(-1500.0, 3000.0, 10001).reshape(1, 73, 137)
    x = ct_to_unit(hu, (-1000.0, 1000.0))
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    inside = (hu >= -1000) & (hu <= 1000)
    assert float((ct_from_unit(x, (-1000, 1000)) - hu)[inside].abs().max()) < 1.0
    via_monai = volume_intensity(volume_spec(16), "ct", ["image"])({"image": hu})["image"]
    assert torch.allclose(torch.as_tensor(via_monai), x, atol=1e-6)
    assert torch.allclose(ct_to_unit(torch.tensor([40.0]), (-20, 100)), torch.tensor([0.0]))  # level 40


def test_unknown_ct_window_is_a_contract_error_naming_the_option():
    spec = ModelSpec(ct=CTIntensity(window=None, stored_as="eight_bit"))
    with pytest.raises(Exception, match="--ct-window"):
        volume_intensity(spec, "ct", ["image"])


def test_mri_normalize_ignores_background_and_handles_constant_images():
    rng = np.random.default_rng(0)
    vol = np.zeros((1, 20, 20, 6), np.float32)
    vol[:, 5:15, 5:15] = rng.uniform(100, 900, size=(1, 10, 10, 6))
    lo, hi = mri_range(vol, (1.0, 99.0))
    fg = vol[vol > 0]
    assert lo == pytest.approx(np.percentile(fg, 1.0), rel=1e-5)  # background zeros ignored
    assert hi == pytest.approx(np.percentile(fg, 99.0), rel=1e-5)
    x = MRINormalized("image", (1.0, 99.0))({"image": vol})["image"]
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    inside = (vol >= lo) & (vol <= hi)
    back = (np.asarray(x) + 1.0) * (hi - lo) / 2.0 + lo
    assert np.abs(back - vol)[inside].max() < 1e-3
    flat = MRINormalized("image")({"image": np.full((1, 4, 4), 7.0, np.float32)})["image"]
    assert torch.isfinite(torch.as_tensor(flat)).all() and float(flat.max()) == -1.0


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


def _frame_2d(path, size: int, framing: str, training: bool = False) -> MetaTensor:
    return image_pipeline(image_spec(size, framing), training=training)({"image": str(path)})["image"]


@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_fit_keeps_whole_picture_upright(framed_files, index):
    (h, w), _ = SHAPES[index]
    x = _frame_2d(framed_files[index], 256, "fit")
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
    x = _frame_2d(framed_files[index], 256, "crop")
    assert x.shape == (1, 256, 256)
    rs, cs = _content_box(x)
    assert rs.stop - rs.start == min(h, 256) and cs.stop - cs.start == min(w, 256)
    frame_visible = float(x[0, rs, cs][0].mean()) > 0.8
    assert frame_visible == (h <= 256)  # nothing is cropped below 256, larger images lose their border
    if h <= 256:  # content values unchanged (no scaling)
        src = torch.as_tensor(_framed(h, w, False)[:, :min(w, 256)], dtype=torch.float32) / 127.5 - 1
        assert torch.allclose(x[0, rs, cs][:, :src.shape[1]], src, atol=0.02)


@pytest.mark.parametrize("framing", ["fit", "crop", "resize_crop"])
@pytest.mark.parametrize("training", [False, True])
def test_framing_inverse_restores_shape(framed_files, framing, training):
    t = image_pipeline(image_spec(256, framing), training=training)
    for path, ((h, w), _) in zip(framed_files, SHAPES, strict=True):
        out = t({"image": str(path)})
        assert out["image"].shape == (1, 256, 256)
        assert tuple(t.inverse(out)["image"].shape) == (1, h, w)


def test_inverse_refills_cropped_parts_with_background():
    for img in (MetaTensor(torch.ones(1, 40, 30)), MetaTensor(torch.ones(1, 40, 30, 3))):
        t = InPlaneFrame(16, "crop")
        y = t(img.clone())
        assert y.shape[1:3] == (16, 16)
        back = t.inverse(y)
        assert back.shape == img.shape
        assert float(back[0, 12:28, 7:23].min()) == 1.0 and float(back[0, :12].max()) == -1.0
    padded = InPlaneFrame(50, "crop")(MetaTensor(torch.ones(1, 40, 30, 3)))
    assert padded.shape == (1, 50, 50, 3) and float(padded.min()) == -1.0


def test_resize_crop_random_is_reproducible_and_center_otherwise():
    img = MetaTensor(torch.rand(1, 201, 251))
    sums = []
    for seed in (1, 1, 2):
        t = InPlaneFrame(32, "resize_crop", random_crop=True)
        t.set_random_state(seed)
        y = t(img.clone())
        assert y.shape == (1, 32, 32)
        sums.append(float(y.sum()))
    assert sums[0] == sums[1] and sums[2] != sums[0]  # same seed, same crop; another seed, another crop
    y = InPlaneFrame(32, "resize_crop")(img.clone())
    op = y.applied_operations
    assert [o["class"] for o in op] == ["Resize", "CenterSpatialCrop"]
    assert min(op[1]["orig_size"]) == round(32 * 286 / 256)
    with pytest.raises(ValueError):
        InPlaneFrame(32, "stretch")


def test_framed_size_rules():
    assert framed_size((96, 96), (2.0, 2.0), 64, "fit") == (64, 64)
    assert framed_size((96, 96), (2.0, 2.0), 64, "spacing", (3.0, 3.0)) == (64, 64)  # fit at 2 mm == 3 mm spacing
    assert framed_size((100, 50), (1.0, 2.0), 64, "fit") == (64, 64)  # square field of view, anisotropic pixels
    assert framed_size((100, 50), (1.0, 1.0), 64, "crop") == (100, 50)
    assert framed_size((100, 50), (1.0, 1.0), 256, "resize_crop") == (572, 286)


def test_one_framing_for_2d_images_and_volume_slices():
    """The same InPlaneFrame frames a (C, H, W) image and every slice of a (C, H, W, D) volume identically, so a
    model sees volume slices exactly as its 2D training images (the contract's core)."""
    rng = np.random.default_rng(0)
    vol = torch.as_tensor(rng.uniform(-1, 1, (1, 90, 70, 4)).astype(np.float32))
    for framing, pixdim in (("fit", None), ("spacing", (1.7, 1.7)), ("crop", None), ("resize_crop", None)):
        framed = InPlaneFrame(48, framing, pixdim)(MetaTensor(vol, affine=torch.eye(4)))
        for k in range(4):
            image = InPlaneFrame(48, framing, pixdim, source_pixdim=(1.0, 1.0))(MetaTensor(vol[..., k]))
            assert torch.allclose(framed[..., k], image, atol=1e-5), framing


def test_horizontal_flip_axis_is_left_right(tmp_path):
    a = np.zeros((30, 40), np.uint8)
    a[:, :5] = 255  # bright left edge
    Image.fromarray(a).save(tmp_path / "edge.png")
    x = _frame_2d(tmp_path / "edge.png", 40, "crop")
    assert float(x[0, 5:35, :5].mean()) == 1.0  # (C, H, W): left edge in the first columns
    flip = RandFlipd("image", prob=1.0, spatial_axis=HORIZONTAL_FLIP_AXIS)
    y = flip({"image": x})["image"]
    assert float(y[0, 5:35, -5:].mean()) == 1.0 and float(y[0, :, :5].max()) < 1.0


# ---------------------------------------------------------------------------------------- head mask, context
def test_head_mask_fills_holes_keeps_the_largest_part_and_ignores_specks():
    s = -np.ones((32, 32, 3), np.float32)
    s[4:28, 4:28, 0] = 0.5
    s[10:20, 10:20, 0] = -1.0  # ventricle-like hole: filled
    s[0:2, 0:2, 0] = 0.5  # a second, small part: dropped
    s[5, 5, 1] = 0.5  # a speck below min_area on an otherwise empty slice
    m = head_mask(s, min_area=4)
    assert m[:, :, 0].sum() == 24 * 24 and not m[0, 0, 0]
    assert not m[:, :, 1].any() and not m[:, :, 2].any()


def test_context_stacks_repeat_the_end_slices():
    assert context_indices(0, 5, 2) == [0, 0, 0, 1, 2] and context_indices(4, 5, 1) == [3, 4, 4]
    vol = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 2, 2, 5)
    assert slice_stack(vol, 0, 1)[:, 0, 0].tolist() == [0.0, 0.0, 1.0]
    stacks = slice_stacks(vol[0].permute(2, 0, 1), 1)
    assert stacks.shape == (5, 3, 2, 2) and stacks[4, :, 0, 0].tolist() == [3.0, 4.0, 4.0]
    assert slice_stacks(vol[0].permute(2, 0, 1), 0).shape == (5, 1, 2, 2)


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
    t = image_pipeline(image_spec(32))
    err = _raises_input_error(t, {"image": str(path)}, match=problem)
    assert str(path) in str(err)
    _raises_input_error(t, {"image": str(tmp_path / "missing.png")}, match="not found")


def test_check_image_rejects_nan_and_wrong_dims():
    nan = MetaTensor(torch.tensor([[[0.0, float("nan")]]]), meta={"filename_or_obj": "x.nii"})
    with pytest.raises(InputError, match="x.nii: image contains NaN"):
        CheckImaged("image", spatial_ndim=2)({"image": nan})
    with pytest.raises(InputError, match="expected a 3D image"):
        CheckImaged("image", spatial_ndim=3)({"image": torch.zeros(1, 4, 4)})
    with pytest.raises(InputError, match="at most 1 channel"):
        CheckImaged("image", spatial_ndim=3, max_channels=1)({"image": torch.zeros(2, 4, 4, 4)})


def test_2d_images_refuse_context_slices():
    spec = image_spec(32)
    spec.geometry.context_slices = 1
    with pytest.raises(Exception, match="no neighbouring slices"):
        image_pipeline(spec)


# ------------------------------------------------------------------------------------------------ volumes
def _nifti(path, vol, spacing=(1.0, 1.0, 1.0)):
    nib.save(nib.Nifti1Image(vol, np.diag([*spacing, 1.0])), str(path))
    return str(path)


def test_volume_pipeline_ct_shapes_orientation_and_hu_round_trip(tmp_path):
    vol = np.full((40, 30, 6), -1000, np.int16)  # RAS: axis0 -> patient right, axis1 -> anterior
    vol[8:32, 4:26] = 40
    vol[30:36, 22:28] = 900  # marker: patient's right, anterior
    path = _nifti(tmp_path / "ct.nii.gz", vol)
    t = volume_pipeline(volume_spec(48), "ct", load=True)  # pad only, nothing cropped
    out = t({"image": path})
    x = out["image"]
    assert x.shape == (1, 48, 48, 6) and x.dtype == torch.float32
    # "PLS": axial slice is upright radiological: anterior at top, patient's right at the viewer's left
    mark = (x[0, :, :, 3] > 0.8).nonzero().float().mean(0)
    assert mark[0] < 24 and mark[1] < 24
    back = t.inverse(out)["image"]  # spatial ops only
    assert back.shape == (1, 40, 30, 6)
    hu = ct_from_unit(back, (-1000.0, 1000.0)).numpy()[0]
    inside = np.abs(vol) <= 1000
    assert np.abs(hu - vol)[inside].max() < 1.0
    assert np.allclose(back.affine.numpy(), np.eye(4))


def test_volume_pipeline_resamples_in_plane_only(tmp_path):
    vol = np.random.default_rng(0).uniform(0, 500, (20, 16, 5)).astype(np.float32)
    path = _nifti(tmp_path / "mr.nii.gz", vol, spacing=(2.0, 2.0, 4.0))
    x = volume_pipeline(volume_spec(48), "mri", load=True)({"image": path})["image"]
    assert x.shape == (1, 48, 48, 5)  # 5 slices kept
    assert x.pixdim.tolist() == pytest.approx([1.0, 1.0, 4.0])
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0


@pytest.mark.parametrize(
    "vol, problem",
    [
        (np.zeros((5, 5, 5, 2), np.float32), "4D image"),
        (np.zeros((5, 5), np.float32), "2D image"),
        (np.where(np.eye(5)[..., None] > 0, np.nan, 0).repeat(3, -1).astype(np.float32), "NaN or Inf"),
        (np.zeros((5, 5, 5), np.float32), "constant"),
    ],
)
def test_bad_volumes_raise_naming_the_file(tmp_path, vol, problem):
    path = _nifti(tmp_path / "bad.nii", vol)
    t = volume_pipeline(volume_spec(16), "ct", load=True)
    err = _raises_input_error(t, {"image": path}, match=problem)
    assert path in str(err)


def test_safe_load_corrupt_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(InputError, match="broken.png: cannot read image"):
        SafeLoadImaged("image", reader="PILReader")({"image": str(path)})


def test_palette_alpha_and_16_bit_files_load_as_gray(tmp_path):
    rgb = np.zeros((20, 24, 3), np.uint8)
    rgb[:, 12:] = 255
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.gif")
    Image.fromarray(np.dstack([rgb, np.full((20, 24), 128, np.uint8)])).save(tmp_path / "alpha.png")
    Image.fromarray((np.arange(20 * 24).reshape(20, 24) * 100).astype(np.uint16)).save(tmp_path / "deep.png")
    t = image_pipeline(image_spec(24, "crop"))
    for name in ("pal.gif", "alpha.png", "deep.png"):
        x = t({"image": str(tmp_path / name)})["image"]
        assert x.shape == (1, 24, 24) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0, name
    pal = t({"image": str(tmp_path / "pal.gif")})["image"]
    assert float(pal[0, 5, 2]) == -1.0 and float(pal[0, 5, 20]) == pytest.approx(1.0, abs=0.01)
    rgb_gray = t({"image": str(tmp_path / "alpha.png")})["image"]
    assert float(rgb_gray[0, 5, 20]) == pytest.approx(1.0, abs=0.01)  # white stays white (PIL luma)
