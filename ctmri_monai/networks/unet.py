"""U-Net generator of pix2pix / CycleGAN, as in the reference ``UnetGenerator`` (not MONAI's ``nets.UNet``)."""

from __future__ import annotations

import torch
from torch import nn

from ctmri_monai.networks.init import init_weights, instance_norm


class UnetSkipBlock(nn.Module):
    """One U-Net level: down-convolution, the inner levels, up-convolution, concatenated with its input.

    Args:
        outer: channels of this level's input (and output before concatenation).
        inner: channels after the down-convolution.
        submodule: the next level inward, or None for the innermost level.
        in_channels: input channels of the outermost level (defaults to ``outer``).
        outermost: no normalisation, tanh output, no skip concatenation.
        use_dropout: dropout(0.5) after the up-convolution of middle levels.
    """

    def __init__(self, outer: int, inner: int, submodule: nn.Module | None = None, in_channels: int | None = None,
                 outermost: bool = False, use_dropout: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        down_conv = nn.Conv2d(in_channels or outer, inner, 4, stride=2, padding=1)
        if outermost:
            down: list[nn.Module] = [down_conv]
            up: list[nn.Module] = [nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
        elif submodule is None:  # innermost
            down = [nn.LeakyReLU(0.2, True), down_conv]
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner, outer, 4, 2, 1), instance_norm(outer)]
        else:
            down = [nn.LeakyReLU(0.2, True), down_conv, instance_norm(inner)]
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), instance_norm(outer)]
            if use_dropout:
                up.append(nn.Dropout(0.5))
        middle = [] if submodule is None else [submodule]
        self.model = nn.Sequential(*down, *middle, *up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net with ``num_downs`` down-samplings (8 = "U-Net-256"); H and W must be divisible by 2**num_downs.

    Args:
        in_channels: image channels in.
        out_channels: image channels out.
        ngf: filters of the outermost level.
        num_downs: number of levels; the innermost ``num_downs - 4`` levels have ``ngf * 8`` filters.
        use_dropout: dropout(0.5) in the ``ngf * 8`` middle levels.
        init_gain: standard deviation of the normal weight initialisation.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, ngf: int = 64, num_downs: int = 8,
                 use_dropout: bool = False, init_gain: float = 0.02) -> None:
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be >= 5, got {num_downs}")
        self.num_downs = num_downs
        block = UnetSkipBlock(ngf * 8, ngf * 8)
        for _ in range(num_downs - 5):
            block = UnetSkipBlock(ngf * 8, ngf * 8, block, use_dropout=use_dropout)
        for mult in (4, 2, 1):
            block = UnetSkipBlock(ngf * mult, ngf * mult * 2, block)
        self.model = UnetSkipBlock(out_channels, ngf, block, in_channels=in_channels, outermost=True)
        init_weights(self, init_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2**self.num_downs
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"UnetGenerator with num_downs={self.num_downs} needs H and W divisible by {factor}, "
                             f"got {tuple(x.shape[-2:])}")
        return self.model(x)
