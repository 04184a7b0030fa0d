"""Slice-wise conversion of NIfTI / DICOM volumes with a trained generator, on its contract and the input's grid."""

from ctmri_monai.convert.batch import BatchConverter, run_batch
from ctmri_monai.convert.cli import add_convert_arguments, main_convert
from ctmri_monai.convert.inputs import collect_inputs
from ctmri_monai.convert.options import BatchOptions, ConvertOptions, ModelSource
from ctmri_monai.convert.pipeline import convert_volume
from ctmri_monai.convert.qa import consistency_report, save_montage
from ctmri_monai.convert.service import ConversionService, SeriesConversion, resolve_contract
from ctmri_monai.engines.slices import infer_slices, valid_range

__all__ = ["BatchConverter", "BatchOptions", "ConversionService", "ConvertOptions", "ModelSource",
           "SeriesConversion",
           "add_convert_arguments", "collect_inputs", "consistency_report", "convert_volume",
           "infer_slices", "main_convert", "resolve_contract", "run_batch", "save_montage", "valid_range"]
