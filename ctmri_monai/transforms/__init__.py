"""Transforms: intensity mappings, the in-plane framing, the head mask, loading and checks, and the pipelines
that training, conversion and evaluation all build from a `ModelSpec`."""

from ctmri_monai.transforms.checks import CheckImaged, check_contract, check_framing
from ctmri_monai.transforms.intensity import (
    MRINormalize,
    MRINormalized,
    ct_from_unit,
    ct_to_unit,
    eight_bit_to_unit,
    mri_range,
    mri_to_unit,
    volume_intensity,
)
from ctmri_monai.transforms.loading import LoadVolumed, SafeLoadImaged, pil_to_gray
from ctmri_monai.transforms.mask import HEAD_THRESHOLD, head_mask, head_mask_slice
from ctmri_monai.transforms.pipelines import ORIENTATION_LABELS, image_pipeline, volume_pipeline
from ctmri_monai.transforms.spatial import HORIZONTAL_FLIP_AXIS, InPlaneFrame, InPlaneFramed, framed_size

__all__ = [
    "HEAD_THRESHOLD", "HORIZONTAL_FLIP_AXIS", "ORIENTATION_LABELS", "CheckImaged", "InPlaneFrame", "InPlaneFramed",
    "LoadVolumed", "MRINormalize", "MRINormalized", "SafeLoadImaged", "check_contract", "check_framing",
    "ct_from_unit", "ct_to_unit", "eight_bit_to_unit", "framed_size", "head_mask", "head_mask_slice",
    "image_pipeline", "mri_range", "mri_to_unit", "pil_to_gray", "volume_intensity", "volume_pipeline",
]
