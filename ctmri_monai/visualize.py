"""Pictures for people: image grids of [-1, 1] slices saved as 8-bit PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A (1, H, W) or (H, W) slice in [-1, 1] as a uint8 (H, W) array."""
    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    array = np.squeeze(array)
    return np.clip((array + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def image_grid(rows: Sequence[Sequence[torch.Tensor | np.ndarray]], gap: int = 2) -> np.ndarray:
    """Tile rows of equally sized slices into one uint8 image, with white gaps."""
    tiles = [[to_uint8(t) for t in row] for row in rows]
    h, w = tiles[0][0].shape
    n_cols = max(len(row) for row in tiles)
    grid = np.full((len(tiles) * (h + gap) - gap, n_cols * (w + gap) - gap), 255, np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile
    return grid


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 array as PNG atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    Image.fromarray(array).save(tmp)
    os.replace(tmp, path)
    return path
