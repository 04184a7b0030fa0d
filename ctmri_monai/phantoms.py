"""Synthetic paired brain CT / T1-MRI phantoms: the project's embedded demo data (no download).

Each subject is one 3D label map (scalp skin and fat, skull, CSF with ventricles and sulci, grey matter with
deep nuclei, white matter, and in some subjects a hyperdense bleed or a mass with oedema). The CT (HU) and
the T1-like MRI are rendered from the SAME label map, so they are paired voxel to voxel by construction.
Everything is deterministic from ``seed`` (subject ``i`` depends only on ``seed`` and ``i``).

Array convention: volumes are ``(X, Y, Z)`` with axial slices along the third axis; the NIfTI affine is RAS
(``+X`` right, ``+Y`` anterior, ``+Z`` superior), diagonal with ``spacing`` and the origin at the volume
centre. 2D images (PNG and DICOM pixel data) use the radiological display layout: rows run anterior ->
posterior, columns patient right -> left, i.e. ``png[row, col] == volume[X - 1 - col, Y - 1 - row, z]``
(the same as a volume reoriented to MONAI axcodes ``"PLS"`` sliced at ``[:, :, z]``).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import tempfile
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ctmri_monai.data.card import write_card
from ctmri_monai.io.images import unit_to_uint8
from ctmri_monai.spec import window_from_level_width
from ctmri_monai.transforms.intensity import ct_to_unit, mri_range, mri_to_unit

__all__ = [
    "LABELS",
    "CT_PNG_WINDOW",
    "Phantom",
    "make_label_map",
    "make_subject",
    "make_phantoms",
    "n_test_subjects",
    "radiological_slice",
    "radiological_stack",
    "ct_to_png",
    "mri_to_png",
    "phantom_affine",
]

LABELS: dict[str, int] = {
    "background": 0,
    "skin": 1,
    "fat": 2,
    "bone": 3,
    "csf": 4,
    "grey_matter": 5,
    "white_matter": 6,
    "bleed": 7,
    "mass": 8,
    "edema": 9,
}
_L = LABELS

#: (level, width) in HU of the 8-bit CT PNGs: a brain window like the Kaggle / CT-ICH PNGs the project trains
#: on (brain grey levels ~100-150, CSF dark, skull saturated white, air and fat black).
CT_PNG_WINDOW: tuple[float, float] = (40.0, 120.0)
#: Foreground percentiles mapped to 0 and 255 in the MRI PNGs (the contract's MRI normalisation).
MRI_PNG_PERCENTILES: tuple[float, float] = (0.5, 99.5)

_HU_MIN, _HU_MAX = -1024, 3071
_DICOM_INTERCEPT = -1024
_DESCRIP = "PHANTOM synthetic ctmri-monai"
_PNG_DIRS = ("trainA", "trainB", "testA", "testB")
_UID_NAME = "urn:ctmri-monai:phantom"


@dataclass
class Phantom:
    """One synthetic subject: label map, CT (HU, int16), T1-like MRI (float32) on the same grid."""

    name: str
    labels: np.ndarray
    ct: np.ndarray
    mri: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- geometry
def phantom_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS affine: diagonal ``spacing``, origin chosen so the volume centre is at (0, 0, 0) mm."""
    affine = np.eye(4)
    for a in range(3):
        affine[a, a] = spacing[a]
        affine[a, 3] = -(shape[a] - 1) / 2.0 * spacing[a]
    return affine


def _check_geometry(shape: Any, spacing: Any) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    shp = tuple(int(s) for s in shape)
    spc = tuple(float(s) for s in spacing)
    if len(shp) != 3 or min(shp) < 4:
        raise ValueError(f"shape must be three sizes >= 4, got {shape!r}")
    if len(spc) != 3 or not all(np.isfinite(spc)) or min(spc) <= 0:
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing!r}")
    return shp, spc  # type: ignore[return-value]


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cz, sz = np.cos(yaw), np.sin(yaw)
    cx, sx = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(roll), np.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ rx @ ry


