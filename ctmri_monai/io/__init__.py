"""Bottom layer: reading volumes and images, writing NIfTI / DICOM, atomic writes, and the error hierarchy."""

from ctmri_monai.io.atomic import (
    atomic_directory,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporaries,
)
from ctmri_monai.io.dicom_series import DicomSeries, scan_dicom_folder, select_dicom_series
from ctmri_monai.io.errors import ContractError, CtmriError, InputError, VolumeTooLargeError, find_input_error
from ctmri_monai.io.nifti import nifti_image_like, output_error, write_nifti
from ctmri_monai.io.paths import (
    IMAGE_SUFFIXES,
    SUPPORTED_SUFFIXES,
    input_kind,
    is_dicom_file,
    is_dicom_folder,
    path_stem,
    path_suffix,
)
from ctmri_monai.io.sitk_reader import SimpleITKReader, check_voxel_limit
from ctmri_monai.io.volume import Volume, load_volume

__all__ = [
    "IMAGE_SUFFIXES", "SUPPORTED_SUFFIXES", "ContractError", "CtmriError", "DicomSeries", "InputError",
    "SimpleITKReader", "Volume", "VolumeTooLargeError", "atomic_directory", "atomic_write", "atomic_write_bytes",
    "atomic_write_json", "atomic_write_text", "check_voxel_limit", "find_input_error", "input_kind",
    "is_dicom_file", "is_dicom_folder", "load_volume", "nifti_image_like", "output_error", "path_stem",
    "path_suffix", "remove_stale_temporaries", "scan_dicom_folder", "select_dicom_series", "write_nifti",
]
