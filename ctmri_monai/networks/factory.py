"""Network factories for configs: generators by backbone name, the PatchGAN discriminator, parameter counts."""

from __future__ import annotations

from torch import nn

from ctmri_monai.networks.discriminator import PatchGANDiscriminator
from ctmri_monai.networks.resnet import ResnetGenerator
from ctmri_monai.networks.unet import UnetGenerator

__all__ = ["BACKBONES", "count_parameters", "define_discriminator", "define_generator"]

BACKBONES = ("resnet", "unet")


def define_generator(backbone: str = "resnet", in_channels: int = 1, out_channels: int = 1, ngf: int = 64,
                     n_blocks: int = 9, num_downs: int = 8, use_dropout: bool = False,
                     init_gain: float = 0.02) -> nn.Module:
    """Build a generator by backbone name: "resnet" (``n_blocks`` residual blocks) or "unet" (``num_downs`` levels)."""
    if backbone == "resnet":
        return ResnetGenerator(in_channels, out_channels, ngf, n_blocks, use_dropout, init_gain)
    if backbone == "unet":
        return UnetGenerator(in_channels, out_channels, ngf, num_downs, use_dropout, init_gain)
    raise ValueError(f"unknown backbone {backbone!r}; expected one of {BACKBONES}")


def define_discriminator(in_channels: int = 1, ndf: int = 64, n_layers: int = 3,
                         init_gain: float = 0.02) -> PatchGANDiscriminator:
    """Build the PatchGAN discriminator (n_layers=3 is the 70x70 receptive field)."""
    return PatchGANDiscriminator(in_channels, ndf, n_layers, init_gain)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
