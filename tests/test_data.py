"""Tests for ctmri_monai.data (CPU, tiny files in tmp_path)."""

from __future__ import annotations

import locale

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader
from PIL import Image

from ctmri_monai.data import (
    ImageFolderDataset,
    UnpairedDataset,
    VolumeSliceDataset,
    build_unpaired_dataset,
    detect_layout,
    effective_split,
    list_images,
    list_volumes,
    spec_for_dataset,
    split_train_val,
)
from ctmri_monai.io import InputError
from ctmri_monai.spec import CTIntensity, ModelSpec, SliceGeometry
from ctmri_monai.transforms import image_pipeline, volume_pipeline

S = 32


def _images(framing: str = "fit", training: bool = False):
    """The image pipeline of a model trained on 2D images framed by ``framing``."""
    spec = ModelSpec(geometry=SliceGeometry(image_size=S, framing=framing, pixdim=None), layout="images")
    return image_pipeline(spec, training=training)


def _volumes(domain: str):
    """The volume pipeline (loading) of a volumes-trained model: 1 mm, [-1000, 1000] HU."""
    spec = ModelSpec(ct=CTIntensity(window=(-1000.0, 1000.0)), geometry=SliceGeometry(image_size=S))
    return volume_pipeline(spec, domain, load=True)


def _build(root, split="train", training=True, **kwargs):
    spec = spec_for_dataset(root, image_size=S)
    return build_unpaired_dataset(root, spec, split, training=training, **kwargs)


def _rgb_jpeg(path, h=30, w=40, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _gray_png(path, h=50, w=70, value=128):
    a = np.zeros((h, w), np.uint8)
    a[5:-5, 5:-5] = value
    Image.fromarray(a).save(path)
    return path


def _image_folder(folder, n, kind="png", start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        if kind == "png":
            _gray_png(folder / f"img{i:03d}.png", value=10 + i)
        else:
            _rgb_jpeg(folder / f"img{i:03d}.jpg", seed=i)
    return folder


def _volume(path, depth=10, blank=(0, 1, 8, 9), value=40.0, spacing=(1.0, 1.0, 2.0)):
    vol = np.full((24, 20, depth), -1000.0, np.float32)
    for k in range(depth):
        if k not in blank:
            vol[4:20, 3:17, k] = value + k
    nib.save(nib.Nifti1Image(vol, np.diag([*spacing, 1.0])), str(path))
    return path


class _Fake(torch.utils.data.Dataset):
    def __init__(self, n, tag):
        self.n, self.tag = n, tag

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((1, 4, 4), float(i))

    def item_name(self, i):
        return f"{self.tag}{i}"


# ------------------------------------------------------------------------------------------------ listing
def test_list_images_sorted_any_suffix_case(tmp_path):
    _gray_png(tmp_path / "b.PNG")
    _rgb_jpeg(tmp_path / "a.JPG")
    _rgb_jpeg(tmp_path / "c.jpeg")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.PNG", "c.jpeg"]


def test_list_images_errors_name_the_folder(tmp_path):
    with pytest.raises(InputError, match="missing.*not found"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty.*is empty"):
        list_images(tmp_path / "empty")
    other = tmp_path / "other"
    other.mkdir()
    (other / "readme.txt").write_text("x")
    (other / "data.csv").write_text("1,2")
    with pytest.raises(InputError, match=f"{other}: no image files"):
        list_images(other)


def test_list_volumes(tmp_path):
    _volume(tmp_path / "a.nii.gz")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "1.dcm").write_bytes(b"x")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "x.txt").write_text("x")
    assert [p.name for p in list_volumes(tmp_path)] == ["a.nii.gz", "series"]
    with pytest.raises(InputError, match="not found"):
        list_volumes(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------ images
def test_image_folder_dataset_items(tmp_path):
    files = [_rgb_jpeg(tmp_path / "rgb.jpg"), _gray_png(tmp_path / "gray.png")]
    ds = ImageFolderDataset(files, _images("fit", False))
    assert len(ds) == 2
    for i in range(2):
        x = ds[i]
        assert x.shape == (1, S, S) and x.dtype == torch.float32
        assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert ds.item_name(1).endswith("gray.png")


def test_image_folder_dataset_training_is_reproducible(tmp_path):
    files = [_rgb_jpeg(tmp_path / f"r{i}.jpg", seed=i) for i in range(3)]
    a = ImageFolderDataset(files, _images("resize_crop", True), seed=3)
    b = ImageFolderDataset(files, _images("resize_crop", True), seed=3)
    for i in range(3):
        assert torch.equal(a[i], b[i])


@pytest.mark.parametrize("policy", ["fit", "resize_crop"])
def test_cached_images_equal_decoded_ones_without_reading_files_again(tmp_path, policy):
    files = [_rgb_jpeg(tmp_path / f"r{i}.jpg", seed=i) for i in range(3)] + [_gray_png(tmp_path / "g.png")]
    plain = ImageFolderDataset(files, _images(policy, True), seed=3)
    expected = [[plain[i] for i in range(len(files))] for _ in range(2)]  # random flips / crops differ per pass
    cached = ImageFolderDataset(files, _images(policy, True), seed=3, cache_rate=1.0)
    for f in files:
        f.unlink()  # everything the cached dataset needs is in memory
    for passes in expected:
        for i, want in enumerate(passes):
            assert torch.equal(cached[i], want)


def test_cache_fill_error_names_the_file(tmp_path):
    good = _gray_png(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:60])
    with pytest.raises(InputError, match="bad.png: cannot read image"):
        ImageFolderDataset([good, bad], _images(), cache_rate=1.0)


def test_corrupt_image_error_names_the_file(tmp_path):
    good = _gray_png(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:60])
    ds = ImageFolderDataset([good, bad], _images())
    assert ds[0].shape == (1, S, S)
    with pytest.raises(InputError, match="bad.png: cannot read image"):
        ds[1]


