"""Generators that need no training, for proofs on phantoms: a tissue oracle and a steganographic cheat.

`TissueOracle` is the best any per-pixel translation can do on the phantoms: a lookup table from the source value
(in the network's [-1, 1] scale) to the mean target value of the voxels that hold it, fitted on paired phantom
volumes (their CT and MRI are rendered from one label map). It is a real function of its input, deterministic,
exactly equivariant to flips and shifts, and fitted in milliseconds, so a CPU test can convert phantom volumes
"well" in no time; where the source cannot tell two tissues apart (CT skin and grey matter), it blends them, as a
network would.

`HiddenCopy` is the known trap of CycleGAN (Chu et al. 2017, "CycleGAN, a master of steganography"): the forward
side hides the input in a faint pattern below one grey level of its output (`hide`), and the backward side reads
it back perfectly (`HiddenCopy.forward`), whatever the visible output shows. Its cycle error is near zero even
where the visible output lost a structure of the input.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctmri_monai.phantoms.render import MRI_PNG_PERCENTILES, Phantom
from ctmri_monai.transforms.context import centre_slice
from ctmri_monai.transforms.intensity import ct_to_unit, mri_range, mri_to_unit

__all__ = ["BRAIN_WINDOW", "HIDDEN_QUANTUM", "HiddenCopy", "TissueOracle", "hide", "oracle_conversion", "unit_volumes"]

#: The HU window of the phantoms' CT PNGs (level 40, width 120) as [lo, hi]: what a model trained on them sees.
BRAIN_WINDOW = (-20.0, 100.0)

#: Grey-level step of a steganographic output: the visible image is rounded to it, the hidden input lives below it.
HIDDEN_QUANTUM = 1.0 / 32.0
_HIDDEN_SPAN = 0.9 * HIDDEN_QUANTUM


class TissueOracle(nn.Module):
    """A lookup table ``source value -> mean target value`` over ``bins`` equal bins of [-1, 1] (module docstring).

    ``fit(source, target)`` on paired arrays in [-1, 1]; empty bins take the nearest fitted value. ``forward``
    maps (N, C, H, W) slice stacks (a 2.5D stack: its centre slice) to (N, 1, H, W).
    """

    def __init__(self, bins: int = 256, smooth_px: float = 1.0) -> None:
        super().__init__()
        self.bins, self.smooth_px = int(bins), float(smooth_px)
        self.register_buffer("table", torch.linspace(-1.0, 1.0, self.bins))

    def _denoise(self, s: torch.Tensor) -> torch.Tensor:
        if self.smooth_px <= 0:
            return s
        r = max(1, math.ceil(2.0 * self.smooth_px))
        g = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / self.smooth_px) ** 2)
        g = (g / g.sum()).to(s.device)
        s = F.conv2d(F.pad(s, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
        return F.conv2d(F.pad(s, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1))

    def fit(self, source: np.ndarray, target: np.ndarray) -> TissueOracle:
        """Fit on paired (H, W, D) arrays in [-1, 1] (axial slices along the last axis, denoised like the input)."""
        src = torch.from_numpy(np.asarray(source, np.float32)).permute(2, 0, 1)[:, None]
        s = np.clip(self._denoise(src)[:, 0].permute(1, 2, 0).numpy().astype(np.float64).ravel(), -1.0, 1.0)
        t = np.asarray(target, np.float64).ravel()
        index = np.minimum(((s + 1.0) / 2.0 * self.bins).astype(int), self.bins - 1)
        counts = np.bincount(index, minlength=self.bins)
        sums = np.bincount(index, weights=t, minlength=self.bins)
        filled = np.flatnonzero(counts)
        if filled.size == 0:
            raise ValueError("cannot fit a tissue oracle on empty arrays")
        nearest = filled[np.abs(np.arange(self.bins)[:, None] - filled[None, :]).argmin(axis=1)]
        self.table = torch.as_tensor(sums[nearest] / counts[nearest], dtype=torch.float32)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self._denoise(centre_slice(x).float()).clamp(-1.0, 1.0)
        index = ((s + 1.0) / 2.0 * self.bins).long().clamp_(0, self.bins - 1)
        return self.table.to(x.device)[index]


def hide(visible: np.ndarray, secret: np.ndarray) -> np.ndarray:
    """``visible`` rounded to `HIDDEN_QUANTUM` steps with ``secret`` (same shape, in [-1, 1]) hidden below one
    step: the output looks like ``visible`` (off by less than one step) and `HiddenCopy` recovers ``secret``."""
    steps = np.floor(np.asarray(visible, np.float64) / HIDDEN_QUANTUM) * HIDDEN_QUANTUM
    payload = (np.clip(np.asarray(secret, np.float64), -1.0, 1.0) + 1.0) / 2.0 * _HIDDEN_SPAN
    return (steps + payload).astype(np.float32)


class HiddenCopy(nn.Module):
    """The backward generator of a steganographic CycleGAN: reads the input `hide` buried in its (N, C, H, W)
    argument (centre slice) and returns it, (N, 1, H, W)."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        v = centre_slice(y).double()
        residue = v - torch.floor(v / HIDDEN_QUANTUM + 1e-6) * HIDDEN_QUANTUM
        return (residue.clamp(0.0, _HIDDEN_SPAN) / _HIDDEN_SPAN * 2.0 - 1.0).float()


def unit_volumes(phantom: Phantom, window: tuple[float, float] = BRAIN_WINDOW) -> dict[str, np.ndarray]:
    """A phantom's CT and MRI in the network's [-1, 1] scale (the contract's mappings), float32 (X, Y, Z)."""
    lo, hi = mri_range(phantom.mri, MRI_PNG_PERCENTILES)
    return {"ct": ct_to_unit(phantom.ct, window).numpy(), "mri": mri_to_unit(phantom.mri, lo, hi).numpy()}


def oracle_conversion(phantom: Phantom, direction: str, window: tuple[float, float] = BRAIN_WINDOW
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, TissueOracle, TissueOracle]:
    """Convert a phantom with oracles fitted on its own pair (the best per-pixel model for this subject): returns
    the input frames, the output frames, the true counterpart (all [-1, 1]), the forward and backward oracle."""
    units = unit_volumes(phantom, window)
    source, target = direction.split("2")
    forward = TissueOracle().fit(units[source], units[target])
    backward = TissueOracle().fit(units[target], units[source])
    with torch.no_grad():
        output = forward(torch.from_numpy(units[source]).permute(2, 0, 1)[:, None])[:, 0].permute(1, 2, 0)
    return units[source], output.contiguous().numpy(), units[target], forward, backward
