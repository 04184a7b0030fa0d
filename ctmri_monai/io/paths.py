"""File kinds and names: image suffixes, DICOM detection, output stems."""

from __future__ import annotations

import os
from pathlib import Path

from ctmri_monai.io.errors import InputError

__all__ = ["IMAGE_SUFFIXES", "ITK_SUFFIXES", "NIFTI_SUFFIXES", "SUPPORTED_SUFFIXES", "input_kind", "is_dicom_file",
           "is_dicom_folder", "path_stem", "path_suffix"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
#: 2D image files (Pillow-readable) of the images layout.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


def path_suffix(path: str | os.PathLike) -> str:
    """Lower-case suffix, with the double suffix ``.nii.gz`` kept whole."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def path_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix (``a.nii.gz`` -> ``a``; a folder keeps its name)."""
    p = Path(path)
    suffix = path_suffix(p)
    if p.is_dir() or suffix not in SUPPORTED_SUFFIXES:
        return p.name
    return p.name[: -len(suffix)]


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom_folder(path: str | os.PathLike, probe: int = 20) -> bool:
    """True when a folder directly holds DICOM files (the first ``probe`` files are checked)."""
    p = Path(path)
    if not p.is_dir():
        return False
    files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    return any(is_dicom_file(f) for f in files[:probe])


def input_kind(path: str | os.PathLike) -> str:
    """``"nifti"``, ``"itk"`` or ``"dicom"``; InputError for anything else."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "does not exist")
    if p.is_dir():
        return "dicom"
    suffix = path_suffix(p)
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in ITK_SUFFIXES:
        return "itk"
    if is_dicom_file(p):
        raise InputError(p, "a single DICOM file; give the folder that holds the whole series")
    raise InputError(
        p, f"unsupported input type {suffix!r} (expected {', '.join(SUPPORTED_SUFFIXES)} or a DICOM folder)"
    )
