"""Weight initialisation and normalisation of the reference CycleGAN networks."""

from __future__ import annotations

from functools import partial

from monai.networks.utils import normal_init
from torch import nn


def init_weights(net: nn.Module, init_gain: float = 0.02) -> nn.Module:
    """The reference's "normal" initialisation, in place: convolution weights ~ N(0, ``init_gain``), biases 0
    (MONAI's ``normal_init`` on every submodule)."""
    net.apply(partial(normal_init, std=init_gain))
    return net


def instance_norm(channels: int) -> nn.InstanceNorm2d:
    """Instance normalisation as in the reference: no affine parameters, no running statistics."""
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
