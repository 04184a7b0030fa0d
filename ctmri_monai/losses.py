"""Adversarial losses of CycleGAN on patch logits: least squares (reference default) or log-likelihood."""

from __future__ import annotations

import torch
from torch import nn

GAN_MODES = ("lsgan", "bce")


class AdversarialLoss(nn.Module):
    """Loss of a patch map against an all-real or all-fake target.

    ``lsgan`` is the reference CycleGAN's mean squared error; ``bce`` is the paper's log-likelihood form,
    computed with logits so it is stable and allowed under CUDA autocast.
    """

    def __init__(self, mode: str = "lsgan") -> None:
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"unknown adversarial loss {mode!r}; expected one of {GAN_MODES}")
        self.mode = mode
        self.criterion = nn.MSELoss() if mode == "lsgan" else nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        target = torch.full_like(logits, 1.0 if target_is_real else 0.0)
        return self.criterion(logits.float(), target.float())