def _head_frame(shape, spacing, centre, rot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World mm grid -> head-frame coordinates in mm (u: +right, v: +anterior, w: +superior)."""
    aff = phantom_affine(shape, spacing)
    axes = [(aff[a, 3] + np.arange(shape[a]) * spacing[a] - centre[a]).astype(np.float32) for a in range(3)]
    dx = axes[0][:, None, None]
    dy = axes[1][None, :, None]
    dz = axes[2][None, None, :]
    r = rot.astype(np.float32)
    u = r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz
    v = r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz
    w = r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz
    return u, v, w


def _ellipsoid(u, v, w, centre, radii) -> np.ndarray:
    """Normalised ellipsoid radius (< 1 inside)."""
    c0, c1, c2 = (float(x) for x in centre)
    r0, r1, r2 = (float(x) for x in radii)  # Python floats keep the float32 arrays float32
    du, dv, dw = (u - c0) / r0, (v - c1) / r1, (w - c2) / r2
    return np.sqrt(du**2 + dv**2 + dw**2)


def _waves(rng: np.random.Generator, u, v, w, wavelength: float, n: int = 6) -> np.ndarray:
    """Smooth pseudo-noise with unit variance: a sum of ``n`` random plane waves."""
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = (2 * np.pi / wavelength) * dirs * rng.uniform(0.8, 1.25, size=(n, 1))
    phase = rng.uniform(0, 2 * np.pi, size=n)
    out = np.zeros(np.broadcast_shapes(u.shape, v.shape, w.shape), dtype=np.float32)
    for i in range(n):
        out += np.sin(np.float32(k[i, 0]) * u + np.float32(k[i, 1]) * v + np.float32(k[i, 2]) * w
                      + np.float32(phase[i]))
    out *= np.float32(np.sqrt(2.0 / n))
    return out


def _subject_params(rng: np.random.Generator, shape, spacing) -> dict[str, Any]:
    fov = [shape[a] * spacing[a] for a in range(3)]
    s = min(fov[0], fov[1]) / 192.0  # anatomy is sized for a 192 mm in-plane field of view, scaled to fit
    radii = s * np.array([rng.uniform(68, 75), rng.uniform(80, 87), rng.uniform(78, 88)])
    top = fov[2] / 2.0 - 0.06 * fov[2]  # a few empty slices above the vertex
    centre = s * np.array([rng.uniform(-4, 4), rng.uniform(-4, 4), rng.uniform(-2, 2)])
    centre[2] += top - radii[2]
    angles = [rng.uniform(-8, 8), rng.uniform(-6, 6), rng.uniform(-4, 4)]
    lesion = str(rng.choice(["none", "bleed", "mass"], p=[0.4, 0.35, 0.25]))
    return {
        "scale": s,
        "radii_mm": radii.tolist(),
        "centre_mm": centre.tolist(),
        "angles_deg": angles,
        "skin_mm": s * rng.uniform(1.5, 2.5),
        "fat_mm": s * rng.uniform(2.0, 4.0),
        "skull_mm": s * rng.uniform(5.0, 8.0),
        "csf_mm": s * rng.uniform(1.5, 3.0),
        "cortex_mm": s * rng.uniform(3.0, 4.0),
        "sulcus_depth_mm": s * rng.uniform(8.0, 14.0),
        "ventricle_scale": rng.uniform(0.7, 1.4),
        "lesion": lesion,
    }


class _Frame:
    """Head-frame coordinates of every voxel, with bounding boxes for small local structures."""

    def __init__(self, shape, spacing, centre, rot) -> None:
        self.shape, self.spacing, self.centre, self.rot = shape, np.asarray(spacing), np.asarray(centre), rot
        self.origin = phantom_affine(shape, spacing)[:3, 3]
        self.u, self.v, self.w = _head_frame(shape, spacing, centre, rot)

    def box(self, centre, radii) -> tuple[slice, slice, slice]:
        """Index box holding the head-frame ellipsoid (centre, radii), clipped to the volume."""
        world = self.centre + self.rot @ np.asarray(centre, dtype=float)
        half = np.sqrt(((self.rot * np.asarray(radii, dtype=float)) ** 2).sum(axis=1))
        lo = np.floor((world - half - self.origin) / self.spacing).astype(int)
        hi = np.ceil((world + half - self.origin) / self.spacing).astype(int) + 1
        return tuple(slice(max(0, lo[a]), max(0, min(self.shape[a], hi[a]))) for a in range(3))  # type: ignore

    def coords(self, box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.u[box], self.v[box], self.w[box]


def _build_labels(shape, spacing, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Label map plus a 0..1 'depth within the skull' field (0/1 at the tables, 0.5 mid diploe)."""
    p = _subject_params(rng, shape, spacing)
    s = p["scale"]
    a, b, c = p["radii_mm"]
    fr = _Frame(shape, spacing, p["centre_mm"], _rotation(*np.deg2rad(p["angles_deg"])))
    u, v, w = fr.u, fr.v, fr.w
    min_vox = min(spacing)
    min_px = min(spacing[:2])

    # Approximate depth (mm) below the outer head surface: (1 - f) / |grad f| for the ellipsoid level f.
    f = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
    g = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2 + (w / c**2) ** 2)
    depth = (1.0 - f) * f / np.maximum(g, np.float32(1e-6))
    d_fat = p["skin_mm"]
    d_bone = d_fat + p["fat_mm"]
    d_csf = d_bone + p["skull_mm"]
    d_brain = d_csf + p["csf_mm"]

    labels = np.zeros(shape, dtype=np.uint8)
    labels[depth >= 0] = _L["skin"]
    labels[depth >= d_fat] = _L["fat"]
    labels[depth >= d_bone] = _L["bone"]
    labels[depth >= d_csf] = _L["csf"]
    skull_depth = np.clip((depth - d_bone) / p["skull_mm"], 0.0, 1.0).astype(np.float32)

    # Cortex: a grey-matter ribbon that also lines the sulci; sulci are CSF clefts along the zero set of a
    # smooth random field, reaching a varying depth; white matter fills the gyral cores below.
    brain_depth = depth - np.float32(d_brain)
    brain = brain_depth >= 0
    wavelength = 40.0 * s
    k = 2 * np.pi / wavelength  # the field's RMS gradient (1/mm), turns half-widths in mm into field units
    # Only the outer shell of the brain can hold sulci: evaluate the fields there (1D gathers).
    shell = brain & (brain_depth < np.float32(1.6 * p["sulcus_depth_mm"] + p["cortex_mm"]))
    su, sv, sw, sd = u[shell], v[shell], w[shell], brain_depth[shell]
    # The field is evaluated on the head surface point along the ray from the centre, so clefts run radially.
    inv_f = 1.0 / np.maximum(f[shell], np.float32(1e-3))
    sulci = np.abs(_waves(rng, su * inv_f, sv * inv_f, sw * inv_f, wavelength=wavelength, n=8))
    reach_var = np.clip(_waves(rng, su, sv, sw, 60.0 * s), -1.5, 1.5)
    reach = np.float32(p["sulcus_depth_mm"]) * (1.0 + 0.35 * reach_var)
    csf_half = max(0.8 * s, 0.5 * min_px)
    in_sulcus = (sulci < csf_half * k) & (sd < reach)
    lining = (sulci < (csf_half + p["cortex_mm"]) * k) & (sd < reach + 0.7 * p["cortex_mm"])
    grey = (sd < p["cortex_mm"]) | lining
    shell_labels = np.full(sd.shape, _L["white_matter"], dtype=np.uint8)
    shell_labels[grey] = _L["grey_matter"]
    shell_labels[in_sulcus] = _L["csf"]
    labels[brain] = _L["white_matter"]
    labels[shell] = shell_labels

    def put(label: int, centre, radii, allowed=None, w_shift=None) -> None:
        box = fr.box(centre, radii if w_shift is None else (radii[0], radii[1], radii[2] + w_shift[1]))
        bu, bv, bw = fr.coords(box)
        if w_shift is not None:  # bend along v (banana shape): ends drop by w_shift[0]
            bw = bw + np.float32(w_shift[0]) * (bv / np.float32(radii[1])) ** 2
        m = _ellipsoid(bu, bv, bw, centre, radii) < 1
        sub = labels[box]
        ok = np.isin(sub, allowed) if allowed is not None else brain[box]
        sub[m & ok] = label

    vs = p["ventricle_scale"]
    deep = (_L["white_matter"], _L["grey_matter"])
    for side in (-1, 1):  # deep grey nuclei: thalami and lentiform nuclei
        put(_L["grey_matter"], (side * 8 * s, -8 * s, 2 * s), (7 * s, 10 * s, 7 * s), deep)
        put(_L["grey_matter"], (side * 21 * s, 5 * s, 2 * s), (5 * s, 12 * s, 8 * s), deep)
    for side in (-1, 1):  # lateral ventricles, bent down at both ends
        rad = (max(5.0 * s * vs, 0.6 * min_px), 24.0 * s * vs, 8.0 * s * vs)
        put(_L["csf"], (side * (4.0 + 4.0 * vs) * s, 0.0, 15.0 * s), rad, w_shift=(6.0 * s, 6.0 * s))
    third_rad = (max(1.5 * s * vs, 0.6 * min_px), 10 * s, 8 * s)
    put(_L["csf"], (0.0, -2.0 * s, 2.0 * s), third_rad)  # third ventricle
    # Interhemispheric fissure in the upper brain.
    fissure = (np.abs(u) < max(1.0 * s, 0.55 * min_px)) & (w > -0.05 * c) & (brain_depth < 30 * s)
    labels[fissure & brain] = _L["csf"]

    if p["lesion"] != "none":
        # Somewhere in the upper brain, away from the surface; radius at least ~1.5 voxels.
        pos = (rng.uniform(0.15, 0.4) * rng.choice([-1, 1]) * a, rng.uniform(-0.4, 0.4) * b,
               rng.uniform(0.1, 0.45) * c)
        radius = max(s * rng.uniform(5.0, 10.0), 1.5 * min_vox)
        rad = radius * rng.uniform(0.75, 1.25, size=3)
        if p["lesion"] == "mass":
            put(_L["edema"], pos, 1.8 * rad, (_L["white_matter"],))
            put(_L["mass"], pos, rad)
        else:
            put(_L["bleed"], pos, rad)
        p["lesion_centre_mm"] = [float(x) for x in pos]
        p["lesion_radius_mm"] = float(radius)
    return labels, skull_depth, p


