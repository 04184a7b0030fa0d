"""Networks: exact parameter counts of the reference CycleGAN, output shapes, initialisation."""

from __future__ import annotations

import pytest
import torch

from ctmri_monai.networks import count_parameters, define_discriminator, define_generator


@pytest.mark.parametrize(
    ("channels", "resnet9", "unet256", "patchgan"),
    [(3, 11_378_179, 54_409_603, 2_764_737), (1, 11_365_633, 54_403_457, 2_762_689)],
)
def test_parameter_counts_match_reference(channels: int, resnet9: int, unet256: int, patchgan: int) -> None:
    assert count_parameters(define_generator("resnet", channels, channels)) == resnet9
    assert count_parameters(define_generator("unet", channels, channels, num_downs=8)) == unet256
    assert count_parameters(define_discriminator(channels)) == patchgan


@pytest.mark.parametrize("backbone", ["resnet", "unet"])
def test_generator_keeps_shape_and_range(backbone: str) -> None:
    net = define_generator(backbone, 1, 1, ngf=4, n_blocks=2, num_downs=5)
    out = net(torch.randn(2, 1, 32, 32) * 3)
    assert out.shape == (2, 1, 32, 32)
    assert out.abs().max() <= 1.0


def test_generator_rgb_channels() -> None:
    out = define_generator("resnet", 3, 1, ngf=4, n_blocks=1)(torch.randn(1, 3, 16, 16))
    assert out.shape == (1, 1, 16, 16)


def test_unet_rejects_indivisible_size() -> None:
    with pytest.raises(ValueError, match="divisible by 32"):
        define_generator("unet", ngf=4, num_downs=5)(torch.randn(1, 1, 48, 40))


def test_discriminator_returns_patch_map_70x70() -> None:
    d = define_discriminator(1, ndf=8)
    out = d(torch.randn(2, 1, 256, 256))
    assert out.shape == (2, 1, 30, 30)  # the reference 70x70 PatchGAN's map size at 256 x 256


def test_unknown_backbone() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        define_generator("vit")


def test_weights_are_normal_002() -> None:
    net = define_generator("resnet", ngf=16, n_blocks=2)
    weights = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(float(weights.std()) - 0.02) < 0.002
    biases = torch.cat([m.bias.flatten() for m in net.modules() if isinstance(m, torch.nn.Conv2d)])
    assert float(biases.abs().max()) == 0.0
