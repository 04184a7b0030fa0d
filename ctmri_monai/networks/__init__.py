"""CycleGAN networks: ResNet and U-Net generators, the PatchGAN discriminator, factories, and loading generators
from checkpoints."""

from ctmri_monai.networks.discriminator import PatchGANDiscriminator
from ctmri_monai.networks.factory import BACKBONES, count_parameters, define_discriminator, define_generator
from ctmri_monai.networks.init import init_weights
from ctmri_monai.networks.loading import (
    generator_from,
    load_generator,
    load_generator_weights,
    model_info,
    read_model_spec,
)
from ctmri_monai.networks.resnet import ResnetGenerator
from ctmri_monai.networks.unet import UnetGenerator

__all__ = ["BACKBONES", "PatchGANDiscriminator", "ResnetGenerator", "UnetGenerator", "count_parameters",
           "define_discriminator", "define_generator", "generator_from", "init_weights", "load_generator",
           "load_generator_weights", "model_info", "read_model_spec"]
