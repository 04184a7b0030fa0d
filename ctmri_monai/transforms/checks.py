"""Checks of inputs: a loaded 2D image file (`CheckImaged`) and a volume against the model's data contract
(`check_contract`), before any conversion starts. A problem is one error naming the file; what is only unusual
comes back as warnings."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ctmri_monai.io.errors import ContractError, InputError
from ctmri_monai.io.preconditions import check_extent, check_slice_count, check_voxel_size
from ctmri_monai.spec import ModelSpec
from ctmri_monai.transforms.mask import head_mask

__all__ = ["CheckGeometryd", "CheckImaged", "check_contract", "check_framing", "check_geometry"]

#: A CT in Hounsfield units holds air (below -200 HU; an 8-bit export or a missing rescale starts at 0); values
#: beyond the plausible range mean a wrong rescale.
CT_AIR_BELOW, CT_PLAUSIBLE = -200.0, (-4000.0, 32767.0)
#: An MRI never holds values this far below zero; a CT in HU does (air).
MRI_LOWEST = -500.0


def _source_name(img: Any) -> str:
    if isinstance(img, MetaTensor) and img.meta.get("filename_or_obj"):
        return str(img.meta["filename_or_obj"])
    return "<in-memory image>"


class CheckImaged(MapTransform):
    """Check a loaded channel-first image: ``spatial_ndim`` spatial axes, non-empty, at most ``max_channels``
    channels, all values finite and, with ``reject_constant``, not all equal. Raises ``InputError`` naming
    the file."""

    def __init__(
        self,
        keys: KeysCollection,
        spatial_ndim: int = 2,
        max_channels: int = 4,
        reject_constant: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_ndim = int(spatial_ndim)
        self.max_channels = int(max_channels)
        self.reject_constant = bool(reject_constant)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            name = _source_name(img)
            shape = tuple(img.shape)
            if len(shape) != self.spatial_ndim + 1:
                raise InputError(
                    name, f"expected a {self.spatial_ndim}D image, got array shape {shape[1:]} "
                    f"with {shape[0]} channel(s)"
                )
            if shape[0] > self.max_channels:
                extra = f" (a {self.spatial_ndim + 1}D series?)" if self.max_channels == 1 else ""
                raise InputError(
                    name, f"expected a {self.spatial_ndim}D image with at most {self.max_channels} "
                    f"channel(s), got {shape[0]} channels/frames{extra}"
                )
            if min(shape) == 0:
                raise InputError(f"{name}: image is empty (shape {shape})")
            t = img if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img))
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise InputError(f"{name}: image contains NaN or Inf values")
            if self.reject_constant and bool(t.min() == t.max()):
                what = "no axial slice has anatomy: constant volume" if self.spatial_ndim == 3 else "constant image"
                raise InputError(f"{name}: {what} (every voxel is {float(t.min()):g}; blank or missing "
                                      "pixel data?)")
        return d


def check_geometry(path: Any, image: torch.Tensor, spec: ModelSpec) -> None:
    """The geometry preconditions of a loaded (1, X, Y, Z) MetaTensor that need the contract: a positive voxel
    size, a field of view that can hold a head, at least the 2k + 1 slices the model reads
    (`ctmri_monai.io.preconditions`). Raises `ContractError`."""
    if not isinstance(image, MetaTensor):
        return
    affine = np.asarray(image.affine, np.float64)
    check_voxel_size(path, affine, f"the model's framing ({spec.geometry.describe()})")
    geometry, shape = spec.geometry, tuple(int(v) for v in image.shape[1:])
    check_extent(path, affine, shape, geometry.image_size * geometry.pixdim[0] if geometry.pixdim else None)
    check_slice_count(path, affine, shape, geometry.context_slices)


def check_contract(path: Any, image: torch.Tensor, spec: ModelSpec, domain: str) -> list[str]:
    """Check a loaded (1, X, Y, Z) volume of ``domain`` against what ``spec`` relies on; returns warnings.

    Raises `InputError` for a constant volume, and `ContractError` when the contract cannot describe it: CT values
    that are not Hounsfield units (no air: an 8-bit export or a missing rescale), an "MRI" holding HU air, an
    in-plane pixel size that is not a positive number, a field of view that cannot hold a head, fewer axial slices
    than the model reads (`ctmri_monai.io.preconditions`; the readers checked value type and geometry).
    """
    lo, hi = float(image.min()), float(image.max())
    if lo == hi:
        raise InputError(path, f"constant image (every voxel is {lo:g}): no anatomy to convert (blank or missing "
                               "pixel data?)")
    check_geometry(path, image, spec)
    warnings: list[str] = []
    if domain == "ct":
        if lo > CT_AIR_BELOW:
            raise ContractError(path, f"CT values {lo:.4g}..{hi:.4g} are not Hounsfield units (no air below "
                                      f"{CT_AIR_BELOW:g} HU: an 8-bit export or a missing rescale slope/intercept?); "
                                      f"the model maps HU through its {spec.ct.describe()}")
        if lo < CT_PLAUSIBLE[0] or hi > CT_PLAUSIBLE[1]:
            warnings.append(f"CT values {lo:.4g}..{hi:.4g} go beyond any Hounsfield range (clipped by the CT "
                            "window); check the rescale slope/intercept")
    elif lo < MRI_LOWEST:
        raise ContractError(path, f"MRI values reach {lo:.4g}: far below zero, like air in a CT in Hounsfield units; "
                                  "is this a CT? (convert it with --direction ct2mri)")
    return warnings


class CheckGeometryd(MapTransform):
    """`check_geometry` of loaded volumes in a pipeline (training data: the same preconditions as conversion; the
    intensity plausibility of `check_contract` is conversion's, training data are declared by their card)."""

    def __init__(self, keys: KeysCollection, spec: ModelSpec, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spec = spec

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            check_geometry(_source_name(d[key]), d[key], self.spec)
        return d


def check_framing(path: Any, framed: torch.Tensor, resized_size: tuple[int, int], spec: ModelSpec,
                  mask: np.ndarray | None = None) -> list[str]:
    """After framing a volume to (1, S, S, D): refuse when the centre crop cut the head (the model's frame is too
    small for it), warn when the head fills less than 5 % of the frame (tiny field of view). ``mask``: the frames'
    head mask when the caller has it already."""
    s = spec.geometry.image_size
    mask = head_mask(framed[0].detach().cpu().numpy()) if mask is None else mask
    if not mask.any():
        raise ContractError(path, "no slice holds a head after the model's framing (all values at the background "
                                  "level): wrong modality or intensity range?")
    cropped = [i for i, n in enumerate(resized_size) if n > s]
    lines = ([mask[0], mask[-1]] if 0 in cropped else []) + ([mask[:, 0], mask[:, -1]] if 1 in cropped else [])
    border = np.stack(lines).mean(axis=(0, 1)) if lines else np.zeros(1)  # per slice: share of the cut edges
    if float(border.max()) > 0.05:
        geometry = spec.geometry
        scale = f" at {geometry.pixdim[0]:g} mm = {s * geometry.pixdim[0]:g} mm" if geometry.pixdim else ""
        raise ContractError(path, f"the head does not fit the model's frame ({s} px{scale}): the centre crop would "
                                  f"cut it and the cut part would not be converted (the model's framing: "
                                  f"{geometry.describe()}); crop the volume around the head, use a model trained with "
                                  "a larger frame, or override the framing (--framing fit), which the model did not "
                                  "see in training")
    fill = float(mask.sum(axis=(0, 1)).max()) / (s * s)
    return [] if fill >= 0.05 else [f"the head fills only {fill:.1%} of the model's frame at its widest slice: "
                                    "is the field of view much smaller than in training?"]
