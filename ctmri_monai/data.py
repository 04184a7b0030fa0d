"""Unpaired CT / MRI datasets: 2D image folders and axial slices of 3D volumes.

Items are float32 tensors ``(1, S, S)`` in [-1, 1] (MONAI ``MetaTensor``). ``UnpairedDataset`` combines a
CT dataset and an MRI dataset into items ``{"ct", "mri", "ct_valid", "mri_valid", "ct_path", "mri_path"}``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, MetaTensor
from torch.utils.data import Dataset, get_worker_info

from ctmri_monai.transforms import (
    DEFAULT_AXCODES,
    HORIZONTAL_FLIP_AXIS,
    IMAGE_SUFFIXES,
    INTENSITY_META_KEY,
    InputImageError,
    find_input_error,
    image_file_transforms,
    volume_slice_transforms,
)

__all__ = [
    "VOLUME_SUFFIXES",
    "FOREGROUND_LEVEL",
    "list_images",
    "list_volumes",
    "split_train_val",
    "detect_layout",
    "ImageFolderDataset",
    "UnpairedDataset",
    "VolumeSliceDataset",
    "build_unpaired_dataset",
]

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii", ".nii.gz")
FOREGROUND_LEVEL = -0.9  # a pixel is foreground when its unit-scale value is above this
IMAGE_FOLDERS = {"train": ("trainA", "trainB"), "test": ("testA", "testB")}
VOLUME_FOLDERS = ("volumes/ct", "volumes/mri")


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _visible_entries(folder: Path, kind: str) -> list[Path]:
    """The non-hidden entries of ``folder``; ``InputImageError`` when it is missing or empty."""
    if not folder.is_dir():
        raise InputImageError(f"{folder}: {kind} folder not found")
    entries = [p for p in folder.iterdir() if not _is_hidden(p)]
    if not entries:
        raise InputImageError(f"{folder}: {kind} folder is empty")
    return entries


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files (any Pillow suffix, case-insensitive) directly inside ``folder``.

    Raises ``InputImageError`` naming the folder when it is missing, empty or holds no image files.
    """
    folder = Path(folder)
    entries = _visible_entries(folder, "image")
    files = sorted(p for p in entries if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise InputImageError(
            f"{folder}: no image files (expected {', '.join(IMAGE_SUFFIXES)}); found e.g. "
            f"{', '.join(sorted(p.name for p in entries)[:3])}"
        )
    return files


def list_volumes(folder: str | Path) -> list[Path]:
    """Sorted volumes in ``folder``: NIfTI files (.nii, .nii.gz) and DICOM series folders (sub-folders)."""
    folder = Path(folder)
    entries = _visible_entries(folder, "volume")
    vols = sorted(
        p for p in entries
        if (p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))
        or (p.is_dir() and any(c.is_file() for c in p.iterdir()))
    )
    if not vols:
        raise InputImageError(
            f"{folder}: no volumes (expected .nii / .nii.gz files or DICOM series folders); found e.g. "
            f"{', '.join(sorted(p.name for p in entries)[:3])}"
        )
    return vols


