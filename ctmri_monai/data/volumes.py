"""Axial slices of 3D volumes as a dataset, each volume through the model's volume pipeline once."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import RandFlip, Randomizable
from torch.utils.data import Dataset

from ctmri_monai.data.images import reraise_input_error
from ctmri_monai.io.errors import InputError
from ctmri_monai.transforms.context import slice_stack
from ctmri_monai.transforms.mask import head_mask
from ctmri_monai.transforms.spatial import HORIZONTAL_FLIP_AXIS

__all__ = ["MIN_FOREGROUND", "VolumeSliceDataset"]

#: A head slice: its head covers more than this share of the frame (the slices training serves).
MIN_FOREGROUND = 0.05


class VolumeSliceDataset(Dataset, Randomizable):
    """Axial slices ``(2k + 1, S, S)`` of volumes (NIfTI files or DICOM series folders), air-only slices skipped.

    ``transform`` maps ``{"image": path}`` to a (1, S, S, D) volume (the model's `volume_pipeline` with
    ``load=True``); volumes are kept in a small LRU cache. Served slices are those whose head (the one head mask)
    covers more than ``min_foreground`` of the frame; ``context`` k adds k neighbours each side as channels (the
    volume's end slices repeat).

    * ``slices_per_volume=None``: every head slice of every volume, in order (all volumes are read once at
      construction to count them).
    * ``slices_per_volume=n``: ``n`` items per volume; random head slices when ``random_slices``, else ``n``
      evenly spaced ones.

    ``random_flip`` flips left-right with probability 0.5 (MONAI ``RandFlip``). Random choices are seeded by MONAI's
    ``DataLoader`` (``set_rnd``) or ``set_random_state``.
    """

    def __init__(self, files: Sequence[str | Path], transform: Callable, context: int = 0,
                 slices_per_volume: int | None = None, min_foreground: float = MIN_FOREGROUND,
                 random_slices: bool = False, random_flip: bool = False, cache_volumes: int = 4) -> None:
        self.files = [Path(f) for f in files]
        if not self.files:
            raise InputError("volume dataset", "no volumes given")
        if slices_per_volume is not None and slices_per_volume < 1:
            raise ValueError(f"slices_per_volume must be >= 1 or None, got {slices_per_volume}")
        self.transform, self.context = transform, int(context)
        self.slices_per_volume = slices_per_volume
        self.min_foreground = float(min_foreground)
        self.random_slices = random_slices
        self.flip = RandFlip(prob=0.5 if random_flip else 0.0, spatial_axis=HORIZONTAL_FLIP_AXIS)
        self.cache_volumes = max(1, int(cache_volumes))
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._foreground: dict[int, np.ndarray] = {}
        self._index: list[tuple[int, int]] | None = None
        if slices_per_volume is None:
            self._index = [(v, int(k)) for v in range(len(self.files)) for k in self.foreground_slices(v)]

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.flip.set_random_state(seed=None if seed is None else seed + 1, state=state)
        return self

    def __len__(self) -> int:
        if self._index is not None:
            return len(self._index)
        return len(self.files) * int(self.slices_per_volume or 0)

    def _load(self, v: int) -> torch.Tensor:
        if v in self._cache:
            self._cache.move_to_end(v)
            return self._cache[v]
        path = self.files[v]
        try:
            img = self.transform({"image": str(path)})["image"]
        except Exception as exc:  # noqa: BLE001 - unwrap MONAI's RuntimeError
            reraise_input_error(exc)
        vol = (img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)).float().contiguous()
        self._cache[v] = vol
        while len(self._cache) > self.cache_volumes:
            self._cache.popitem(last=False)
        if v not in self._foreground:
            area = head_mask(vol[0].numpy()).mean(axis=(0, 1))
            fg = np.nonzero(area > self.min_foreground)[0]
            if fg.size == 0:
                raise InputError(path, f"no axial slice has a head covering more than {self.min_foreground:.0%} of "
                                       "the frame; wrong modality or intensity range?")
            self._foreground[v] = fg
        return vol

    def foreground_slices(self, v: int) -> np.ndarray:
        """Indices (last axis) of the head slices of volume ``v``."""
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
            return v, int(fg[self.R.randint(fg.size)])
        return v, int(fg[min(fg.size - 1, int(math.floor((j + 0.5) * fg.size / spv)))])

    def __getitem__(self, index: int) -> MetaTensor:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} slices")
        v, k = self._locate(index)
        stack = self.flip(slice_stack(self._load(v), k, self.context))
        stack = stack.as_tensor() if isinstance(stack, MetaTensor) else stack
        return MetaTensor(stack, meta={"filename_or_obj": str(self.files[v]), "slice_index": k})
