"""Intensity mappings between each domain's values and the network's [-1, 1] scale.

CT: an HU window [lo, hi] maps linearly to [-1, 1], clipped (MONAI's ``ScaleIntensityRange``; the functional
forms below are the same formula for arrays). MRI has no absolute scale: ``MRINormalize`` maps the foreground's
lower / upper percentiles to -1 / +1. 8-bit image files map [0, 255] to [-1, 1].

When the training MRI normalisation is unknown (8-bit images nobody described), percentiles alone leave a volume's
in-head distribution wherever its gain, offset and gamma put it. `NyulStandardize` then maps the volume's framed in-head
quantiles at ``NYUL_LEVELS`` piecewise linearly onto the training images' (Nyul and Udupa's histogram
standardisation), with -1 and +1 pinned. Not taken from elsewhere: MONAI has only histogram *equalisation*
(``HistogramNormalize``); TorchIO's ``HistogramStandardization`` and ``intensity-normalization``'s ``NyulNormalize``
learn landmarks from image files onto an arbitrary [0, 100] scale and pull in a large dependency tree (TorchIO:
typer, rich, humanize, deprecated; intensity-normalization: scikit-image, ...), while here the landmarks are the
training images' own framed [-1, 1] quantiles and the mapping itself is one ``np.interp``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, ScaleIntensityRanged, Transform
from monai.utils import convert_to_numpy

from ctmri_monai.io.errors import ContractError, InputError
from ctmri_monai.spec import NYUL_LEVELS, ModelSpec

__all__ = ["MRINormalize", "MRINormalized", "NyulStandardize", "NyulStandardized", "ct_from_unit", "ct_to_unit",
           "eight_bit_to_unit", "mri_range", "mri_standardisation", "mri_to_unit", "require_ct_window",
           "unit_from_eight_bit", "volume_intensity"]


def _float(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        array = np.asarray(x)
        x = torch.as_tensor(array if array.flags.writeable else array.copy())
    t = x
    return t if t.is_floating_point() else t.float()


def ct_to_unit(hu: Any, window: Sequence[float]) -> torch.Tensor:
    """Hounsfield units -> [-1, 1] linearly over ``window`` = (lo, hi), clipped."""
    lo, hi = float(window[0]), float(window[1])
    return ((_float(hu) - lo) * (2.0 / (hi - lo)) - 1.0).clamp(-1.0, 1.0)


def ct_from_unit(x: Any, window: Sequence[float]) -> torch.Tensor:
    """Inverse of `ct_to_unit` on [-1, 1]: -> HU in [lo, hi]."""
    lo, hi = float(window[0]), float(window[1])
    return (_float(x) + 1.0) * ((hi - lo) / 2.0) + lo


def mri_range(image: Any, percentiles: Sequence[float], name: str = "<in-memory image>") -> tuple[float, float]:
    """The (lo, hi) intensities at the ``percentiles`` of the foreground (values above the minimum)."""
    values = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, np.float32).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise InputError(name, "image has no finite values")
    foreground = values[values > values.min()]
    lo, hi = np.percentile(foreground if foreground.size else values, [float(p) for p in percentiles])
    lo, hi = float(lo), float(hi)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)  # a constant image maps to -1


def mri_to_unit(x: Any, lo: float, hi: float) -> torch.Tensor:
    """MRI intensities -> [-1, 1] with ``lo`` -> -1 and ``hi`` -> +1, clipped."""
    return ((_float(x) - float(lo)) * (2.0 / (float(hi) - float(lo))) - 1.0).clamp(-1.0, 1.0)


def eight_bit_to_unit(x: Any) -> torch.Tensor:
    """8-bit values [0, 255] -> [-1, 1]."""
    return _float(x) / 127.5 - 1.0


def unit_from_eight_bit(keys: KeysCollection) -> ScaleIntensityRanged:
    """The dictionary transform for 8-bit image files: [0, 255] -> [-1, 1]."""
    return ScaleIntensityRanged(keys, a_min=0.0, a_max=255.0, b_min=-1.0, b_max=1.0, clip=False)


class MRINormalize(Transform):
    """MRI -> [-1, 1] by foreground percentiles (`mri_range`). Kept instead of MONAI's
    ``ScaleIntensityRangePercentiles``, whose percentiles count the air around the head as well."""

    def __init__(self, percentiles: Sequence[float] = (0.5, 99.5)) -> None:
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        name = str(img.meta.get("filename_or_obj", "<in-memory image>")) if isinstance(img, MetaTensor) else ""
        lo, hi = mri_range(img, self.percentiles, name or "<in-memory image>")
        out = mri_to_unit(img, lo, hi)
        if isinstance(img, MetaTensor):
            out = MetaTensor(out.as_tensor() if isinstance(out, MetaTensor) else out)
            out.copy_meta_from(img, copy_attr=True)
        return out


class MRINormalized(MapTransform):
    """Dictionary wrapper of `MRINormalize`."""

    def __init__(self, keys: KeysCollection, percentiles: Sequence[float] = (0.5, 99.5),
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalize = MRINormalize(percentiles)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalize(d[key])
        return d


class NyulStandardize(Transform):
    """[-1, 1] values -> the same with their in-head quantiles at ``NYUL_LEVELS`` moved piecewise linearly onto
    ``landmarks`` (the training images' values at those levels); -1 and +1 stay, the result is clipped."""

    def __init__(self, landmarks: Sequence[float]) -> None:
        self.landmarks = np.asarray([float(v) for v in landmarks], np.float64)
        if self.landmarks.size != len(NYUL_LEVELS):
            raise ValueError(f"need {len(NYUL_LEVELS)} landmarks, got {self.landmarks.size}")

    def __call__(self, img: torch.Tensor, mask: Any) -> torch.Tensor:
        values = convert_to_numpy(img)
        inside = values[np.asarray(mask, dtype=bool)]
        if inside.size == 0:
            return img
        source = np.concatenate([[-1.0], np.percentile(inside, list(NYUL_LEVELS)), [1.0]])
        target = np.concatenate([[-1.0], np.clip(self.landmarks, -1.0, 1.0), [1.0]])
        source = np.maximum.accumulate(source + np.arange(source.size) * 1e-6)  # strictly increasing for interp
        mapped = np.clip(np.interp(values, source, target), -1.0, 1.0).astype(np.float32)
        out = torch.as_tensor(mapped)
        if isinstance(img, MetaTensor):
            out = MetaTensor(out)
            out.copy_meta_from(img, copy_attr=True)
        return out


class NyulStandardized(MapTransform):
    """Dictionary wrapper of `NyulStandardize`; the head mask is ``mask_key`` (values > 0 are head)."""

    def __init__(self, keys: KeysCollection, landmarks: Sequence[float], mask_key: str = "head",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.standardize = NyulStandardize(landmarks)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = np.asarray(d[self.mask_key].detach().cpu() if isinstance(d[self.mask_key], torch.Tensor)
                          else d[self.mask_key]) > 0
        for key in self.key_iterator(d):
            d[key] = self.standardize(d[key], mask)
        return d


def mri_standardisation(spec: ModelSpec) -> tuple[float, ...] | None:
    """The training MRI landmarks a volume is standardised onto: only when the training MRI normalisation is
    unknown (8-bit images without a declared one) and the contract recorded them."""
    return None if spec.mri.declared else spec.reference("mri").landmarks()


def require_ct_window(spec: ModelSpec, origin: Any = "model") -> tuple[float, float]:
    """The contract's CT window; a `ContractError` naming ``origin`` (the model) and the option that supplies it
    when nobody declared it: no HU can be mapped as in training, in either direction."""
    if spec.ct.window is None:
        why = ("it was written before the data contract" if spec.version < 2 else
               "it was trained on 8-bit CT images whose export window no dataset.json card declared")
        raise ContractError(origin, f"the model's CT window is unknown ({why}), so it cannot map Hounsfield units "
                                    "as in training; give the HU window its CT training images were exported with: "
                                    "--ct-window LO HI (e.g. --ct-window -20 100 for level 40 / width 120)")
    return spec.ct.window


def volume_intensity(spec: ModelSpec, domain: str, keys: KeysCollection) -> MapTransform:
    """The contract's intensity mapping of a volume of ``domain`` (a `ModelSpec`): CT through its HU window,
    MRI by its foreground percentiles (standardised onto the training landmarks after framing, where the head is
    known: `ctmri_monai.transforms.pipelines.volume_pipeline`). A CT window nobody declared is a `ContractError`."""
    if domain == "ct":
        lo, hi = require_ct_window(spec, "model_spec")
        return ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=-1.0, b_max=1.0, clip=True)
    if domain == "mri":
        return MRINormalized(keys, spec.mri.percentiles)
    raise ValueError(f"unknown domain {domain!r}; expected 'ct' or 'mri'")
