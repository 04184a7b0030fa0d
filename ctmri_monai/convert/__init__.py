"""Slice-wise conversion of NIfTI / DICOM volumes with a trained generator, on the input's exact grid."""

from ctmri_monai.convert.batch import (
    BatchConverter,
    add_convert_arguments,
    collect_inputs,
    main_convert,
    run_batch,
)
from ctmri_monai.convert.io import ConversionError, SimpleITKReader, load_volume, select_dicom_series
from ctmri_monai.convert.pipeline import build_preprocess, convert_volume, infer_slices
from ctmri_monai.convert.qa import consistency_report, head_mask, save_montage

__all__ = [
    "BatchConverter",
    "ConversionError",
    "SimpleITKReader",
    "add_convert_arguments",
    "build_preprocess",
    "collect_inputs",
    "consistency_report",
    "convert_volume",
    "head_mask",
    "infer_slices",
    "load_volume",
    "main_convert",
    "run_batch",
    "save_montage",
    "select_dicom_series",
]
