"""Writing the NIfTI output on the input's grid, with no patient-identifying header fields."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from ctmri_monai.io.atomic import atomic_write
from ctmri_monai.io.errors import InputError
from ctmri_monai.io.volume import Volume

__all__ = ["nifti_image_like", "output_error", "write_nifti"]

_NIFTI_GEOMETRY_FIELDS = (
    "pixdim", "xyzt_units", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
    "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z",
)


def nifti_image_like(array: np.ndarray, volume: Volume, descrip: str) -> nib.Nifti1Image:
    """A NIfTI image of ``array`` on the input's grid, with no patient-identifying header fields.

    NIfTI input: the geometry fields (pixdim, units, qform, sform and their codes) are copied verbatim,
    nothing else. Other inputs: qform and sform are set to the RAS affine with code 1 (scanner).
    """
    if tuple(array.shape) != volume.shape:
        raise ValueError(f"output shape {array.shape} differs from the input's {volume.shape}")
    header = nib.Nifti1Header()
    header.set_data_dtype(array.dtype)
    if volume.nifti_header is not None and isinstance(volume.nifti_header, nib.Nifti1Header):
        src = volume.nifti_header
        for name in _NIFTI_GEOMETRY_FIELDS:
            header[name] = src[name]
        img = nib.Nifti1Image(array, None, header=header)
    else:
        img = nib.Nifti1Image(array, volume.affine, header=header)
        img.set_qform(volume.affine, code=1)
        img.set_sform(volume.affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = descrip.encode("ascii", "replace")[:80]
    return img


def output_error(path: str | os.PathLike, exc: OSError) -> InputError:
    """A write failure (full disk, read-only or missing folder...) as an InputError naming the output."""
    why = exc.strerror or str(exc) or type(exc).__name__
    return InputError(path, f"cannot write output ({type(exc).__name__}: {why}); nothing was written")


def write_nifti(image: nib.Nifti1Image, output_path: str | os.PathLike) -> Path:
    """Write ``image`` atomically (`atomic_write`). Any OSError (full disk, unwritable folder, a file where the
    folder should be) becomes an `InputError` naming the output; an existing output is left as it was."""
    try:
        return atomic_write(output_path, lambda tmp: nib.save(image, str(tmp)))
    except OSError as exc:
        raise output_error(output_path, exc) from exc