def split_train_val(files: Sequence[Any], val_fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """Deterministic (seeded) split of ``files`` into (train, val); both keep the input order.

    The validation part has ``round(n * val_fraction)`` items, at least 1 when ``val_fraction > 0``, and
    leaves at least 1 for training. With a single file, both parts are that file.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    files = list(files)
    n = len(files)
    if val_fraction == 0.0 or n == 0:
        return files, []
    if n == 1:
        logger.warning("only one file (%s): it is used for both training and validation", files[0])
        return files, list(files)
    n_val = min(max(1, int(round(n * val_fraction))), n - 1)
    chosen = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    train = [f for i, f in enumerate(files) if i not in chosen]
    val = [f for i, f in enumerate(files) if i in chosen]
    return train, val


class _WorkerRNG:
    """numpy Generator reproducible from ``seed``, distinct in each DataLoader worker and epoch.

    In the main process it is ``default_rng(seed)``; in a worker it is seeded with ``(seed, worker seed)``,
    where torch's worker seed follows ``torch.manual_seed`` and changes every epoch.
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._key: Any = "unset"
        self._rng: np.random.Generator | None = None

    def get(self) -> np.random.Generator:
        info = get_worker_info()
        key = None if info is None else (info.id, info.seed)
        if self._rng is None or key != self._key:
            if self.seed is None:
                self._rng = np.random.default_rng()
            elif key is None:
                self._rng = np.random.default_rng(self.seed)
            else:
                self._rng = np.random.default_rng([int(self.seed), int(info.seed) % (2**63)])
            self._key = key
        return self._rng

    def reset(self, seed: int | None = None) -> None:
        """Restart the sequence (optionally with a new seed)."""
        if seed is not None:
            self.seed = seed
        self._rng = None


def _reraise_input_error(exc: BaseException) -> None:
    """Raise the ``InputImageError`` hidden in MONAI's ``RuntimeError`` wrapping, else ``exc`` itself."""
    err = find_input_error(exc)
    if err is not None:
        raise InputImageError(str(err)) from exc
    raise exc


class ImageFolderDataset(CacheDataset):
    """2D image files -> ``(1, S, S)`` float32 tensors in [-1, 1].

    ``transform`` is a dictionary transform reading the file path under ``key`` (default:
    ``image_file_transforms(image_size, size_policy, training)``). A bad file raises ``InputImageError``
    naming it. ``seed`` seeds the transform's randomness (flips, random crops). ``cache_rate``: the share of
    images whose decoded result (the transforms before the first random one) MONAI's ``CacheDataset`` keeps in
    memory, filled at construction with ``cache_workers`` threads (0: nothing cached, every access decodes).
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        transform: Callable | None = None,
        key: str = "image",
        image_size: int = 256,
        size_policy: str = "fit",
        training: bool = False,
        seed: int | None = None,
        cache_rate: float = 0.0,
        cache_workers: int = 2,
    ) -> None:
        self.files = [Path(f) for f in files]
        self.key = key
        if transform is None:
            transform = image_file_transforms(image_size, size_policy, training=training, keys=(key,))
        if seed is not None and hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=seed)
        try:
            super().__init__([{key: str(f)} for f in self.files], transform, cache_rate=float(cache_rate),
                             num_workers=max(1, int(cache_workers)), progress=False)
        except Exception as exc:  # noqa: BLE001 - a bad file met while filling the cache
            _reraise_input_error(exc)

    def item_name(self, index: int) -> str:
        return str(self.files[index])

    def _transform(self, index: int) -> Any:
        try:
            out = super()._transform(index)
        except Exception as exc:  # noqa: BLE001 - unwrap MONAI's RuntimeError
            _reraise_input_error(exc)
        return out[self.key] if isinstance(out, dict) else out


class UnpairedDataset(Dataset):
    """Unpaired CT / MRI items ``{"ct", "mri", "ct_valid", "mri_valid", "ct_path", "mri_path"}``.

    Length is ``max(len(ct), len(mri))``. With ``random_pairing`` (training, like the reference CycleGAN)
    item ``i`` holds ``ct[i % len(ct)]`` and a random MRI item, reproducible with ``seed``. Without it
    (evaluation) both sides are sequential: ``ct[i % len(ct)]`` with ``ct_valid = i < len(ct)``, and the same
    for MRI, so metrics can ignore the repeated (padding) items.
    """

    def __init__(
        self,
        ct: Dataset,
        mri: Dataset,
        random_pairing: bool = True,
        seed: int | None = None,
    ) -> None:
        self.ct, self.mri = ct, mri
        self.n_ct, self.n_mri = len(ct), len(mri)  # type: ignore[arg-type]
        if self.n_ct == 0 or self.n_mri == 0:
            raise InputImageError(
                f"unpaired dataset needs both domains: {self.n_ct} CT, {self.n_mri} MRI items"
            )
        self.random_pairing = random_pairing
        self._rng = _WorkerRNG(seed)

    def __len__(self) -> int:
        return max(self.n_ct, self.n_mri)

    @staticmethod
    def _name(ds: Any, index: int) -> str:
        return ds.item_name(index) if hasattr(ds, "item_name") else ""

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        i_ct = index % self.n_ct
        if self.random_pairing:
            i_mri = int(self._rng.get().integers(self.n_mri))
            ct_valid = mri_valid = True
        else:
            i_mri = index % self.n_mri
            ct_valid, mri_valid = index < self.n_ct, index < self.n_mri
        return {
            "ct": self.ct[i_ct],
            "mri": self.mri[i_mri],
            "ct_valid": ct_valid,
            "mri_valid": mri_valid,
            "ct_path": self._name(self.ct, i_ct),
            "mri_path": self._name(self.mri, i_mri),
        }


class VolumeSliceDataset(Dataset):
    """Axial slices ``(1, S, S)`` of 3D volumes (NIfTI files or DICOM series folders), background skipped.

    Each volume goes once through ``volume_slice_transforms`` (orientation, in-plane spacing, intensity,
    crop / pad) and is kept in a small LRU cache. Slices (array axis 2) whose fraction of pixels above
    ``FOREGROUND_LEVEL`` (-0.9) exceeds ``min_foreground`` are served.

    * ``slices_per_volume=None``: every foreground slice of every volume, in order (all volumes are read
      once at construction to count them).
    * ``slices_per_volume=k``: ``k`` items per volume; random foreground slices when ``random_slices``
      (reproducible with ``seed``), else ``k`` evenly spaced foreground slices.

    ``random_flip`` flips slices left-right with probability 0.5 (training augmentation).
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        domain: str,
        slices_per_volume: int | None = None,
        pixdim: Sequence[float] = (1.0, 1.0),
        image_size: int = 256,
        ct_window: Sequence[float] = (-1000.0, 1000.0),
        mri_percentiles: Sequence[float] = (0.5, 99.5),
        min_foreground: float = 0.05,
        random_slices: bool = False,
        random_flip: bool = False,
        seed: int | None = None,
        cache_volumes: int = 4,
        axcodes: str = DEFAULT_AXCODES,
    ) -> None:
        self.files = [Path(f) for f in files]
        if not self.files:
            raise InputImageError(f"no {domain} volumes given")
        if slices_per_volume is not None and slices_per_volume < 1:
            raise ValueError(f"slices_per_volume must be >= 1 or None, got {slices_per_volume}")
        self.domain = domain
        self.slices_per_volume = slices_per_volume
        self.min_foreground = float(min_foreground)
        self.random_slices = random_slices
        self.random_flip = random_flip
        self.cache_volumes = max(1, int(cache_volumes))
        self.transform = volume_slice_transforms(
            domain, pixdim=pixdim, image_size=image_size, ct_window=ct_window,
            mri_percentiles=mri_percentiles, axcodes=axcodes,
        )
        self._rng = _WorkerRNG(seed)
        self._cache: OrderedDict[int, tuple[torch.Tensor, dict]] = OrderedDict()
        self._foreground: dict[int, np.ndarray] = {}
        self._index: list[tuple[int, int]] | None = None
        if slices_per_volume is None:
            self._index = [(v, int(k)) for v in range(len(self.files)) for k in self.foreground_slices(v)]

    def __len__(self) -> int:
        if self._index is not None:
            return len(self._index)
        return len(self.files) * int(self.slices_per_volume or 0)

    def _load(self, v: int) -> tuple[torch.Tensor, dict]:
        if v in self._cache:
            self._cache.move_to_end(v)
            return self._cache[v]
        path = self.files[v]
        try:
            img = self.transform({"image": str(path)})["image"]
        except Exception as exc:  # noqa: BLE001 - unwrap MONAI's RuntimeError
            _reraise_input_error(exc)
        params = dict(img.meta.get(INTENSITY_META_KEY, {})) if isinstance(img, MetaTensor) else {}
        vol = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        self._cache[v] = (vol.float().contiguous(), params)
        while len(self._cache) > self.cache_volumes:
            self._cache.popitem(last=False)
        if v not in self._foreground:
            frac = (vol[0] > FOREGROUND_LEVEL).float().mean(dim=(0, 1)).numpy()
            fg = np.nonzero(frac > self.min_foreground)[0]
            if fg.size == 0:
                raise InputImageError(
                    f"{path}: no axial slice has more than {self.min_foreground:.0%} foreground "
                    f"(values above the background level); wrong modality or intensity range?"
                )
            self._foreground[v] = fg
        return self._cache[v]

    def foreground_slices(self, v: int) -> np.ndarray:
        """Indices (array axis 2) of the foreground slices of volume ``v``."""
        if v not in self._foreground:
            self._load(v)
        return self._foreground[v]

    def item_name(self, index: int) -> str:
        v = self._index[index][0] if self._index is not None else index // int(self.slices_per_volume or 1)
        return str(self.files[v])

    def _locate(self, index: int) -> tuple[int, int]:
        if self._index is not None:
            return self._index[index]
        spv = int(self.slices_per_volume or 1)
        v, j = divmod(index, spv)
        fg = self.foreground_slices(v)
        if self.random_slices:
            return v, int(fg[self._rng.get().integers(fg.size)])
        return v, int(fg[min(fg.size - 1, int(math.floor((j + 0.5) * fg.size / spv)))])

    def __getitem__(self, index: int) -> MetaTensor:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} slices")
        v, k = self._locate(index)
        vol, params = self._load(v)
        sl = vol[..., k].clone()  # (1, S, S)
        if self.random_flip and self._rng.get().random() < 0.5:
            sl = torch.flip(sl, dims=(HORIZONTAL_FLIP_AXIS + 1,))
        meta = {"filename_or_obj": str(self.files[v]), "slice_index": k, INTENSITY_META_KEY: params}
        return MetaTensor(sl, meta=meta)


