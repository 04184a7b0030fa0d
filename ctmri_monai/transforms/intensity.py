"""Intensity mappings between each domain's values and the network's [-1, 1] scale.

CT: an HU window [lo, hi] maps linearly to [-1, 1], clipped (MONAI's ``ScaleIntensityRange``; the functional
forms below are the same formula for arrays). MRI has no absolute scale: ``MRINormalize`` maps the foreground's
lower / upper percentiles to -1 / +1. 8-bit image files map [0, 255] to [-1, 1].
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, ScaleIntensityRanged, Transform

from ctmri_monai.io.errors import ContractError, InputError
from ctmri_monai.spec import ModelSpec

__all__ = ["MRINormalize", "MRINormalized", "ct_from_unit", "ct_to_unit", "eight_bit_to_unit", "mri_range",
           "mri_to_unit", "require_ct_window", "unit_from_eight_bit", "volume_intensity"]


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
    MRI by its foreground percentiles. A CT window nobody declared is a `ContractError`."""
    if domain == "ct":
        lo, hi = require_ct_window(spec, "model_spec")
        return ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=-1.0, b_max=1.0, clip=True)
    if domain == "mri":
        return MRINormalized(keys, spec.mri.percentiles)
    raise ValueError(f"unknown domain {domain!r}; expected 'ct' or 'mri'")
