"""Pictures for people: the one [-1, 1] -> 8-bit mapping and atomic PNG writing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ctmri_monai.io.atomic import atomic_write

__all__ = ["save_png", "unit_to_uint8"]


def unit_to_uint8(image: Any) -> np.ndarray:
    """[-1, 1] values (array or tensor, singleton axes dropped) -> uint8 [0, 255], rounded to nearest, clipped."""
    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    array = np.squeeze(np.asarray(array, dtype=np.float32))
    return np.clip(np.rint((array + 1.0) * 127.5), 0, 255).astype(np.uint8)


def save_png(image: Any, path: str | os.PathLike) -> Path:
    """Write a uint8 (H, W) or (H, W, 3) array, or a PIL image, as PNG atomically."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