def make_label_map(shape: tuple[int, int, int] = (96, 96, 48),
                   spacing: tuple[float, float, float] = (2.0, 2.0, 3.0),
                   seed: int = 0, index: int = 0) -> np.ndarray:
    """Label map (uint8, values of ``LABELS``) of subject ``index`` for ``seed``, as in ``make_subject``."""
    shape, spacing = _check_geometry(shape, spacing)
    labels, _, _ = _build_labels(shape, spacing, np.random.default_rng([int(seed), int(index), 0]))
    return labels


# ---------------------------------------------------------------------------------------------- rendering
def _blur(img: np.ndarray) -> np.ndarray:
    """Mild partial-volume blur (about a third of a voxel)."""
    return ndimage.gaussian_filter(img, sigma=(0.35, 0.35, 0.25), mode="nearest")


def _render_ct(labels: np.ndarray, skull_depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hu = np.zeros(len(LABELS), dtype=np.float32)
    hu[_L["background"]] = -1000.0
    hu[_L["skin"]] = rng.uniform(30, 45)
    hu[_L["fat"]] = rng.uniform(-110, -85)
    hu[_L["csf"]] = rng.uniform(5, 12)
    hu[_L["grey_matter"]] = rng.uniform(37, 43)
    hu[_L["white_matter"]] = rng.uniform(23, 28)
    hu[_L["bleed"]] = rng.uniform(62, 80)
    hu[_L["mass"]] = rng.uniform(45, 55)
    hu[_L["edema"]] = rng.uniform(14, 19)
    img = hu[labels]
    # Skull: dense tables (1300-1500 HU) around a less dense diploe (700-900 HU).
    cortical, diploe = rng.uniform(1300, 1500), rng.uniform(720, 900)
    bone = labels == _L["bone"]
    t = skull_depth[bone]
    img[bone] = diploe + (cortical - diploe) * (1.0 - 4.0 * t * (1.0 - t)) ** 2
    img = _blur(img)
    img += np.float32(rng.uniform(3.0, 5.0)) * rng.standard_normal(size=img.shape, dtype=np.float32)
    return np.clip(np.rint(img), _HU_MIN, _HU_MAX).astype(np.int16)


def _render_mri(labels: np.ndarray, skull_depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    t1 = np.zeros(len(LABELS), dtype=np.float32)  # T1-weighted: WM > GM > CSF, fat bright, bone/air dark
    t1[_L["skin"]] = rng.uniform(0.45, 0.55)
    t1[_L["fat"]] = rng.uniform(0.9, 1.0)
    t1[_L["csf"]] = rng.uniform(0.12, 0.2)
    t1[_L["grey_matter"]] = rng.uniform(0.52, 0.6)
    t1[_L["white_matter"]] = rng.uniform(0.82, 0.9)
    t1[_L["bleed"]] = rng.uniform(0.9, 1.0)
    t1[_L["mass"]] = rng.uniform(0.35, 0.42)
    t1[_L["edema"]] = rng.uniform(0.4, 0.47)
    img = t1[labels]
    bone = labels == _L["bone"]
    t = skull_depth[bone]
    img[bone] = 0.05 + 0.3 * (4.0 * t * (1.0 - t)) ** 2  # dark tables, fatty marrow a bit brighter
    img = _blur(img)
    # Gentle multiplicative bias field (about +-10 %) over normalised coordinates.
    coords = [np.linspace(-1, 1, n, dtype=np.float32) for n in labels.shape]
    cx, cy, cz = coords[0][:, None, None], coords[1][None, :, None], coords[2][None, None, :]
    k = rng.uniform(-0.08, 0.08, size=5).astype(np.float32)
    img *= np.exp(k[0] * cx + k[1] * cy + k[2] * cz + k[3] * cx * cy + k[4] * (cz**2 - 0.33))
    gain = np.float32(rng.uniform(700, 1200))
    img *= gain
    sigma = np.float32(0.012) * gain
    n1 = rng.standard_normal(size=img.shape, dtype=np.float32) * sigma
    n2 = rng.standard_normal(size=img.shape, dtype=np.float32) * sigma
    img = np.sqrt((img + n1) ** 2 + n2**2)  # Rician magnitude noise
    # Stored in steps of 1/16 (far below the noise, about 10 units): the NIfTI compresses twice as well.
    return (np.round(img * 16.0) / 16.0).astype(np.float32)


def make_subject(index: int, seed: int = 0, shape: tuple[int, int, int] = (96, 96, 48),
                 spacing: tuple[float, float, float] = (2.0, 2.0, 3.0)) -> Phantom:
    """Build subject ``index`` for ``seed``: label map, CT (int16 HU) and T1-like MRI (float32), paired."""
    shape, spacing = _check_geometry(shape, spacing)
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    geometry_rng = np.random.default_rng([int(seed), int(index), 0])
    labels, skull_depth, info = _build_labels(shape, spacing, geometry_rng)
    noise_rng = np.random.default_rng([int(seed), int(index), 1])
    ct = _render_ct(labels, skull_depth, noise_rng)
    mri = _render_mri(labels, skull_depth, noise_rng)
    return Phantom(f"subj{int(index):03d}", labels, ct, mri, phantom_affine(shape, spacing), spacing, info)


# ------------------------------------------------------------------------------------------- 2D slices
def radiological_slice(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` in display layout: rows anterior -> posterior, columns patient right -> left."""
    return np.ascontiguousarray(volume[::-1, ::-1, z].T)


def radiological_stack(volume: np.ndarray) -> np.ndarray:
    """All axial slices in display layout, shape (Z, Y, X): ``stack[z] == radiological_slice(volume, z)``."""
    return np.ascontiguousarray(np.transpose(volume[::-1, ::-1, :], (2, 1, 0)))


def ct_to_png(hu: np.ndarray, window: tuple[float, float] = CT_PNG_WINDOW) -> np.ndarray:
    """HU -> uint8 through a (level, width) window: the contract's CT mapping, then the one 8-bit mapping."""
    return unit_to_uint8(ct_to_unit(hu, window_from_level_width(*window)))


def mri_to_png(mri: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """MRI -> uint8 with ``lo`` -> 0 and ``hi`` -> 255: the contract's MRI mapping (``lo``, ``hi``: the volume's
    foreground percentiles, `mri_range`), then the one 8-bit mapping."""
    return unit_to_uint8(mri_to_unit(mri, lo, hi))


# ------------------------------------------------------------------------------------------------ writers
def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_data_dtype(data.dtype)
    hdr.set_xyzt_units("mm")
    hdr["descrip"] = _DESCRIP.encode()
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    # gzip with mtime=0 so that equal data gives byte-identical files.
    _atomic_write(path, gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))


def _write_pngs(folder: Path, names: list[str], images: np.ndarray) -> None:
    """Plain writes (PNGs are many and small; a rerun rewrites them all)."""
    from PIL import Image

    for name, img in zip(names, images, strict=True):
        Image.fromarray(img).save(folder / name, format="PNG", compress_level=3)


def _encode_elements(ds: Any) -> list[tuple[int, bytes]]:
    """Encode each element of ``ds`` (explicit VR little endian) separately, in tag order."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    out = []
    for elem in ds:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_data_element(fp, ds[elem.tag])
        out.append((int(elem.tag), fp.getvalue()))
    return out


def _write_ct_dicom(series_dir: Path, ph: Phantom, seed: int, window: tuple[float, float]) -> int:
    """One CT series, one file per axial slice; stored value = HU + 1024 (RescaleIntercept -1024).

    The slice-independent elements are encoded once and reused (pydicom per-file encoding is slow);
    the files are ordinary Part 10 files (preamble, file meta, explicit VR little endian).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
    from pydicom.valuerep import DS

    def uid(*parts: object) -> str:
        # 2.25 root + a name-based (deterministic) UUID; pydicom's generate_uid(prefix=None) is random.
        name = "/".join(map(str, (_UID_NAME, seed, ph.name, *parts)))
        return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}"

    def ds_(x: float) -> DS:
        return DS(float(x), auto_format=True)

    nx, ny, nz = ph.ct.shape
    sx, sy, sz = ph.spacing
    # Pixel (row 0, col 0) is voxel (nx-1, ny-1, z); in LPS that is (-RAS x, -RAS y, z).
    corner = ph.affine @ np.array([nx - 1, ny - 1, 0, 1.0])
    num = ph.name[4:]
    ds = Dataset()
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "ctmri-monai"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "PHANTOM"
    ds.SeriesDescription = "PHANTOM synthetic head CT (not an acquisition)"
    ds.PatientName = f"PHANTOM^{num}"
    ds.PatientID = f"PHANTOM-{num}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.KVP = ds_(120)
    ds.SliceThickness = ds_(sz)
    ds.SpacingBetweenSlices = ds_(sz)
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.ImageOrientationPatient = [ds_(1), ds_(0), ds_(0), ds_(0), ds_(1), ds_(0)]
    ds.FrameOfReferenceUID = uid("frame")
    ds.PositionReferenceIndicator = ""
    ds.ImageComments = "PHANTOM: synthetic data generated by ctmri-monai"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = ny, nx
    ds.PixelSpacing = [ds_(sy), ds_(sx)]  # row spacing (A-P), column spacing (R-L)
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter, ds.WindowWidth = ds_(window[0]), ds_(window[1])
    ds.RescaleIntercept = ds_(_DICOM_INTERCEPT)
    ds.RescaleSlope = ds_(1)
    ds.RescaleType = "HU"
    static = _encode_elements(ds)
    stored_stack = radiological_stack(ph.ct).astype(np.int32) - _DICOM_INTERCEPT

    # SOP instance UIDs share one root and have equal length, so the file meta group is encoded once and the
    # UID is swapped in per slice.
    sop_root = uid("sop")
    sops = [f"{sop_root}.{100001 + z}" for z in range(nz)]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sops[0]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    head = fp.getvalue()
    assert head.count(sops[0].encode()) == 1

    tmp = Path(tempfile.mkdtemp(prefix=f".{series_dir.name}.", dir=series_dir.parent))
    try:
        for z in range(nz):
            per_slice = Dataset()
            per_slice.SOPInstanceUID = sops[z]
            per_slice.InstanceNumber = z + 1
            per_slice.ImagePositionPatient = [ds_(-corner[0]), ds_(-corner[1]), ds_(corner[2] + z * sz)]
            per_slice.SliceLocation = ds_(corner[2] + z * sz)
            per_slice.PixelData = stored_stack[z].astype("<i2").tobytes()
            per_slice["PixelData"].VR = "OW"
            elements = sorted(static + _encode_elements(per_slice), key=lambda e: e[0])
            data = head.replace(sops[0].encode(), sops[z].encode()) + b"".join(e[1] for e in elements)
            (tmp / f"IM{z + 1:04d}.dcm").write_bytes(data)
        if series_dir.exists():
            shutil.rmtree(series_dir)
        os.replace(tmp, series_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return nz


def _remove_stale(out: Path) -> None:
    """Remove phantom files of an earlier run (only names this module writes) so no stale slices remain."""
    png = re.compile(r"subj\d{3,}_z\d{3,}\.png")
    for d in _PNG_DIRS:
        for p in (out / d).glob("subj*_z*.png"):
            if png.fullmatch(p.name):
                p.unlink()
    for kind in ("ct", "mri", "labels"):
        for p in (out / "volumes" / kind).glob("subj*.nii.gz"):
            if re.fullmatch(r"subj\d{3,}\.nii\.gz", p.name):
                p.unlink()
    for p in (out / "dicom" / "ct").glob("subj*"):
        if not (p.is_dir() and re.fullmatch(r"subj\d{3,}", p.name)):
            continue
        if all(f.suffix == ".dcm" for f in p.iterdir()):
            shutil.rmtree(p)


def n_test_subjects(subjects: int, test_fraction: float) -> int:
    """Test-split size: ``round(subjects * test_fraction)``, at least 1 and at most ``subjects - 1`` when
    ``subjects >= 2`` (0 for a single subject). The test subjects are the last ones."""
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if int(subjects) < 2:
        return 0
    return min(max(int(round(int(subjects) * float(test_fraction))), 1), int(subjects) - 1)


def make_phantoms(output_dir: str | os.PathLike[str], subjects: int = 8, seed: int = 0,
                  shape: tuple[int, int, int] = (96, 96, 48), test_fraction: float = 0.25,
                  spacing: tuple[float, float, float] = (2.0, 2.0, 3.0),
                  ct_png_window: tuple[float, float] = CT_PNG_WINDOW, min_head_fraction: float = 0.05,
                  write_dicom: bool = True) -> dict[str, Any]:
    """Write a paired synthetic CT / T1-MRI head data set under ``output_dir``.

    Layout (``NNN`` = subject index from 000, ``MMM`` = axial slice index):

    - ``volumes/ct/subjNNN.nii.gz`` (int16 HU), ``volumes/mri/subjNNN.nii.gz`` (float32, T1-like),
      ``volumes/labels/subjNNN.nii.gz`` (uint8, ``LABELS``); RAS affine from ``spacing``, centred origin,
      header descrip "PHANTOM ...".
    - ``dicom/ct/subjNNN/IM0001.dcm ...``: one CT series per subject (stored = HU + 1024, slope 1,
      intercept -1024, standard axial orientation, PatientName ``PHANTOM^NNN``).
    - ``trainA``/``testA`` (CT) and ``trainB``/``testB`` (MRI): 8-bit PNG axial slices ``subjNNN_zMMM.png`` in
      radiological layout; a CT and MRI slice of the same name are the same anatomy. CT PNGs use the HU window
      ``ct_png_window`` = (level, width), by default (40, 120), a brain window (skull saturates white);
      MRI PNGs map the volume's 0.5 and 99.5 percentiles to 0 and 255. Slices whose head area is below
      ``min_head_fraction`` of the slice are skipped. The last ``round(subjects * test_fraction)`` subjects
      (at least one when ``subjects >= 2``, never all) form the test split.
    - ``phantoms.json``: this function's return value plus per-subject parameters (lesion kind, radii, ...).

    The same ``seed`` gives identical arrays and byte-identical files. Returns a JSON-serialisable dict with
    the paths and counts.
    """
    shape, spacing = _check_geometry(shape, spacing)
    subjects, seed = int(subjects), int(seed)
    if subjects < 1:
        raise ValueError(f"subjects must be >= 1, got {subjects}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    n_test = n_test_subjects(subjects, test_fraction)

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    for d in (*_PNG_DIRS, "volumes/ct", "volumes/mri", "volumes/labels", "dicom/ct"):
        (out / d).mkdir(parents=True, exist_ok=True)

    result: dict[str, Any] = {
        "output_dir": str(out), "seed": seed, "subjects": subjects, "shape": list(shape),
        "spacing": list(spacing), "ct_png_window": list(map(float, ct_png_window)),
        "train_subjects": [], "test_subjects": [], "ct_volumes": [], "mri_volumes": [], "label_volumes": [],
        "dicom_series": [], "png_dirs": {d: str(out / d) for d in _PNG_DIRS},
        "png_counts": dict.fromkeys(_PNG_DIRS, 0), "dicom_files": 0,
    }
    details: dict[str, Any] = {}
    # Writing is bound by gzip and file-system latency, both outside the GIL: worker threads write while this
    # thread builds the next subject (at most two subjects in flight to bound memory).
    with ThreadPoolExecutor(max_workers=2) as pool:
        in_flight: list[list[Future]] = []
        for i in range(subjects):
            ph = make_subject(i, seed, shape, spacing)
            split = "test" if i >= subjects - n_test else "train"
            result[f"{split}_subjects"].append(ph.name)
            jobs = []
            for kind, data in (("ct", ph.ct), ("mri", ph.mri), ("labels", ph.labels)):
                path = out / "volumes" / kind / f"{ph.name}.nii.gz"
                jobs.append(pool.submit(_write_nifti, path, data, ph.affine))
                result["label_volumes" if kind == "labels" else f"{kind}_volumes"].append(str(path))
            if write_dicom:
                series_dir = out / "dicom" / "ct" / ph.name
                jobs.append(pool.submit(_write_ct_dicom, series_dir, ph, seed, ct_png_window))
                result["dicom_files"] += ph.ct.shape[2]
                result["dicom_series"].append(str(series_dir))

            lo, hi = mri_range(ph.mri, MRI_PNG_PERCENTILES)
            head_fraction = (ph.labels > 0).mean(axis=(0, 1))
            slices = [int(z) for z in np.flatnonzero(head_fraction >= min_head_fraction)]
            names = [f"{ph.name}_z{z:03d}.png" for z in slices]
            dir_ct, dir_mri = ("testA", "testB") if split == "test" else ("trainA", "trainB")
            ct8 = radiological_stack(ct_to_png(ph.ct, ct_png_window))[slices]
            mri8 = radiological_stack(mri_to_png(ph.mri, lo, hi))[slices]
            jobs.append(pool.submit(_write_pngs, out / dir_ct, names, ct8))
            jobs.append(pool.submit(_write_pngs, out / dir_mri, names, mri8))
            result["png_counts"][dir_ct] += len(slices)
            result["png_counts"][dir_mri] += len(slices)
            details[ph.name] = {"split": split, "png_slices": slices, "mri_png_range": [lo, hi], **ph.info}
            in_flight.append(jobs)
            if len(in_flight) > 1:
                for job in in_flight.pop(0):
                    job.result()  # re-raises a write error
        for jobs in in_flight:
            for job in jobs:
                job.result()

    write_card(out, "ctmri-phantoms", "Synthetic paired brain CT / T1-like MRI head phantoms of ctmri-monai "
               "(not acquisitions)", ct_png_window, pixel_spacing_mm=float(spacing[0]) if spacing[0] == spacing[1]
               else None, mri_percentiles=MRI_PNG_PERCENTILES, reference="ctmri_monai.phantoms", licence="Apache-2.0")
    result["card"] = str(out / "dataset.json")
    manifest = {**result, "subject_details": details}
    _atomic_write(out / "phantoms.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    result["manifest"] = str(out / "phantoms.json")
    return result
