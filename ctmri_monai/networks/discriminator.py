"""70x70 PatchGAN discriminator: MONAI's ``PatchDiscriminator`` returning only the patch map."""

from __future__ import annotations

import torch
from monai.networks.nets import PatchDiscriminator
from torch import nn

from ctmri_monai.networks.init import init_weights


class PatchGANDiscriminator(nn.Module):
    """The reference ``NLayerDiscriminator`` (n_layers=3, instance norm, LeakyReLU 0.2), built by MONAI.

    MONAI's ``PatchDiscriminator`` returns every layer's output; this wrapper returns the last one, the
    (N, 1, h, w) map of patch logits, so losses see only what the reference discriminator outputs.
    """

    def __init__(self, in_channels: int = 1, ndf: int = 64, n_layers: int = 3, init_gain: float = 0.02) -> None:
        super().__init__()
        self.net = PatchDiscriminator(spatial_dims=2, channels=ndf, in_channels=in_channels, out_channels=1,
                                      num_layers_d=n_layers, norm="INSTANCE", bias=True)
        init_weights(self, init_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]
