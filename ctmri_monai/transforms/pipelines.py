"""The preprocessing of every job, built from a `ModelSpec` and nothing else.

* `image_pipeline`: 2D image files (training, validation and evaluation of the images layout).
* `volume_pipeline`: a loaded volume -> (1, S, S, D) in [-1, 1] (training on volumes, conversion, paired
  evaluation). Its ``inverse`` (MONAI ``Compose.inverse``) undoes framing and orientation; the intensity is undone
  in the target domain by the caller (`ctmri_monai.transforms.intensity`).

The two agree by construction: an 8-bit CT image exported through the HU window [lo, hi] maps to [-1, 1] exactly
as its HU volume does through `volume_intensity`, and both are framed by the same `InPlaneFrame`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, Orientationd, RandFlipd

from ctmri_monai.io.errors import ContractError
from ctmri_monai.spec import ModelSpec
from ctmri_monai.transforms.checks import CheckGeometryd, CheckImaged
from ctmri_monai.transforms.intensity import (
    NyulStandardized,
    mri_standardisation,
    unit_from_eight_bit,
    volume_intensity,
)
from ctmri_monai.transforms.loading import LoadVolumed, SafeLoadImaged, pil_to_gray
from ctmri_monai.transforms.mask import HeadMaskd
from ctmri_monai.transforms.spatial import HORIZONTAL_FLIP_AXIS, InPlaneFramed

__all__ = ["ORIENTATION_LABELS", "image_pipeline", "volume_pipeline"]

ORIENTATION_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # MONAI labels for RAS-style axis codes


def _keys(keys: KeysCollection) -> list:
    return [keys] if isinstance(keys, str) else list(keys)


def image_pipeline(spec: ModelSpec, training: bool = False, source_pixdim: Sequence[float] | None = None,
                   keys: KeysCollection = ("image",)) -> Compose:
    """2D image file -> (1, S, S) float32 in [-1, 1], upright ``(C, H, W)``; training adds a random left-right
    flip and, for "resize_crop", a random crop position. ``source_pixdim``: the files' pixel size (mm) from the
    dataset card, needed by the "spacing" framing."""
    keys = _keys(keys)
    geometry = spec.geometry
    if geometry.context_slices:
        raise ContractError("context_slices", f"{geometry.context_slices}: 2D image files have no neighbouring "
                            "slices; train with context_slices 0 or on the volumes layout")
    if geometry.framing == "spacing" and source_pixdim is None:
        raise ContractError("dataset card", "the 'spacing' framing of 2D images needs their pixel size "
                            "(pixel_spacing_mm in dataset.json)")
    steps: list = [
        SafeLoadImaged(keys, reader="PILReader", image_only=True, reverse_indexing=False, converter=pil_to_gray),
        EnsureChannelFirstd(keys),
        CheckImaged(keys, spatial_ndim=2, max_channels=1),
        unit_from_eight_bit(keys),
        InPlaneFramed.from_geometry(keys, geometry, source_pixdim=source_pixdim, random_crop=training),
    ]
    if training:
        steps.append(RandFlipd(keys, prob=0.5, spatial_axis=HORIZONTAL_FLIP_AXIS))
    steps.append(EnsureTyped(keys, dtype=torch.float32, track_meta=True))
    return Compose(steps)


def volume_pipeline(spec: ModelSpec, domain: str, keys: KeysCollection = ("image",), load: bool = False,
                    max_voxels: int | None = None, head_key: str | None = None) -> Compose:
    """A (1, X, Y, Z) volume of ``domain`` (or, with ``load``, its path) -> (1, S, S, D) float32 in [-1, 1].

    Orientation ``spec.geometry.axcodes`` (default "PLS": axial slices along the last axis, upright in the
    radiological convention like the 2D images), the contract's intensity mapping, then the in-plane framing.
    ``head_key`` (one image key only): also the input's head mask from its own units (`HeadMaskd`, +1 / -1), framed
    like the image; it lets "fit" models frame by the head and, after framing, MRI of an unknown training
    normalisation be standardised onto the training landmarks (`NyulStandardized`).
    """
    keys = _keys(keys)
    geometry = spec.geometry
    steps: list = [LoadVolumed(keys, max_voxels=max_voxels), CheckGeometryd(keys, spec)] if load else []
    steps.append(CheckImaged(keys, spatial_ndim=3, max_channels=1, reject_constant=True))
    framed = keys
    if head_key is not None:
        if len(keys) != 1:
            raise ValueError("head_key needs exactly one image key")
        steps.append(HeadMaskd(keys[0], domain, head_key))
        framed = [*keys, head_key]
    steps += [
        Orientationd(framed, axcodes=geometry.axcodes, labels=ORIENTATION_LABELS,
                     allow_missing_keys=head_key is not None),
        volume_intensity(spec, domain, keys),
        InPlaneFramed.from_geometry(framed, geometry, head_extent=spec.head_extent(domain) if head_key else None,
                                    head_key=head_key, allow_missing_keys=head_key is not None),
    ]
    landmarks = mri_standardisation(spec) if head_key is not None and domain == "mri" else None
    if landmarks is not None:  # on the frames, where the training landmarks were measured
        steps.append(NyulStandardized(keys, landmarks, head_key))
    steps.append(EnsureTyped(framed, dtype=torch.float32, track_meta=True))
    return Compose(steps)
