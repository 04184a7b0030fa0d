"""Every property of an input that the data contract and the pipeline rely on, checked in one place before any
work (bundle/docs/reliability.md lists them): value type, geometry descriptions (NIfTI qform / sform and their
agreement, DICOM orientation / pixel spacing, ITK direction / spacing), physical extent, slice count.

Each check raises one named error (`InputError`: the file is broken; `ContractError`: the contract cannot describe
it) or returns warnings for what is only unusual. Header checks run inside the readers (``io.volume``,
``io.dicom_series``, ``io.sitk_reader``), before pixel data are read; the checks that need the model's contract
(extent, slice count) run in ``transforms.checks.check_contract``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np

from ctmri_monai.io.errors import ContractError, InputError
from ctmri_monai.io.orientation import axial_axis

__all__ = ["MIN_FIELD_OF_VIEW_MM", "OBLIQUE_WARN_DEGREES", "check_dicom_geometry", "check_extent",
           "check_itk_geometry", "check_nifti_header", "check_slice_count", "check_value_type", "check_voxel_size",
           "geometry_warnings", "pil_image_problem"]

#: No head, a newborn's included (about 90 mm across), fits a field of view narrower than this (in-plane, mm).
MIN_FIELD_OF_VIEW_MM = 30.0
#: Slices tilted further than this from the nearest axial plane are converted with a warning.
OBLIQUE_WARN_DEGREES = 15.0
#: Relative disagreement of two descriptions' voxel sizes tolerated (float32 header rounding is ~1e-7).
SPACING_RTOL = 1e-3

PathLike = str | os.PathLike


def check_value_type(path: PathLike, dtype: Any) -> None:
    """Refuse value types the contract cannot map to intensities: complex, structured (RGB), boolean, text."""
    dt = np.dtype(dtype)
    if dt.kind == "c":
        raise ContractError(path, f"complex values ({dt}): CT and MRI intensities are real; casting would drop the "
                                  "imaginary part (export the magnitude image)")
    if dt.kind == "V" or dt.fields is not None:
        names = ",".join(dt.names or ())
        raise ContractError(path, f"structured values ({dt}{f': {names}' if names else ''}, e.g. RGB): one "
                                  "grayscale intensity per voxel expected")
    if dt.kind not in "iuf":
        raise ContractError(path, f"value type {dt} is not numeric intensities")


def _affine_problem(affine: np.ndarray) -> str | None:
    """Why a 4 x 4 voxel-to-world affine is degenerate, or None."""
    if not np.all(np.isfinite(affine)):
        return "non-finite entries"
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(norms <= 0):
        return f"a zero voxel size ({', '.join(f'{v:g}' for v in norms)} mm)"
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6 * float(np.prod(norms)):
        return "a singular direction matrix (two axes point the same way)"
    return None


def _qform(header: nib.Nifti1Header) -> tuple[np.ndarray | None, str | None]:
    """The qform affine from the header fields, or (None, why it is degenerate)."""
    pixdim = np.asarray(header["pixdim"][1:4], np.float64)
    quat = np.asarray([header["quatern_b"], header["quatern_c"], header["quatern_d"]], np.float64)
    if not (np.all(np.isfinite(pixdim)) and np.all(pixdim > 0)):
        return None, f"voxel size pixdim {pixdim.tolist()} is not positive"
    if not np.all(np.isfinite(quat)) or float(quat @ quat) > 1.0 + 1e-5:
        return None, f"quaternion {quat.tolist()} is not a rotation (b^2 + c^2 + d^2 > 1)"
    return np.asarray(header.get_qform(), np.float64), None


def check_nifti_header(path: PathLike, header: Any) -> list[str]:
    """Value type and geometry of a NIfTI header; returns warnings.

    Every description with a non-zero code (qform, sform) must be a proper voxel-to-world map; when both are
    set they must give the same voxel sizes and axis directions (the in-plane pixel size and the axial axis are
    part of the contract; which one is right cannot be told), a small difference in position or rotation is a
    warning (the sform is used, as nibabel does). No description at all: pixdim only, orientation assumed.
    """
    check_value_type(path, header.get_data_dtype())
    if not isinstance(header, nib.Nifti1Header):  # Analyze: pixdim only
        return []
    q_code, s_code = int(header["qform_code"]), int(header["sform_code"])
    described: dict[str, np.ndarray] = {}
    if s_code > 0:
        sform = np.asarray(header.get_sform(), np.float64)
        problem = _affine_problem(sform)
        if problem:
            raise ContractError(path, f"the NIfTI sform (code {s_code}) is degenerate: {problem}; its qform cannot "
                                      "stand in for it, since tools disagree on which one to use (fix the header, "
                                      "e.g. set sform_code 0 when the qform is right)")
        described["sform"] = sform
    if q_code > 0:
        qform, why = _qform(header)
        problem = why or _affine_problem(qform)  # type: ignore[arg-type]
        if problem:
            raise ContractError(path, f"the NIfTI qform (code {q_code}) is degenerate: {problem}; its sform cannot "
                                      "stand in for it, since tools disagree on which one to use (fix the header, "
                                      "e.g. set qform_code 0 when the sform is right)")
        described["qform"] = qform  # type: ignore[assignment]
    if not described:
        pixdim = np.asarray(header["pixdim"][1:4], np.float64)
        if not (np.all(np.isfinite(pixdim)) and np.all(pixdim > 0)):
            raise ContractError(path, f"no qform or sform and voxel size pixdim {pixdim.tolist()} is not positive")
        return ["the NIfTI header has neither qform nor sform: voxel sizes from pixdim, orientation assumed RAS"]
    if len(described) < 2:
        return []
    q, s = described["qform"], described["sform"]
    q_size, s_size = np.linalg.norm(q[:3, :3], axis=0), np.linalg.norm(s[:3, :3], axis=0)
    q_axes, s_axes = nib.aff2axcodes(q), nib.aff2axcodes(s)
    if not np.allclose(q_size, s_size, rtol=SPACING_RTOL) or q_axes != s_axes:
        raise ContractError(path, f"the NIfTI qform and sform disagree: voxel sizes {_mm(q_size)} vs {_mm(s_size)} "
                                  f"mm, axes {''.join(q_axes)} vs {''.join(s_axes)}; the model's framing needs the "
                                  "true pixel size and axial axis (fix the header, e.g. zero the wrong code)")
    shift = float(np.linalg.norm(q[:3, 3] - s[:3, 3]))
    turn = _angle(q[:3, :3] / q_size, s[:3, :3] / s_size)
    if shift > 1.0 or turn > 1.0:
        return [f"the NIfTI qform and sform differ by {shift:.3g} mm and {turn:.3g} degrees: the sform is used"]
    return []


def _mm(values: np.ndarray) -> str:
    return " x ".join(f"{v:.4g}" for v in values)


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    """Rotation angle (degrees) between two orthonormal-ish 3 x 3 direction matrices."""
    cos = (np.trace(a.T @ b) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))


def check_dicom_geometry(folder: PathLike, uid: str, headers: Sequence[Any]) -> None:
    """ImageOrientationPatient: two unit, orthogonal direction cosines; PixelSpacing: two positive numbers."""
    first = headers[0]
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient], np.float64)
    row, col = iop[:3], iop[3:]
    if not (np.all(np.isfinite(iop)) and abs(np.linalg.norm(row) - 1) < 1e-3 and abs(np.linalg.norm(col) - 1) < 1e-3
            and abs(float(row @ col)) < 1e-3):
        raise InputError(folder, f"series {uid}: ImageOrientationPatient {iop.tolist()} is not two unit, "
                                 "orthogonal direction cosines (a broken header)")
    for h in headers:
        spacing = [float(v) for v in h.get("PixelSpacing", []) or []]
        if len(spacing) != 2 or not all(math.isfinite(v) and v > 0 for v in spacing):
            raise InputError(folder, f"series {uid}: PixelSpacing {spacing or 'missing'} is not two positive "
                                     "numbers; the model's framing needs the pixel size in mm")


def check_itk_geometry(path: PathLike, spacing: Sequence[float], direction: Sequence[float]) -> None:
    """ITK spacing positive and finite; direction a rotation (orthonormal columns)."""
    sp = np.asarray(spacing, np.float64)
    d = np.asarray(direction, np.float64).reshape(len(sp), len(sp))
    if not (np.all(np.isfinite(sp)) and np.all(sp > 0)):
        raise InputError(path, f"spacing {sp.tolist()} is not positive")
    if not np.allclose(d.T @ d, np.eye(len(sp)), atol=1e-3):
        raise InputError(path, f"direction {d.round(4).tolist()} is not a rotation (sheared or scaled axes)")


def geometry_warnings(affine: np.ndarray) -> list[str]:
    """Warnings about an acquisition's geometry that the pipeline converts anyway (oblique slices)."""
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    axial = int(np.argmax(np.abs(directions[2])))  # the array axis closest to superior-inferior
    tilt = math.degrees(math.acos(float(np.clip(abs(directions[2, axial]), 0.0, 1.0))))
    if tilt > OBLIQUE_WARN_DEGREES:
        return [f"oblique slices: the slice axis is {tilt:.0f} degrees from superior-inferior; the model converts "
                "the acquisition's own slices (it saw axial ones in training)"]
    return []


