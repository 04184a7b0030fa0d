"""ctmri-monai: unpaired brain CT <-> MRI translation with CycleGAN on MONAI."""

__version__ = "0.1.0"

DOMAINS = ("ct", "mri")
DIRECTIONS = {"ct2mri": ("ct", "mri"), "mri2ct": ("mri", "ct")}
