"""Pictures for people: the one [-1, 1] -> 8-bit mapping, image grids, and atomic PNG writing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ctmri_monai.io.atomic import atomic_write

__all__ = ["image_grid", "save_png", "unit_to_uint8"]


def unit_to_uint8(image: Any) -> np.ndarray:
    """[-1, 1] values (array or tensor, singleton axes dropped) -> uint8 [0, 255], rounded to nearest, clipped."""
    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    array = np.squeeze(np.asarray(array, dtype=np.float32))
    return np.clip(np.rint((array + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(rows: Sequence[Sequence[Any]], gap: int = 2) -> np.ndarray:
    """Tile rows of equally sized [-1, 1] slices into one uint8 image, with white gaps."""
    tiles = [[unit_to_uint8(t) for t in row] for row in rows]
    h, w = tiles[0][0].shape
    n_cols = max(len(row) for row in tiles)
    grid = np.full((len(tiles) * (h + gap) - gap, n_cols * (w + gap) - gap), 255, np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile
    return grid


def save_png(image: Any, path: str | os.PathLike) -> Path:
    """Write a uint8 (H, W) or (H, W, 3) array, or a PIL image, as PNG atomically."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