def check_voxel_size(path: PathLike, affine: np.ndarray, needed_by: str) -> None:
    """Voxel sizes (the affine's column norms) positive and finite: ``needed_by`` needs the pixel size in mm."""
    spacing = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise ContractError(path, f"voxel spacing {spacing.tolist()} is not positive and finite: {needed_by} needs "
                                  "the pixel size in mm")


def _in_plane(affine: np.ndarray, shape: Sequence[int]) -> tuple[list[float], int]:
    """(extent in mm of the two in-plane array axes, the axial array axis) of a voxel grid."""
    axial = axial_axis(affine)
    sizes = np.linalg.norm(affine[:3, :3], axis=0) * np.asarray(shape[:3], np.float64)
    return [float(sizes[j]) for j in range(3) if j != axial], axial


def check_extent(path: PathLike, affine: np.ndarray, shape: Sequence[int], frame_mm: float | None) -> None:
    """Refuse a field of view that cannot hold a head: wider side under `MIN_FIELD_OF_VIEW_MM`, or (models with a
    frame narrower than 4 x that, i.e. tiny test models) under a quarter of the model's frame ``frame_mm``."""
    extent, _ = _in_plane(affine, shape)
    floor = MIN_FIELD_OF_VIEW_MM if frame_mm is None else min(MIN_FIELD_OF_VIEW_MM, frame_mm / 4.0)
    if max(extent) < floor:
        raise ContractError(path, f"the in-plane field of view is {extent[0]:.3g} x {extent[1]:.3g} mm: it cannot "
                                  f"hold a head (under {floor:g} mm); wrong voxel size in the header?")


def check_slice_count(path: PathLike, affine: np.ndarray, shape: Sequence[int], context_slices: int) -> None:
    """A model reading 2k + 1 neighbouring slices needs at least that many axial slices."""
    _, axial = _in_plane(affine, shape)
    need = 2 * int(context_slices) + 1
    if int(shape[axial]) < need:
        raise ContractError(path, f"{int(shape[axial])} axial slice(s), but the model reads {need} neighbouring "
                                  f"slices (context_slices {context_slices}); it never saw a stack made of repeats")


def pil_image_problem(image: Any) -> str | None:
    """Why a 2D image file (PIL) cannot be one training / evaluation picture, or None: several frames (a
    multi-page TIFF or an animated GIF: only the first would be read) or a mode with no gray value."""
    frames = int(getattr(image, "n_frames", 1) or 1)
    if frames > 1:
        return f"{frames} frames (multi-page or animated): one 2D image expected, only the first would be read"
    if image.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "La", "RGBa", "CMYK", "YCbCr",
                          "I", "F") \
            and not image.mode.startswith("I;16"):
        return f"image mode {image.mode!r} has no gray value this pipeline can read (convert it to 8-bit gray)"
    return None
