"""Engines: the CycleGAN trainer and evaluator on MONAI's Ignite workflows, and slice-wise volume translation."""

from ctmri_monai.engines.evaluator import CycleGANEvaluator
from ctmri_monai.engines.slices import Translation, infer_slices, translate_volume, valid_range
from ctmri_monai.engines.trainer import CycleGANTrainer

__all__ = ["CycleGANEvaluator", "CycleGANTrainer", "Translation", "infer_slices", "translate_volume", "valid_range"]
