"""Loading transforms: 2D image files through MONAI's ``PILReader`` and volumes through the one volume loader.

2D files are read with ``PILReader(reverse_indexing=False)`` so arrays are ``(C, H, W)`` with row 0 at the top of
the picture, as PIL shows it, and converted to one gray channel by PIL (ITU-R 601 luma; 16-bit and float images
are scaled to 8 bits by their range). Every reading failure becomes one `InputError` naming the file.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import LoadImaged, MapTransform

from ctmri_monai.io.errors import CtmriError, InputError
from ctmri_monai.io.preconditions import pil_image_problem
from ctmri_monai.io.volume import load_volume, read_error

__all__ = ["LoadVolumed", "SafeLoadImaged", "pil_to_gray"]

logger = logging.getLogger(__name__)


def pil_to_gray(image: Any) -> Any:
    """PIL converter for ``PILReader``: any mode -> 8-bit "L"; 16-bit and float images are scaled by their range
    (PIL's own ``convert("L")`` would clip them)."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        from PIL import Image

        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or (arr.size and arr.max() > 255) else 255.0
        return Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    return image if mode == "L" else image.convert("L")


def _check_pil_image(path: Path) -> None:
    """The preconditions of a 2D image file, from its header (`pil_image_problem`); a file PIL cannot open is
    left to the reader, which names the problem."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            problem = pil_image_problem(image)
    except (OSError, UnidentifiedImageError, ValueError):
        return
    if problem:
        raise InputError(path, problem)


class SafeLoadImaged(LoadImaged):
    """``LoadImaged`` for 2D image files that turns any reading failure into one `InputError` naming the file;
    several frames or a mode without gray are refused first (`ctmri_monai.io.preconditions`)."""

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        names = [data[k] for k in self.key_iterator(dict(data))]
        for name in names:
            path = Path(str(name))
            if not path.exists():
                raise InputError(name, "file not found")
            if path.is_file() and path.stat().st_size == 0:
                raise InputError(name, "file is empty")
            _check_pil_image(path)
        try:
            return super().__call__(data, reader)
        except CtmriError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure becomes a clear input error
            raise read_error(", ".join(map(str, names)), exc) from exc


class LoadVolumed(MapTransform):
    """Load the volume named under each key with `ctmri_monai.io.load_volume`: a (1, X, Y, Z) float32 MetaTensor
    in RAS; its warnings are logged. ``max_voxels`` refuses larger volumes from their headers."""

    def __init__(self, keys: KeysCollection, max_voxels: int | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.max_voxels = max_voxels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            volume = load_volume(d[key], max_voxels=self.max_voxels)
            for warning in volume.warnings:  # unusual but usable (oblique slices, a header without qform/sform)
                logger.warning("%s: %s", volume.path, warning)
            d[key] = volume.image
        return d
