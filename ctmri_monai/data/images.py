"""2D image files as a dataset: each file through the model's image pipeline, optionally cached decoded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monai.data import CacheDataset

from ctmri_monai.io.errors import find_input_error

__all__ = ["ImageFolderDataset", "reraise_input_error"]


def reraise_input_error(exc: BaseException) -> None:
    """Raise the project error hidden in MONAI's ``RuntimeError`` wrapping, else ``exc`` itself."""
    err = find_input_error(exc)
    if err is not None:
        raise err from exc
    raise exc


class ImageFolderDataset(CacheDataset):
    """2D image files -> what ``transform`` makes of ``{key: path}`` (the model's `image_pipeline`): ``(1, S, S)``.

    A bad file raises `InputError` naming it. ``cache_rate``: the share of images whose decoded result (the
    transforms before the first random one) MONAI's ``CacheDataset`` keeps in memory, filled at construction with
    ``cache_workers`` threads (0: nothing cached, every access decodes). Random transforms are seeded by MONAI's
    ``DataLoader`` (``set_rnd``), or by ``seed``.
    """

    def __init__(self, files: Sequence[str | Path], transform: Callable, key: str = "image", seed: int | None = None,
                 cache_rate: float = 0.0, cache_workers: int = 2) -> None:
        self.files = [Path(f) for f in files]
        self.key = key
        if seed is not None and hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=seed)
        try:
            super().__init__([{key: str(f)} for f in self.files], transform, cache_rate=float(cache_rate),
                             num_workers=max(1, int(cache_workers)), progress=False)
        except Exception as exc:  # noqa: BLE001 - a bad file met while filling the cache
            reraise_input_error(exc)

    def item_name(self, index: int) -> str:
        return str(self.files[index])

    def _transform(self, index: int) -> Any:
        try:
            out = super()._transform(index)
        except Exception as exc:  # noqa: BLE001 - unwrap MONAI's RuntimeError
            reraise_input_error(exc)
        return out[self.key] if isinstance(out, dict) else out
