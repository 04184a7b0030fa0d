"""A MONAI ``ImageReader`` on SimpleITK for .mha/.nrrd files and DICOM series folders, and voxel limits.

MONAI's own ITK reader needs the large ``itk`` package; SimpleITK gives DICOM series geometry exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.data.image_reader import ImageReader
from monai.utils import MetaKeys, SpaceKeys

from ctmri_monai.io.dicom_series import DicomSeries, select_dicom_series, undecodable_slice
from ctmri_monai.io.errors import VolumeTooLargeError
from ctmri_monai.io.paths import ITK_SUFFIXES, path_suffix
from ctmri_monai.io.preconditions import check_itk_geometry, check_value_type

__all__ = ["ImageShapeError", "SimpleITKReader", "check_voxel_limit", "itk_header_shape", "sitk_affine_ras"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def check_voxel_limit(path: str | os.PathLike, shape: Sequence[int] | None, max_voxels: int | None) -> None:
    """Raise VolumeTooLargeError when ``prod(shape)`` exceeds ``max_voxels`` (None: no limit or no shape)."""
    if max_voxels is None or not shape:
        return
    n = int(np.prod([int(v) for v in shape], dtype=np.int64))
    if n > int(max_voxels):
        dims = "x".join(str(int(v)) for v in shape)
        raise VolumeTooLargeError(
            path, f"volume too large: {dims} = {n:,} voxels (about {n * 4 / 2**30:.2f} GiB as float32), over the "
            f"limit max_voxels={int(max_voxels):,} (about {int(max_voxels) * 4 / 2**30:.2f} GiB); raise the limit "
            "(--max-voxels) on a machine with enough memory, or crop / resample the volume"
        )


def itk_header_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """Size (x, y, z[, components]) of an .mha/.nrrd file from its header only; None when unreadable."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None  # the full read reports the problem
    size = tuple(int(v) for v in reader.GetSize())
    components = int(reader.GetNumberOfComponents())
    return size + ((components,) if components > 1 else ())


# ----------------------------------------------------------------------------------------------------------
# A MONAI ImageReader on SimpleITK (MONAI's ITKReader needs the large `itk` package)


class ImageShapeError(ValueError):
    """Raised by `SimpleITKReader.get_data` for images that are not one-component 3D volumes."""


def sitk_affine_ras(image: sitk.Image) -> np.ndarray:
    """4x4 RAS affine of a 3D SimpleITK image (ITK works in LPS)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(np.asarray(image.GetSpacing(), dtype=np.float64))
    affine[:3, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)
    return LPS_TO_RAS @ affine


class SimpleITKReader(ImageReader):
    """MONAI `ImageReader` for .mha/.mhd/.nrrd/.nhdr files and DICOM series folders, via SimpleITK.

    Data come back as (X, Y, Z) arrays (ITK index order) with a RAS ``affine``; DICOM rescale
    slope/intercept is applied by SimpleITK, so CT arrives in HU. For a folder, ``series_uid`` picks
    the series; after `read`, ``self.series`` holds the chosen `DicomSeries`.
    """

    def __init__(self, series_uid: str | None = None, max_voxels: int | None = None):
        super().__init__()
        self.series_uid = series_uid
        self.max_voxels = max_voxels
        self.series: DicomSeries | None = None

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(Path(n).is_dir() or path_suffix(n) in ITK_SUFFIXES for n in names)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> sitk.Image:
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        if len(names) != 1:
            raise ValueError("SimpleITKReader reads one file or one DICOM folder at a time")
        path = Path(names[0])
        if path.is_dir():
            self.series = select_dicom_series(path, self.series_uid)
            first = self.series.headers[0]
            check_voxel_limit(path, (int(first.Columns), int(first.Rows), len(self.series.files)), self.max_voxels)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(self.series.files)
            try:
                return reader.Execute()
            except RuntimeError as exc:
                found = undecodable_slice(path, self.series)
                if found is None:
                    raise
                raise found from exc
        check_voxel_limit(path, itk_header_shape(path), self.max_voxels)
        image = sitk.ReadImage(str(path))
        if image.GetNumberOfComponentsPerPixel() == 1:  # vectors (complex .mha too): refused by get_data
            check_value_type(path, sitk.GetArrayViewFromImage(image).dtype)
        check_itk_geometry(path, image.GetSpacing(), image.GetDirection())
        return image

    def get_data(self, img: sitk.Image) -> tuple[np.ndarray, dict]:
        if img.GetNumberOfComponentsPerPixel() != 1:
            components = img.GetNumberOfComponentsPerPixel()
            raise ImageShapeError(f"{components} components per pixel; expected grayscale")
        if img.GetDimension() != 3:
            raise ImageShapeError(f"{img.GetDimension()}D image where a 3D volume is expected")
        data = sitk.GetArrayViewFromImage(img).transpose(2, 1, 0)  # (Z, Y, X) -> (X, Y, Z)
        affine = sitk_affine_ras(img)
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(data.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        }
        return np.array(data), meta  # a copy: the view dies with the SimpleITK image
