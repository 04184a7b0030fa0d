"""Anatomical-consistency QA of a converted volume, with its montage.

The generator is not guaranteed to keep the anatomy (the paper's stated limitation). On the network's frames, the
one head mask is taken from the input and from the raw generator output (before background masking) and two
kinds of finding are kept apart:

* **anatomy changed**: a slice whose input holds a head, where the output's head mask disagrees with it (Dice
  under ``threshold``). These flag the volume.
* **invented tissue in air**: output tissue where the input is air, either in slices that hold no head at all or
  around the head (``invented_fraction``: such pixels over the input's head pixels). Conversion writes background
  there by default, so these are reported, not flagged.

Beside them, with no reference to compare with (`ctmri_monai.metrics.consistency`, inside the input's head):
``through_plane``, how well the output's slice-to-slice edges follow the input's (correlation, higher is better);
``roughness``, the output's slice-to-slice roughness over the input's (1 is best, above 1 flickers); ``structure``,
the alignment of in-plane edges with the input's (0..1, higher is better).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ctmri_monai.io.images import save_png, unit_to_uint8
from ctmri_monai.metrics.consistency import consistency_metrics
from ctmri_monai.metrics.flagged import outline_regions
from ctmri_monai.metrics.paired import dice
from ctmri_monai.transforms.mask import image_head_mask, with_min_area

__all__ = ["MontageLayout", "consistency_report", "gap_cell", "gap_line", "pick_slices", "save_montage",
           "upright"]


def consistency_report(source_unit: np.ndarray, output_unit: np.ndarray, threshold: float = 0.90,
                       min_area_fraction: float = 0.005, slice_index: Sequence[int] | None = None) -> dict[str, Any]:
    """Findings over the axial slices ``[:, :, k]`` of two (H, W, D) arrays in [-1, 1] (module docstring).

    ``slice_index[k]`` is the number reported for slice k (e.g. its index in the input file). Returns: dice (per
    slice holding a head), dice_min, dice_mean, slices_evaluated, slices_below (anatomy changed),
    slices_tissue_in_air (no head in the input, tissue in the output), invented_fraction, threshold, flagged,
    through_plane, roughness, structure (module docstring; None where undefined).
    """
    src, out = np.asarray(source_unit), np.asarray(output_unit)
    if src.shape != out.shape or src.ndim != 3:
        raise ValueError(f"need two (H, W, D) arrays of one shape, got {src.shape} and {out.shape}")
    min_area = int(round(min_area_fraction * src.shape[0] * src.shape[1]))
    names = list(range(src.shape[2])) if slice_index is None else [int(i) for i in slice_index]
    # One mask function on both frames (`image_head_mask`: a brain-window image shows fat as air and its skin as a
    # broken ring), so that an output that keeps the input's anatomy scores 1.
    src_mask = with_min_area(image_head_mask(src), min_area)
    out_mask = with_min_area(image_head_mask(out), min_area)
    per_slice: dict[int, float] = {}
    in_air: list[int] = []
    for k in range(src.shape[2]):
        if src_mask[:, :, k].any():
            per_slice[names[k]] = round(dice(src_mask[:, :, k], out_mask[:, :, k]), 4)
        elif out_mask[:, :, k].any():
            in_air.append(names[k])
    values = np.asarray(list(per_slice.values()), dtype=np.float64)
    below = sorted(k for k, d in per_slice.items() if d < threshold)
    invented = int(np.logical_and(out_mask, ~src_mask).sum()) / max(int(src_mask.sum()), 1)
    figures = consistency_metrics(out, src, src_mask)
    return {
        "dice_min": float(values.min()) if values.size else None,
        "dice_mean": round(float(values.mean()), 4) if values.size else None,
        "slices_evaluated": int(values.size),
        "slices_below": below,
        "slices_tissue_in_air": sorted(in_air),
        "invented_fraction": round(invented, 4),
        "threshold": float(threshold),
        "flagged": bool(below),
        "through_plane": _rounded(figures["z_edge_corr"]),
        "roughness": _rounded(figures["z_roughness_ratio"]),
        "structure": _rounded(figures["ngf_alignment"]),
        "dice": per_slice,
    }


def _rounded(value: float) -> float | None:
    """4 decimals; None for NaN (JSON has no NaN)."""
    return None if not np.isfinite(value) else round(float(value), 4)


# ------------------------------------------------------------------------------------------------- montage


def upright(slice2d: np.ndarray, axcodes: str = "PLS") -> np.ndarray:
    """Reorient an axial slice with in-plane codes ``axcodes[:2]`` to radiological display (rows A->P,
    columns patient right -> left)."""
    img = np.asarray(slice2d)
    c0, c1 = axcodes[0].upper(), axcodes[1].upper()
    if c0 in "RL":  # first axis is left-right: put anterior-posterior first
        img, c0, c1 = img.T, c1, c0
    if c0 == "A":
        img = img[::-1, :]
    if c1 == "R":
        img = img[:, ::-1]
    return img


def pick_slices(report: dict[str, Any], depth: int, n: int = 6) -> list[int]:
    """Up to ``n`` slices holding a head, evenly spread, always including the worst one and the first slice
    with tissue in air."""
    evaluated = sorted(report.get("dice", {}))
    if not evaluated:
        return sorted({int(round(x)) for x in np.linspace(0, depth - 1, min(n, depth))})
    picks = {evaluated[int(round(i))] for i in np.linspace(0, len(evaluated) - 1, min(n, len(evaluated)))}
    must = [min(report["dice"], key=report["dice"].get)] + list(report.get("slices_tissue_in_air", []))[:1]
    for k in must:
        if k not in picks:
            picks.discard(min((p for p in picks if p not in must), key=lambda p: abs(p - k), default=None))
            picks.add(k)
    return sorted(picks)


def sagittal(volume: np.ndarray, axcodes: str = "PLS", spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """The mid-line sagittal reformat of an (H, W, D) stack of axial slices, as a picture: anterior on the left,
    superior at the top, rows stretched so that slice thickness and pixel size keep their true proportion."""
    upright_stack = np.stack([upright(volume[:, :, k], axcodes) for k in range(volume.shape[2])], axis=-1)
    plane = upright_stack[:, upright_stack.shape[1] // 2, :].T[::-1]  # (D, H): rows superior -> inferior
    stretch = max(1, int(round(float(spacing[2]) / float(spacing[0]))))
    return np.repeat(plane, stretch, axis=0)


def gap_line(gap: dict[str, Any] | None) -> str:
    """The domain gap in words (`ctmri_monai.transforms.gap`): for the montage."""
    if not gap or (gap.get("intensity_ratio") is None and gap.get("head_size_ratio") is None):
        return "domain gap: not measured (the model's contract records no training references)"
    text = (f"domain gap: intensity {_x(gap.get('intensity_ratio'))} the training halves' distance, head size "
            f"{_x(gap.get('head_size_ratio'))} training")
    return text + ("  FAR FROM TRAINING" if gap.get("far") else "")


def gap_cell(gap: dict[str, Any] | None) -> str:
    """The domain gap in a table cell: ``intensity ratio / head-size ratio``, ``!`` when far from training."""
    if not gap:
        return "-"
    return f"{_x(gap.get('intensity_ratio'))}/{_x(gap.get('head_size_ratio'))}" + ("!" if gap.get("far") else "")


def _x(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}x"


@dataclass(frozen=True)
class MontageLayout:
    """How a QA montage is laid out: the frames' ``axcodes``, ``n`` slices in ``columns``, tiles enlarged to at
    least ``min_tile`` pixels, the frames' voxel ``spacing`` (mm, for the sagittal reformat's proportions)."""

    axcodes: str = "PLS"
    n: int = 6
    columns: int = 2
    min_tile: int = 128
    spacing: Sequence[float] = (1.0, 1.0, 1.0)


def save_montage(source_unit: np.ndarray, output_unit: np.ndarray, path: str | os.PathLike,
                 report: dict[str, Any] | None = None, slice_index: Sequence[int] | None = None,
                 layout: MontageLayout | None = None, flagged: np.ndarray | None = None) -> Path:
    """PNG montage of a few axial slices, each as ``generator input | output``: red frame and label where the
    anatomy changed (Dice < threshold), orange label where tissue was invented in an empty slice, and the red
    outlines of the disagreement map's ``flagged`` regions (bool, the frames' shape) on the output; below them the
    mid-line sagittal reformat of input and output (slices that disagree show as stripes), with the through-plane
    and structure figures, and the domain gap (``report["gap"]``) in orange when far from training."""
    layout = layout or MontageLayout()
    axcodes, n, columns, min_tile, spacing = (layout.axcodes, layout.n, layout.columns, layout.min_tile,
                                              layout.spacing)
    src, out = np.asarray(source_unit), np.asarray(output_unit)
    depth = src.shape[2]
    names = list(range(depth)) if slice_index is None else [int(i) for i in slice_index]
    position = {name: k for k, name in enumerate(names)}
    report = report or {}
    dice_of = report.get("dice") or {}
    in_air = set(report.get("slices_tissue_in_air", []))
    chosen = [c for c in pick_slices(report, depth, n) if c in position] if dice_of else \
        [names[k] for k in pick_slices({}, depth, n)]
    zoom = max(1, -(-min_tile // max(src.shape[0], src.shape[1])))  # small volumes are enlarged to be legible
    h, w = (zoom * s for s in upright(src[:, :, 0], axcodes).shape)
    gap, label_h, pad = 2, 14, 4
    tile_w, tile_h = 2 * w + gap + 2 * pad, h + label_h + 2 * pad
    rows = max(1, -(-len(chosen) // columns))
    reformats = [np.kron(unit_to_uint8(sagittal(a, axcodes, spacing)), np.ones((zoom, zoom), np.uint8))
                 for a in (src, out)]
    sag = np.concatenate([reformats[0], np.zeros((reformats[0].shape[0], gap), np.uint8), reformats[1]], axis=1)
    sag_h = sag.shape[0] + 2 * label_h + 2 * pad
    canvas = Image.new("RGB", (max(columns * tile_w, sag.shape[1] + 2 * pad), rows * tile_h + sag_h), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    threshold = report.get("threshold", 0.0)
    block = np.ones((zoom, zoom), np.uint8)
    for i, name in enumerate(chosen):
        k = position[name]
        x0, y0 = (i % columns) * tile_w, (i // columns) * tile_h
        tiles = [np.kron(unit_to_uint8(upright(a[:, :, k], axcodes)), block) for a in (src, out)]
        pair = np.concatenate([tiles[0], np.zeros((h, gap), np.uint8), tiles[1]], axis=1)
        canvas.paste(Image.fromarray(pair, mode="L").convert("RGB"), (x0 + pad, y0 + label_h + pad))
        if flagged is not None and flagged[:, :, k].any():  # the flagged regions' outlines on the output
            marked = outline_regions(unit_to_uint8(upright(out[:, :, k], axcodes)),
                                     upright(flagged[:, :, k], axcodes), zoom=zoom)
            canvas.paste(Image.fromarray(marked, mode="RGB"), (x0 + pad + w + gap, y0 + label_h + pad))
        d = dice_of.get(name)
        bad = d is not None and d < threshold
        if name in in_air:
            text, colour = f"slice {name}  tissue in air", (255, 170, 60)
        else:
            text = f"slice {name}" + (f"  dice {d:.3f}" if d is not None else "")
            colour = (255, 80, 80) if bad else (230, 230, 230)
        draw.text((x0 + pad, y0 + 1), text, fill=colour)
        if bad:
            draw.rectangle([x0 + 1, y0 + 1, x0 + tile_w - 2, y0 + tile_h - 2], outline=(255, 0, 0), width=2)
    y0 = rows * tile_h
    canvas.paste(Image.fromarray(sag, mode="L").convert("RGB"), (pad, y0 + label_h + pad))
    figures = "  ".join(f"{name} {report[key]:.3f}" for key, name in (("through_plane", "through-plane"),
                                                                       ("structure", "structure"))
                        if isinstance(report.get(key), float))
    draw.text((pad, y0 + 1), f"sagittal reformat, input | output  {figures}", fill=(230, 230, 230))
    far = bool((report.get("gap") or {}).get("far"))
    draw.text((pad, canvas.height - label_h), gap_line(report.get("gap")),
              fill=(255, 170, 60) if far else (230, 230, 230))
    return save_png(canvas, path)
