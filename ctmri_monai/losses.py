"""Losses of CycleGAN: adversarial losses on patch logits (least squares, reference default, or log-likelihood) and
an optional structure-preserving loss between each translated image and its input (MIND descriptors)."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

GAN_MODES = ("lsgan", "bce")
MIND_NEIGHBOURHOODS = (4, 8)


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


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 1D Gaussian of radius ``ceil(2 sigma)`` (at least 1), float32 on the CPU."""
    radius = max(1, math.ceil(2.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def mind_offsets(neighbourhood: int = 8, dilation: int = 1) -> list[tuple[int, int]]:
    """Search region R of the descriptor as (dy, dx) offsets: the 4- or 8-neighbourhood, ``dilation`` px apart."""
    if neighbourhood not in MIND_NEIGHBOURHOODS:
        raise ValueError(f"neighbourhood must be one of {MIND_NEIGHBOURHOODS}, got {neighbourhood!r}")
    d = int(dilation)
    if d < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation!r}")
    steps = [(-1, 0), (0, -1), (0, 1), (1, 0)] + ([(-1, -1), (-1, 1), (1, -1), (1, 1)] if neighbourhood == 8 else [])
    return [(d * dy, d * dx) for dy, dx in steps]


@functools.lru_cache(maxsize=16)
def _mind_kernels(neighbourhood: int, dilation: int, sigma: float,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The shift kernels (one 3 x 3 dilated conv gives all I(x) - I(x + r): kernel r is delta(centre) - delta(r))
    and the Gaussian patch kernel, built once per setting and device (not at every training step)."""
    offsets = mind_offsets(neighbourhood, dilation)
    shifts = torch.zeros(len(offsets), 1, 3, 3, dtype=torch.float32)
    shifts[:, 0, 1, 1] = 1.0
    for i, (dy, dx) in enumerate(offsets):
        shifts[i, 0, 1 + dy // dilation, 1 + dx // dilation] = -1.0
    return shifts.to(device), _gaussian_kernel(sigma).to(device)


def mind_descriptor(image: torch.Tensor, neighbourhood: int = 8, dilation: int = 1, sigma: float = 0.8,
                    eps: float = 0.2) -> torch.Tensor:
    """MIND of (N, 1, H, W) images: (N, |R|, H, W) in (0, 1], max 1 over the channels at every pixel.

    ``MIND(I, x, r) = exp(-Dp(x, r) / V(x)) / n(x)`` (Heinrich et al. 2012) with ``n = max_r exp(-Dp / V)``, i.e.
    ``exp(-(Dp(x, r) - min_r' Dp(x, r')) / V(x))``; ``Dp(x, r) = G_sigma * (I - I(. + r))^2`` the Gaussian-weighted
    patch distance (radius ``ceil(2 sigma)``), ``V(x) = max(mean_r Dp(x, r), eps^2)`` (the paper averages over the
    4-neighbourhood; here over R). ``eps`` (image units) is the contrast below which a neighbourhood counts as
    flat, so noise is not described as structure. Borders replicate; float32 with autocast off inside.
    """
    if image.ndim != 4 or image.shape[1] != 1:
        raise ValueError(f"expected (N, 1, H, W) images, got shape {tuple(image.shape)}")
    with torch.autocast(device_type=image.device.type, enabled=False):
        x = image.float()
        d = int(dilation)
        shifts, g = _mind_kernels(int(neighbourhood), d, float(sigma), x.device)
        diff = F.conv2d(F.pad(x, (d, d, d, d), mode="replicate"), shifts, dilation=d).square()  # (N, |R|, H, W)
        k, r = diff.shape[1], (g.numel() - 1) // 2
        diff = F.conv2d(F.pad(diff, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1).expand(k, 1, -1, 1),
                        groups=k)
        dp = F.conv2d(F.pad(diff, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1).expand(k, 1, 1, -1),
                      groups=k)
        var = dp.mean(dim=1, keepdim=True).clamp_min(float(eps) ** 2)
        return torch.exp(-(dp - dp.amin(dim=1, keepdim=True)) / var)


class MINDLoss(nn.Module):
    """Structure-preserving loss: ``mean |MIND(translated) - MIND(source)|`` in [0, 1], 0 for the same structure.

    MIND (Heinrich et al., "MIND: Modality independent neighbourhood descriptor for multi-modal deformable
    registration", Medical Image Analysis 16(7):1423-1435, 2012) describes each pixel by its patch distances to
    its neighbours over their local mean, so it depends on where the edges are, not on which tissue is brighter:
    robust to the non-monotonic CT <-> MR intensity relation (bone bright on CT, dark on T1), which normalised
    gradient fields handle too but with an epsilon-sensitive direction at every noisy pixel (and MIND-SSC's four
    2D pairs cannot tell horizontal from vertical edges). L1 of the descriptors as in Yang et al.'s
    structure-constrained CycleGAN (DLMIA 2018). Exactly 0 for ``translated = source + b`` or ``-source + b``;
    nearly so for ``a * source + b`` wherever the local contrast is well above ``eps``.

    Defaults: the 8-neighbourhood (with 4 neighbours a diagonal ramp looks flat), ``sigma=0.8`` px patches and
    ``eps=0.2`` in the [-1, 1] scale (above typical MR noise, below tissue contrasts). ``forward(translated,
    source)`` on (N, C, H, W) images: a 2.5D source of 2k + 1 slices against a 1-channel translation uses its
    centre slice. Differentiable; float32 inside (safe under bf16 / fp16 autocast); conv-based, any device or
    memory format.
    """

    def __init__(self, neighbourhood: int = 8, dilation: int = 1, sigma: float = 0.8, eps: float = 0.2) -> None:
        super().__init__()
        mind_offsets(neighbourhood, dilation)  # validates
        if not sigma > 0 or not eps > 0:
            raise ValueError(f"sigma and eps must be > 0, got sigma={sigma!r}, eps={eps!r}")
        self.neighbourhood, self.dilation, self.sigma, self.eps = int(neighbourhood), int(dilation), sigma, eps

    def descriptor(self, image: torch.Tensor) -> torch.Tensor:
        """MIND of (N, 1, H, W) images with this loss's settings (`mind_descriptor`)."""
        return mind_descriptor(image, self.neighbourhood, self.dilation, self.sigma, self.eps)

    def forward(self, translated: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """The loss, a float32 scalar, of ``translated`` (N, C, H, W) against its input ``source``."""
        if translated.ndim != 4 or source.ndim != 4:
            raise ValueError(f"expected (N, C, H, W) images, got {tuple(translated.shape)} and {tuple(source.shape)}")
        ct, cs = translated.shape[1], source.shape[1]
        if cs != ct:
            if ct != 1 or cs % 2 == 0:
                raise ValueError(f"source has {cs} channels for a {ct}-channel translation; expected {ct} "
                                 "or an odd 2.5D stack against 1 channel")
            source = source[:, cs // 2:cs // 2 + 1]
        if translated.shape[0] != source.shape[0] or translated.shape[-2:] != source.shape[-2:]:
            raise ValueError(f"shapes differ: {tuple(translated.shape)} vs {tuple(source.shape)}")
        n, c, h, w = translated.shape
        with torch.autocast(device_type=translated.device.type, enabled=False):
            mt = self.descriptor(translated.reshape(n * c, 1, h, w))
            ms = self.descriptor(source.reshape(n * c, 1, h, w))
            return (mt - ms).abs().mean()
