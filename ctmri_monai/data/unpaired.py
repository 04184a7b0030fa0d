"""Unpaired CT / MRI datasets of a dataset folder, with the model's preprocessing."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import Compose, Randomizable
from torch.utils.data import Dataset

from ctmri_monai import DOMAINS
from ctmri_monai.data.card import find_card
from ctmri_monai.data.folders import detect_layout, split_files
from ctmri_monai.data.images import ImageFolderDataset
from ctmri_monai.data.volumes import VolumeSliceDataset
from ctmri_monai.io.errors import InputError
from ctmri_monai.spec import ModelSpec
from ctmri_monai.transforms.pipelines import image_pipeline, volume_pipeline

__all__ = ["UnpairedDataset", "build_unpaired_dataset", "dataset_transforms"]

logger = logging.getLogger(__name__)


class UnpairedDataset(Dataset, Randomizable):
    """Unpaired CT / MRI items ``{"ct", "mri", "ct_valid", "mri_valid", "ct_path", "mri_path"}``.

    Length is ``max(len(ct), len(mri))``. With ``random_pairing`` (training, like the reference CycleGAN) item ``i``
    holds ``ct[i % len(ct)]`` and a random MRI item. Without it (evaluation) both sides are sequential:
    ``ct[i % len(ct)]`` with ``ct_valid = i < len(ct)``, and the same for MRI, so metrics can ignore the repeated
    (padding) items. ``set_random_state`` (MONAI's ``DataLoader`` calls it in every worker) seeds both sides too.
    """

    def __init__(self, ct: Dataset, mri: Dataset, random_pairing: bool = True, seed: int | None = None) -> None:
        self.ct, self.mri = ct, mri
        self.n_ct, self.n_mri = len(ct), len(mri)  # type: ignore[arg-type]
        if self.n_ct == 0 or self.n_mri == 0:
            raise InputError("unpaired dataset", f"needs both domains: {self.n_ct} CT, {self.n_mri} MRI items")
        self.random_pairing = random_pairing
        if seed is not None:
            self.set_random_state(seed)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        for offset, side in enumerate((self.ct, self.mri), start=1):
            if hasattr(side, "set_random_state"):
                side.set_random_state(seed=None if seed is None else seed + offset)
            elif isinstance(getattr(side, "transform", None), Randomizable):
                side.transform.set_random_state(seed=None if seed is None else seed + offset)
        return self

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
            i_mri = int(self.R.randint(self.n_mri))
            ct_valid = mri_valid = True
        else:
            i_mri = index % self.n_mri
            ct_valid, mri_valid = index < self.n_ct, index < self.n_mri
        return {"ct": self.ct[i_ct], "mri": self.mri[i_mri], "ct_valid": ct_valid, "mri_valid": mri_valid,
                "ct_path": self._name(self.ct, i_ct), "mri_path": self._name(self.mri, i_mri)}


def _layout(spec: ModelSpec, dataset_dir: Path) -> str:
    return spec.layout if spec.layout in ("images", "volumes") else detect_layout(dataset_dir)


def dataset_transforms(spec: ModelSpec, dataset_dir: str | os.PathLike, training: bool = False,
                       dataset_card: str | os.PathLike | None = None) -> dict[str, Compose]:
    """{"ct": ..., "mri": ...}: the model's preprocessing of each domain's files in ``dataset_dir``: the image
    pipeline (with the card's pixel sizes) for 2D image folders, the volume pipeline (loading) for volumes."""
    root = Path(dataset_dir)
    if _layout(spec, root) == "volumes":
        return {d: volume_pipeline(spec, d, load=True) for d in DOMAINS}
    card = find_card(root, dataset_card)
    pixel = card.pixel_spacing_mm if card is not None else {"ct": None, "mri": None}
    return {d: image_pipeline(spec, training=training,
                              source_pixdim=None if pixel[d] is None else (pixel[d], pixel[d])) for d in DOMAINS}


def build_unpaired_dataset(dataset_dir: str | os.PathLike, spec: ModelSpec, split: str = "train",
                           training: bool = True, val_fraction: float = 0.1, seed: int = 0,
                           transforms: Mapping[str, Callable] | None = None,
                           dataset_card: str | os.PathLike | None = None, slices_per_volume: int | None = None,
                           random_pairing: bool | None = None, cache_rate: float = 0.0) -> UnpairedDataset:
    """The unpaired CT / MRI dataset of ``dataset_dir`` for ``split`` ("train", "val" or "test"), preprocessed by
    ``transforms`` (default `dataset_transforms` of ``spec``: the bundle declares them).

    ``training`` turns on random pairing (unless ``random_pairing`` says otherwise) and, for volumes, random slices
    and flips (2D images get theirs from their training pipeline). With the contract's ``context_slices`` k, volume
    items are stacks of 4k + 1 slices: what a training cycle needs (`ctmri_monai.engines.cycle`). ``cache_rate``:
    share of 2D images kept decoded in memory; volumes keep their own small cache.
    """
    root = Path(dataset_dir)
    layout = _layout(spec, root)
    transforms = dict(transforms) if transforms is not None else dataset_transforms(spec, root, training, dataset_card)
    groups = split_files(root, layout, split, val_fraction, seed)
    if layout == "images":
        ct, mri = (ImageFolderDataset(files, transforms[d], cache_rate=cache_rate)
                   for files, d in zip(groups, DOMAINS, strict=True))
    else:
        ct, mri = (VolumeSliceDataset(files, transforms[d], context=2 * spec.geometry.context_slices,
                                      slices_per_volume=slices_per_volume,
                                      random_slices=training and slices_per_volume is not None, random_flip=training)
                   for files, d in zip(groups, DOMAINS, strict=True))
    pairing = training if random_pairing is None else random_pairing
    return UnpairedDataset(ct, mri, random_pairing=pairing, seed=seed)
