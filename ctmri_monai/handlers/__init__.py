"""Ignite handlers for CycleGAN workflows: sample grids, paired metrics and handler attachment."""

from ctmri_monai.handlers.paired import PairedMetricsHandler, evaluate_image_pairs, evaluate_volume_pairs
from ctmri_monai.handlers.progress import TrainingProgress, every
from ctmri_monai.handlers.samples import SampleGridHandler, attach_handlers, fixed_samples

__all__ = ["PairedMetricsHandler", "SampleGridHandler", "TrainingProgress", "attach_handlers", "evaluate_image_pairs",
           "evaluate_volume_pairs", "every", "fixed_samples"]