# ------------------------------------------------------------------------------------------------ pairing
def test_unpaired_training_random_pairing_reproducible():
    def pairs(seed):
        ds = UnpairedDataset(_Fake(5, "c"), _Fake(3, "m"), random_pairing=True, seed=seed)
        assert len(ds) == 5
        return [(ds[i]["ct_path"], ds[i]["mri_path"]) for i in range(len(ds)) for _ in range(4)]

    first = pairs(7)
    assert first == pairs(7)
    assert first != pairs(8)
    assert [c for c, _ in first[::4]] == [f"c{i}" for i in range(5)]  # CT sequential, MRI random
    assert len({m for _, m in first}) > 1
    item = UnpairedDataset(_Fake(5, "c"), _Fake(3, "m"), seed=0)[4]
    assert item["ct_valid"] and item["mri_valid"]
    assert set(item) == {"ct", "mri", "ct_valid", "mri_valid", "ct_path", "mri_path"}


def test_unpaired_eval_sequential_with_valid_flags():
    ds = UnpairedDataset(_Fake(2, "c"), _Fake(5, "m"), random_pairing=False)
    assert len(ds) == 5
    items = [ds[i] for i in range(5)]
    assert [it["ct_path"] for it in items] == ["c0", "c1", "c0", "c1", "c0"]
    assert [it["mri_path"] for it in items] == [f"m{i}" for i in range(5)]
    assert [it["ct_valid"] for it in items] == [True, True, False, False, False]
    assert all(it["mri_valid"] for it in items)
    assert float(items[3]["ct"].max()) == 1.0
    with pytest.raises(IndexError):
        ds[5]


def test_unpaired_workers_draw_different_pairings():
    ds = UnpairedDataset(_Fake(64, "c"), _Fake(1000, "m"), random_pairing=True, seed=0)
    torch.manual_seed(0)
    loader = DataLoader(ds, batch_size=8, num_workers=2)  # MONAI's: seeds each worker's random state
    batches = [b["mri_path"] for b in loader]
    per_worker = [tuple(batches[0]), tuple(batches[1])]
    assert per_worker[0] != per_worker[1]
    torch.manual_seed(0)
    again = [b["mri_path"] for b in DataLoader(ds, batch_size=8, num_workers=2)]
    assert again == batches


