"""Weight initialisation of the reference CycleGAN: conv weights ~ N(0, gain), biases 0."""

from __future__ import annotations

from torch import nn


def init_weights(net: nn.Module, init_gain: float = 0.02) -> nn.Module:
    """Initialise every convolution of ``net`` from normal(0, ``init_gain``) with zero bias, in place."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, init_gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d) and module.affine:
            nn.init.normal_(module.weight, 1.0, init_gain)
            nn.init.zeros_(module.bias)
    return net


def instance_norm(channels: int) -> nn.InstanceNorm2d:
    """Instance normalisation as in the reference: no affine parameters, no running statistics."""
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
