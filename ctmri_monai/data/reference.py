"""What the training data of each domain look like, measured once when the contract is built (`TrainingReference`).

On a seeded subsample of each domain's training data, each unit through the model's own pipeline (the frame the
generator saw), its head by the mask function the conversion uses for it, then

* the head extent: the longer side of the head's bounding box in frame px (median, 25th / 75th percentiles; in mm
  for the "spacing" framing, where the network's pixel size is known);
* the in-head [-1, 1] values pooled: their quantiles at ``QUANTILE_LEVELS`` (the MRI ones are the Nyul-Udupa
  landmarks when the MRI normalisation is unknown);
* ``halves_distance``: the 1-Wasserstein distance between the pooled in-head values of two random halves of the
  subsample, the yardstick of the domain gap. It shrinks as the subsample grows (about as 1 / sqrt(n)), so a
  volume's gap ratio is measured against the spread of half the subsample;
* ``image_distance_p95``: how far single units lie from the pool (95th percentile), the limit beyond which an input
  is "far from training" (one image, or a volume of one head, varies far more than a pool).

Images layout (`training_references`): up to ``MAX_IMAGES`` (128) images of each training folder through
`image_pipeline`, heads by `image_head_mask`; the unit is one image.

Volumes layout (`volume_training_references`): up to ``MAX_VOLUMES`` (32) volumes of the training split
(`split_files`, so validation and test subjects stay out) through `volume_pipeline` with the input's head mask from
its own units, exactly as `translate_volume` frames a volume to convert. The unit is one volume: a conversion's gap
pools every in-head voxel of one volume, so the "far" limit must be the spread of whole training volumes, computed
the same way (a training volume converted gets its own single distance); single slices vary far more and would set
a limit no volume reaches. The pool takes up to ``SLICES_PER_VOLUME`` (16) seeded head slices of each volume (head
over ``MIN_FOREGROUND`` of the frame, the slices training draws). These models keep their declared intensity
mappings and "spacing" framing (no head framing, no standardisation): only the gap is reported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ctmri_monai.data.folders import IMAGE_FOLDERS, list_images, split_files
from ctmri_monai.data.images import reraise_input_error
from ctmri_monai.data.volumes import MIN_FOREGROUND
from ctmri_monai.spec import ModelSpec, TrainingReference
from ctmri_monai.transforms.gap import in_head_quantiles, quantile_distance
from ctmri_monai.transforms.mask import image_head_mask, mask_extent, reference_head_extent
from ctmri_monai.transforms.pipelines import image_pipeline, volume_pipeline

__all__ = ["MAX_IMAGES", "MAX_VOLUMES", "SLICES_PER_VOLUME", "measure_reference", "measure_volume_reference",
           "summarise", "training_references", "volume_training_references"]

logger = logging.getLogger(__name__)

MAX_IMAGES, MAX_VOLUMES, SLICES_PER_VOLUME = 128, 32, 16


def summarise(extents: Sequence[float], pooled: Sequence[np.ndarray], singles: Sequence[np.ndarray],
              spec: ModelSpec, rng: np.random.Generator) -> TrainingReference:
    """The `TrainingReference` of training units (images, or volumes): per unit its head ``extents`` (frame px),
    its in-head values ``pooled`` into the training distribution and its own in-head quantiles ``singles``."""
    if not pooled:
        return TrainingReference(images=0)
    halves_distance = None
    if len(pooled) > 1:
        halves = [np.concatenate([pooled[i] for i in part])
                  for part in np.array_split(rng.permutation(len(pooled)), 2)]
        halves_distance = quantile_distance(in_head_quantiles(halves[0]), in_head_quantiles(halves[1]))
    reference = in_head_quantiles(np.concatenate(pooled))
    distances = [quantile_distance(q, reference) for q in singles]
    px = np.asarray(extents)
    pixdim = spec.geometry.pixdim
    return TrainingReference(
        head_extent_px=round(float(np.median(px)), 3),
        head_extent_spread=(round(float(np.percentile(px, 25)), 3), round(float(np.percentile(px, 75)), 3)),
        head_extent_mm=round(float(np.median(px)) * float(pixdim[0]), 3) if pixdim else None,
        quantiles=tuple(round(float(q), 6) for q in reference),
        halves_distance=None if halves_distance is None else round(halves_distance, 6),
        images=len(pooled), image_distance_p95=round(float(np.percentile(distances, 95)), 6))


def _subsample(files: Sequence[Path], n: int, rng: np.random.Generator) -> list[Path]:
    files = sorted(Path(f) for f in files)
    return [files[i] for i in sorted(rng.permutation(len(files))[:n])]


def measure_reference(files: Sequence[Path], spec: ModelSpec, source_pixdim: Sequence[float] | None = None,
                      max_images: int = MAX_IMAGES, seed: int = 0) -> TrainingReference:
    """The `TrainingReference` of one domain's training image ``files`` framed by ``spec`` (module docstring)."""
    rng = np.random.default_rng(seed)
    pipeline = image_pipeline(spec, source_pixdim=source_pixdim)
    extents: list[float] = []
    values: list[np.ndarray] = []
    for path in _subsample(files, max_images, rng):
        frame = pipeline({"image": str(path)})["image"].as_tensor()[0].numpy()
        mask = image_head_mask(frame)
        extent = mask_extent(mask)
        if extent is None:
            continue
        extents.append(extent[0])
        values.append(frame[mask])
    return summarise(extents, values, [in_head_quantiles(v) for v in values], spec, rng)