def test_unpaired_collates_with_monai_loader(tmp_path):
    ct = ImageFolderDataset([_rgb_jpeg(tmp_path / "c.jpg")], _images())
    mri = ImageFolderDataset([_gray_png(tmp_path / f"m{i}.png") for i in range(3)], _images())
    batch = next(iter(DataLoader(UnpairedDataset(ct, mri, random_pairing=False), batch_size=3)))
    assert batch["ct"].shape == (3, 1, S, S) and batch["mri"].shape == (3, 1, S, S)
    assert batch["ct_valid"].tolist() == [True, False, False]
    assert batch["mri_valid"].tolist() == [True, True, True]


# ------------------------------------------------------------------------------------------------ volumes
def test_volume_slices_skip_background(tmp_path):
    path = _volume(tmp_path / "v.nii.gz")
    ds = VolumeSliceDataset([path], _volumes("ct"))
    assert ds.foreground_slices(0).tolist() == [2, 3, 4, 5, 6, 7]
    assert len(ds) == 6
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (1, S, S) and x.dtype == torch.float32
        assert float((x > -0.9).float().mean()) > 0.05
        assert x.meta["slice_index"] == i + 2
    hu = 40.0 + 4
    assert float(ds[2].max()) == pytest.approx((hu + 1000) / 1000 - 1, abs=1e-5)


def test_volume_slices_random_and_evenly_spaced(tmp_path):
    files = [_volume(tmp_path / "a.nii.gz"), _volume(tmp_path / "b.nii", depth=6, blank=(0,))]
    rand = VolumeSliceDataset(files, _volumes("mri"), slices_per_volume=5, random_slices=True,
                              random_flip=True, cache_volumes=1).set_random_state(1)
    assert len(rand) == 10
    ks = [rand[i].meta["slice_index"] for i in range(10)]
    assert all(k in range(2, 8) for k in ks[:5]) and all(k in range(1, 6) for k in ks[5:])
    again = VolumeSliceDataset(files, _volumes("mri"), slices_per_volume=5, random_slices=True,
                               random_flip=True).set_random_state(1)
    assert ks == [again[i].meta["slice_index"] for i in range(10)]
    even = VolumeSliceDataset(files, _volumes("mri"), slices_per_volume=3)
    # centres of 3 equal parts of the foreground slices 2..7
    assert [even[i].meta["slice_index"] for i in range(3)] == [3, 5, 7]
    assert even.item_name(4).endswith("b.nii")


def test_volume_without_foreground_and_bad_volume(tmp_path):
    blank = _volume(tmp_path / "blank.nii.gz", blank=tuple(range(10)))
    with pytest.raises(InputError, match="blank.nii.gz: no axial slice"):
        VolumeSliceDataset([blank], _volumes("ct"))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    ds = VolumeSliceDataset([bad], _volumes("ct"), slices_per_volume=2)
    with pytest.raises(InputError, match="bad.nii.gz: cannot read"):
        ds[0]


def test_dicom_series_folder(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    vol = np.full((6, 20, 24), -1000, np.int16)
    vol[1:5, 4:16, 5:19] = 40
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.9, 0.9, 2.5))
    series = tmp_path / "volumes" / "subj000"
    series.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.7"
    saved_locale = locale.setlocale(locale.LC_ALL)
    for k in range(vol.shape[0]):
        s = img[:, :, k]
        pos = "\\".join(str(c) for c in img.TransformIndexToPhysicalPoint((0, 0, k)))
        for tag, value in [("0008|0060", "CT"), ("0020|000d", uid + ".1"), ("0020|000e", uid + ".2"),
                           ("0020|0032", pos), ("0020|0013", str(k + 1)), ("0020|0037", "1\\0\\0\\0\\1\\0")]:
            s.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"{k:03d}.dcm"))
        writer.Execute(s)
    # GDCM's writer leaves the process in the "C" locale, and later `open()` calls (torch.compile's templates)
    # would then decode as ASCII: restore it.
    locale.setlocale(locale.LC_ALL, saved_locale)
    ds = VolumeSliceDataset(list_volumes(series.parent), _volumes("ct"))
    assert len(ds) == 4
    assert ds[0].shape == (1, S, S) and float(ds[0].max()) == pytest.approx(0.04, abs=1e-4)