def detect_layout(dataset_dir: str | Path) -> str:
    """ "images" (trainA/trainB/testA/testB folders) or "volumes" (volumes/ct and volumes/mri)."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise InputImageError(f"{root}: dataset folder not found")
    if all((root / f).is_dir() for f in IMAGE_FOLDERS["train"]):
        return "images"
    if all((root / f).is_dir() for f in VOLUME_FOLDERS):
        return "volumes"
    if all((root / f).is_dir() for f in IMAGE_FOLDERS["test"]):
        return "images"
    raise InputImageError(
        f"{root}: unknown dataset layout; expected trainA/ trainB/ (and testA/ testB/) folders of 2D images, "
        f"or volumes/ct/ and volumes/mri/ with NIfTI files or DICOM series folders"
    )


def effective_split(dataset_dir: str | Path, split: str) -> str:
    """The split ``build_unpaired_dataset`` really reads for ``split``: "test" falls back to the validation split
    when there are no testA/testB folders (always for volumes); say so in reports."""
    if split != "test":
        return split
    root = Path(dataset_dir)
    if all((root / f).is_dir() for f in IMAGE_FOLDERS["test"]) and detect_layout(root) == "images":
        return "test"
    return "val (no testA/testB: the validation split of the training folders)"


def build_unpaired_dataset(
    dataset_dir: str | Path,
    split: str = "train",
    image_size: int = 256,
    size_policy: str = "fit",
    training: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
    layout: str = "auto",
    pixdim: Sequence[float] = (1.0, 1.0),
    ct_window: Sequence[float] = (-1000.0, 1000.0),
    mri_percentiles: Sequence[float] = (0.5, 99.5),
    slices_per_volume: int | None = None,
    random_pairing: bool | None = None,
    image_transform: Callable | None = None,
    cache_rate: float = 0.0,
) -> UnpairedDataset:
    """The unpaired CT / MRI dataset of ``dataset_dir`` for ``split`` ("train", "val" or "test").

    Layouts: "images" (trainA = CT, trainB = MRI, testA, testB; 2D image files) or "volumes"
    (volumes/ct, volumes/mri; axial slices of NIfTI files / DICOM series folders); "auto" detects it.
    "val" is a deterministic ``val_fraction`` of the training files (chosen with ``seed``) that "train" then
    leaves out; "test" uses testA/testB and falls back to "val" when they are absent (always for volumes).
    ``training`` turns on random flips, random crops ("resize_crop") and random pairing (unless
    ``random_pairing`` says otherwise). ``image_transform``, when given, replaces the default 2D pipeline
    (``image_file_transforms``) for both domains (each gets its own copy): this is how the bundle declares it.
    ``cache_rate``: share of 2D images kept decoded in memory (see `ImageFolderDataset`; volumes keep their own
    small cache of volumes).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    root = Path(dataset_dir)
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in ("images", "volumes"):
        raise ValueError(f"layout must be 'auto', 'images' or 'volumes', got {layout!r}")
    pairing = training if random_pairing is None else random_pairing

    if layout == "images":
        test_dirs = [root / f for f in IMAGE_FOLDERS["test"]]
        if split == "test" and all(d.is_dir() for d in test_dirs):
            groups = [list_images(d) for d in test_dirs]
        else:
            if split == "test":
                logger.warning("%s has no testA/testB: using the validation split for testing", root)
            groups = _split(
                [list_images(root / f) for f in IMAGE_FOLDERS["train"]], split, val_fraction, seed
            )
        ct, mri = (
            ImageFolderDataset(files, transform=None if image_transform is None else copy.deepcopy(image_transform),
                               image_size=image_size, size_policy=size_policy, training=training,
                               seed=None if seed is None else seed + i, cache_rate=cache_rate)
            for i, files in enumerate(groups)
        )
    else:
        if split == "test":
            logger.warning("volume layout has no test folders: using the validation split of %s", root)
        groups = _split([list_volumes(root / f) for f in VOLUME_FOLDERS], split, val_fraction, seed)
        ct, mri = (
            VolumeSliceDataset(
                files, domain, slices_per_volume=slices_per_volume, pixdim=pixdim, image_size=image_size,
                ct_window=ct_window, mri_percentiles=mri_percentiles,
                random_slices=training and slices_per_volume is not None, random_flip=training,
                seed=None if seed is None else seed + i,
            )
            for i, (files, domain) in enumerate(zip(groups, ("ct", "mri"), strict=True))
        )
    return UnpairedDataset(ct, mri, random_pairing=pairing, seed=seed)


def _split(groups: list[list[Path]], split: str, val_fraction: float, seed: int) -> list[list[Path]]:
    if split == "train":
        return [split_train_val(files, val_fraction, seed)[0] for files in groups]
    if val_fraction <= 0.0:
        raise ValueError(f"split {split!r} needs val_fraction > 0 (or testA/testB folders)")
    return [split_train_val(files, val_fraction, seed)[1] for files in groups]