def measure_volume_reference(files: Sequence[Path], spec: ModelSpec, domain: str, max_volumes: int = MAX_VOLUMES,
                             slices_per_volume: int = SLICES_PER_VOLUME, seed: int = 0) -> TrainingReference:
    """The `TrainingReference` of one domain's training volumes ``files`` framed by ``spec`` (module docstring):
    each through `volume_pipeline` with the input's head mask, as conversion frames it."""
    rng = np.random.default_rng(seed)
    pipeline = volume_pipeline(spec, domain, load=True, head_key="head")
    extents: list[float] = []
    pooled: list[np.ndarray] = []
    singles: list[np.ndarray] = []
    for path in _subsample(files, max_volumes, rng):
        try:
            framed = pipeline({"image": str(path)})
        except Exception as exc:  # noqa: BLE001 - unwrap MONAI's RuntimeError: one error naming the file
            reraise_input_error(exc)
        frames, mask = framed["image"].as_tensor()[0].numpy(), np.asarray(framed["head"])[0] > 0
        extent = reference_head_extent(mask, "volumes")
        if extent is None:
            continue
        head = np.flatnonzero(mask.mean(axis=(0, 1)) > MIN_FOREGROUND)
        head = head if head.size else np.flatnonzero(mask.any(axis=(0, 1)))
        chosen = np.sort(rng.permutation(head)[:slices_per_volume])
        extents.append(extent)
        pooled.append(frames[..., chosen][mask[..., chosen]])
        singles.append(in_head_quantiles(frames, mask))
    return summarise(extents, pooled, singles, spec, rng)


def training_references(dataset_dir: str | os.PathLike, spec: ModelSpec,
                        pixel_mm: dict[str, float | None] | None = None,
                        max_images: int = MAX_IMAGES) -> dict[str, TrainingReference]:
    """{"ct": ..., "mri": ...}: the references of the training folders of a 2D image dataset."""
    root = Path(dataset_dir)
    out = {}
    for folder, domain in zip(IMAGE_FOLDERS["train"], ("ct", "mri"), strict=True):
        px = (pixel_mm or {}).get(domain)
        ref = measure_reference(list_images(root / folder), spec, None if px is None else (px, px), max_images)
        _log(domain, ref, spec, "images")
        out[domain] = ref
    return out


def _log(domain: str, ref: TrainingReference, spec: ModelSpec, unit: str) -> None:
    logger.info("model contract: %s training heads span %s px (25-75 %%: %s) of %d; in-head halves distance %s "
                "(%d %s)", domain.upper(), ref.head_extent_px, ref.head_extent_spread, spec.geometry.image_size,
                ref.halves_distance, ref.images, unit)


def volume_training_references(dataset_dir: str | os.PathLike, spec: ModelSpec, val_fraction: float = 0.1,
                               seed: int = 0, max_volumes: int = MAX_VOLUMES) -> dict[str, TrainingReference]:
    """{"ct": ..., "mri": ...}: the references of the training split of a volumes dataset (module docstring)."""
    out = {}
    for files, domain in zip(split_files(dataset_dir, "volumes", "train", val_fraction, seed), ("ct", "mri"),
                             strict=True):
        out[domain] = measure_volume_reference(files, spec, domain, max_volumes, seed=seed)
        _log(domain, out[domain], spec, "volumes")
    return out
