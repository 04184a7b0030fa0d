"""What the training images of each domain look like, measured once when the contract is built (`TrainingReference`).

On a seeded subsample of each domain's training folder (``max_images``, default 128; the whole folder when smaller):
every image through the model's own 2D pipeline (the frame the generator saw), its head by `image_head_mask`, then

* the head extent: the longer side of the head's bounding box in frame px (median, 25th / 75th percentiles; in mm
  where the card gives the pixel size, i.e. the "spacing" framing);
* the in-head [-1, 1] values pooled: their quantiles at ``QUANTILE_LEVELS`` (the MRI ones are the Nyul-Udupa
  landmarks when the MRI normalisation is unknown);
* ``halves_distance``: the 1-Wasserstein distance between the pooled in-head values of two random halves of the
  subsample, the yardstick of the domain gap. It shrinks as the subsample grows (about as 1 / sqrt(n)), so a
  volume's gap ratio is measured against the spread of ``max_images / 2`` training images;
* ``image_distance_p95``: how far single training images lie from all of them (95th percentile), the limit beyond
  which an input is "far from training" (one image, or a volume of one head, varies far more than a pool).

The images layout only: models trained on volumes keep their declared intensity mappings and framing by pixel size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ctmri_monai.data.folders import IMAGE_FOLDERS, list_images
from ctmri_monai.spec import ModelSpec, TrainingReference
from ctmri_monai.transforms.gap import in_head_quantiles, quantile_distance
from ctmri_monai.transforms.mask import image_head_mask, mask_extent
from ctmri_monai.transforms.pipelines import image_pipeline

__all__ = ["MAX_IMAGES", "measure_reference", "training_references"]

logger = logging.getLogger(__name__)

MAX_IMAGES = 128


def measure_reference(files: Sequence[Path], spec: ModelSpec, source_pixdim: Sequence[float] | None = None,
                      max_images: int = MAX_IMAGES, seed: int = 0) -> TrainingReference:
    """The `TrainingReference` of one domain's training ``files`` framed by ``spec`` (module docstring)."""
    files = sorted(Path(f) for f in files)
    rng = np.random.default_rng(seed)
    chosen = [files[i] for i in sorted(rng.permutation(len(files))[:max_images])]
    pipeline = image_pipeline(spec, source_pixdim=source_pixdim)
    extents: list[float] = []
    values: list[np.ndarray] = []
    for path in chosen:
        frame = pipeline({"image": str(path)})["image"].as_tensor()[0].numpy()
        mask = image_head_mask(frame)
        extent = mask_extent(mask)
        if extent is None:
            continue
        extents.append(extent[0])
        values.append(frame[mask])
    if not values:
        return TrainingReference(images=0)
    halves_distance = None
    if len(values) > 1:
        halves = [np.concatenate([values[i] for i in part])
                  for part in np.array_split(rng.permutation(len(values)), 2)]
        halves_distance = quantile_distance(in_head_quantiles(halves[0]), in_head_quantiles(halves[1]))
    pooled = in_head_quantiles(np.concatenate(values))
    singles = [quantile_distance(in_head_quantiles(v), pooled) for v in values]
    px = np.asarray(extents)
    pixdim = spec.geometry.pixdim
    return TrainingReference(
        head_extent_px=round(float(np.median(px)), 3),
        head_extent_spread=(round(float(np.percentile(px, 25)), 3), round(float(np.percentile(px, 75)), 3)),
        head_extent_mm=round(float(np.median(px)) * float(pixdim[0]), 3) if pixdim else None,
        quantiles=tuple(round(float(q), 6) for q in pooled),
        halves_distance=None if halves_distance is None else round(halves_distance, 6),
        images=len(values), image_distance_p95=round(float(np.percentile(singles, 95)), 6))


def training_references(dataset_dir: str | os.PathLike, spec: ModelSpec,
                        pixel_mm: dict[str, float | None] | None = None,
                        max_images: int = MAX_IMAGES) -> dict[str, TrainingReference]:
    """{"ct": ..., "mri": ...}: the references of the training folders of a 2D image dataset."""
    root = Path(dataset_dir)
    out = {}
    for folder, domain in zip(IMAGE_FOLDERS["train"], ("ct", "mri"), strict=True):
        px = (pixel_mm or {}).get(domain)
        ref = measure_reference(list_images(root / folder), spec, None if px is None else (px, px), max_images)
        logger.info("model contract: %s training heads span %s px (25-75 %%: %s) of %d; in-head halves distance %s "
                    "(%d images)", domain.upper(), ref.head_extent_px, ref.head_extent_spread,
                    spec.geometry.image_size, ref.halves_distance, ref.images)
        out[domain] = ref
    return out
