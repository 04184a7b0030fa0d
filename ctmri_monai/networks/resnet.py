"""ResNet generator of CycleGAN (Johnson et al. style), as in the reference ``ResnetGenerator``."""

from __future__ import annotations

import torch
from torch import nn

from ctmri_monai.networks.init import init_weights, instance_norm


class ResnetBlock(nn.Module):
    """Two reflect-padded 3x3 convolutions with instance norm and a skip connection."""

    def __init__(self, channels: int, use_dropout: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), instance_norm(channels),
                                   nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), instance_norm(channels)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """7x7 stem, two stride-2 down-samplings, ``n_blocks`` residual blocks, two up-samplings, tanh.

    Args:
        in_channels: image channels in (1 for CT/MRI, 3 for RGB).
        out_channels: image channels out.
        ngf: filters of the first layer (64 in the paper).
        n_blocks: residual blocks (9 for 256 x 256 images).
        use_dropout: dropout(0.5) inside the residual blocks.
        init_gain: standard deviation of the normal weight initialisation.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, ngf: int = 64, n_blocks: int = 9,
                 use_dropout: bool = False, init_gain: float = 0.02) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), instance_norm(ngf),
                                   nn.ReLU(True)]
        for i in range(2):
            c = ngf * 2**i
            layers += [nn.Conv2d(c, c * 2, 3, stride=2, padding=1), instance_norm(c * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, use_dropout) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                       instance_norm(c // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_weights(self, init_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