# ------------------------------------------------------------------------------------------------ builder
def test_split_train_val_deterministic_disjoint():
    files = [f"f{i}" for i in range(20)]
    train, val = split_train_val(files, 0.1, seed=0)
    assert len(val) == 2 and len(train) == 18 and set(train).isdisjoint(val)
    assert sorted(train + val) == sorted(files)
    assert split_train_val(files, 0.1, seed=0) == (train, val)
    tr, va = split_train_val(["a", "b"], 0.01)
    assert len(tr) == 1 and len(va) == 1 and set(tr + va) == {"a", "b"}
    assert split_train_val(["a"], 0.1) == (["a"], ["a"])


def test_build_images_layout_splits(tmp_path):
    root = tmp_path / "kaggle"
    _image_folder(root / "trainA", 10, "jpg")
    _image_folder(root / "trainB", 10, "png")
    assert detect_layout(root) == "images"
    kw = dict(val_fraction=0.2, seed=0)
    train = _build(root, "train", training=True, **kw)
    val = _build(root, "val", training=False, **kw)
    assert len(train) == 8 and len(val) == 2
    assert set(train.ct.files).isdisjoint(val.ct.files) and set(train.mri.files).isdisjoint(val.mri.files)
    test = _build(root, "test", training=False, **kw)  # no testA/testB: falls back to val
    assert test.ct.files == val.ct.files and not test.random_pairing
    _image_folder(root / "testA", 3, "jpg")
    _image_folder(root / "testB", 2, "png")
    test = _build(root, "test", training=False, **kw)
    assert len(test) == 3
    item = test[2]
    assert item["ct"].shape == (1, S, S) and item["ct_valid"] and not item["mri_valid"]
    assert train[0]["mri"].shape == (1, S, S) and train.random_pairing


def test_build_volumes_layout(tmp_path):
    root = tmp_path / "vols"
    for domain in ("ct", "mri"):
        (root / "volumes" / domain).mkdir(parents=True)
        for i in range(3):
            value = 40.0 if domain == "ct" else 300.0
            _volume(root / "volumes" / domain / f"subj{i:03d}.nii.gz", value=value)
    assert detect_layout(root) == "volumes"
    train = _build(root, "train", val_fraction=0.34, slices_per_volume=4)
    val = _build(root, "val", training=False, val_fraction=0.34)
    assert len(train) == 2 * 4 and len(val) == 6  # val: every foreground slice of one volume
    assert set(train.ct.files).isdisjoint(val.ct.files)
    item = train[0]
    assert item["ct"].shape == (1, S, S) and item["mri"].shape == (1, S, S)
    assert item["ct_path"].endswith(".nii.gz")


def test_build_unknown_layout_names_the_folder(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(InputError, match=f"{tmp_path}: unknown dataset layout"):
        _build(tmp_path)
    with pytest.raises(InputError, match="not found"):
        _build(tmp_path / "nope")
    (tmp_path / "trainA").mkdir()
    (tmp_path / "trainB").mkdir()
    with pytest.raises(InputError, match="trainA: image folder is empty"):
        _build(tmp_path)


def test_effective_split_says_when_test_falls_back_to_validation(tmp_path):
    for folder in ("trainA", "trainB"):
        _image_folder(tmp_path / folder, 3)
    assert effective_split(tmp_path, "test").startswith("val (no testA/testB")
    assert effective_split(tmp_path, "val") == "val"
    for folder in ("testA", "testB"):
        _image_folder(tmp_path / folder, 2)
    assert effective_split(tmp_path, "test") == "test"
