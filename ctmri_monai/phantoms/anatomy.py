"""Phantom anatomy: one 3D label map per subject (scalp skin and fat, skull, CSF with ventricles and sulci, grey
matter with deep nuclei, white matter, and in some subjects a hyperdense bleed or a mass with oedema).

The label map is deterministic from ``seed`` and the subject index; volumes are ``(X, Y, Z)`` on the RAS grid of
`phantom_affine`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LABELS", "LESIONS", "build_labels", "check_geometry", "make_label_map", "phantom_affine"]

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
#: Lesion kinds of a subject: none, a hyperdense bleed (haemorrhage-like), a mass with oedema (tumour-like).
LESIONS = ("none", "bleed", "mass")


# ----------------------------------------------------------------------------------------------- geometry
def phantom_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS affine: diagonal ``spacing``, origin chosen so the volume centre is at (0, 0, 0) mm."""
    affine = np.eye(4)
    for a in range(3):
        affine[a, a] = spacing[a]
        affine[a, 3] = -(shape[a] - 1) / 2.0 * spacing[a]
    return affine


def check_geometry(shape: Any, spacing: Any) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """``shape`` as three sizes >= 4 and ``spacing`` as three positive mm; ValueError otherwise."""
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


def _subject_params(rng: np.random.Generator, shape, spacing, lesion: str | None = None) -> dict[str, Any]:
    fov = [shape[a] * spacing[a] for a in range(3)]
    s = min(fov[0], fov[1]) / 192.0  # anatomy is sized for a 192 mm in-plane field of view, scaled to fit
    radii = s * np.array([rng.uniform(68, 75), rng.uniform(80, 87), rng.uniform(78, 88)])
    top = fov[2] / 2.0 - 0.06 * fov[2]  # a few empty slices above the vertex
    centre = s * np.array([rng.uniform(-4, 4), rng.uniform(-4, 4), rng.uniform(-2, 2)])
    centre[2] += top - radii[2]
    angles = [rng.uniform(-8, 8), rng.uniform(-6, 6), rng.uniform(-4, 4)]
    drawn = str(rng.choice(LESIONS, p=[0.4, 0.35, 0.25]))  # drawn even when overridden: the rest stays the same
    lesion = drawn if lesion is None else lesion
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


def build_labels(shape, spacing, rng: np.random.Generator,
                 lesion: str | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Label map plus a 0..1 'depth within the skull' field (0/1 at the tables, 0.5 mid diploe). ``lesion``
    ("none", "bleed" or "mass") replaces the subject's drawn lesion kind (None: keep it)."""
    if lesion is not None and lesion not in LESIONS:
        raise ValueError(f"lesion must be one of {LESIONS}, got {lesion!r}")
    p = _subject_params(rng, shape, spacing, lesion)
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
    shape, spacing = check_geometry(shape, spacing)
    labels, _, _ = build_labels(shape, spacing, np.random.default_rng([int(seed), int(index), 0]))
    return labels

