"""What the networks see: a grid of preprocessed training images of both domains, through the training pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctmri_monai.data import build_unpaired_dataset, spec_for_dataset
from ctmri_monai.io.images import image_grid, save_png


def spread_indices(n_items: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(n_items)`` (all of them when there are fewer)."""
    if n_items <= count:
        return list(range(n_items))
    return [int(round(i)) for i in np.linspace(0, n_items - 1, count)]


def preview_grid(dataset_dir: str | Path, image_size: int = 256, size_policy: str = "fit", per_domain: int = 16,
                 columns: int = 4, gap: int = 8, val_fraction: float = 0.1, seed: int = 0,
                 dataset_card: str | Path | None = None) -> np.ndarray:
    """Two blocks of ``per_domain`` preprocessed training images (CT left, MRI right) as a uint8 image.

    The images go through the model's training pipeline (the contract `spec_for_dataset` builds for this dataset)
    without random flips or random crops (``training=False``), from the training split the bundle uses.
    """
    spec = spec_for_dataset(dataset_dir, dataset_card=dataset_card, image_size=image_size, size_policy=size_policy)
    dataset = build_unpaired_dataset(dataset_dir, spec, split="train", training=False, val_fraction=val_fraction,
                                     seed=seed, dataset_card=dataset_card)
    blocks = []
    for domain in (dataset.ct, dataset.mri):
        tiles = [domain[i] for i in spread_indices(len(domain), per_domain)]
        rows = [tiles[r:r + columns] for r in range(0, len(tiles), columns)]
        blocks.append(image_grid(rows))
    height = max(b.shape[0] for b in blocks)
    padded = [np.pad(b, ((0, height - b.shape[0]), (0, 0)), constant_values=255) for b in blocks]
    spacer = np.full((height, gap), 255, np.uint8)
    return np.concatenate([padded[0], spacer, padded[1]], axis=1)


def save_preview(dataset_dir: str | Path, output: str | Path, **kwargs: object) -> Path:
    """Render :func:`preview_grid` to a PNG file."""
    return save_png(preview_grid(dataset_dir, **kwargs), output)  # type: ignore[arg-type]
