"""Anatomical-consistency QA of a converted volume: head masks of input and output, Dice per slice, montage.

The generator is not guaranteed to keep the anatomy (the paper's stated limitation). For every axial slice,
a head mask is taken from the input and from the output (a threshold in the network's [-1, 1] scale per
modality, holes filled, largest connected component kept) and their Dice is computed. Slices where
both masks are empty (smaller than ``min_area``) are skipped. A volume is flagged when any evaluated slice
has a Dice under ``threshold``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

# Head / air threshold in the [-1, 1] network scale: CT -800 HU with the default window; MRI 10 % of range.
HEAD_THRESHOLDS = {"ct": -0.8, "mri": -0.8}


def head_mask(slice2d: np.ndarray, threshold: float, min_area: int = 0) -> np.ndarray:
    """Head mask of one slice: ``> threshold``, holes filled, largest component; empty if < min_area."""
    mask = np.asarray(slice2d) > threshold
    if not mask.any():
        return mask
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(sizes.argmax())
    if int(mask.sum()) < min_area:
        mask[:] = False
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def consistency_report(
    source_unit: np.ndarray,
    output_unit: np.ndarray,
    source: str = "ct",
    target: str = "mri",
    threshold: float = 0.90,
    min_area_fraction: float = 0.005,
    source_threshold: float | None = None,
    target_threshold: float | None = None,
    slice_index: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Per-slice Dice of input and output head masks over axial slices ``[:, :, k]`` of two (H, W, D) arrays.

    ``slice_index[k]`` is the number reported for slice k (e.g. its index in the input file); default k.
    Returns dice_min, dice_mean, dice (per evaluated slice), slices_below, slices_evaluated, threshold,
    flagged.
    """
    src = np.asarray(source_unit)
    out = np.asarray(output_unit)
    if src.shape != out.shape or src.ndim != 3:
        raise ValueError(f"need two (H, W, D) arrays of one shape, got {src.shape} and {out.shape}")
    t_src = HEAD_THRESHOLDS[source] if source_threshold is None else source_threshold
    t_out = HEAD_THRESHOLDS[target] if target_threshold is None else target_threshold
    min_area = int(round(min_area_fraction * src.shape[0] * src.shape[1]))
    names = list(range(src.shape[2])) if slice_index is None else [int(i) for i in slice_index]
    per_slice: dict[int, float] = {}
    for k in range(src.shape[2]):
        a = head_mask(src[:, :, k], t_src, min_area)
        b = head_mask(out[:, :, k], t_out, min_area)
        if a.any() or b.any():
            per_slice[names[k]] = round(dice(a, b), 4)
    values = np.asarray(list(per_slice.values()), dtype=np.float64)
    below = sorted(k for k, d in per_slice.items() if d < threshold)
    return {
        "dice_min": float(values.min()) if values.size else None,
        "dice_mean": round(float(values.mean()), 4) if values.size else None,
        "slices_evaluated": int(values.size),
        "slices_below": below,
        "threshold": float(threshold),
        "flagged": bool(below),
        "dice": per_slice,
    }


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


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((np.asarray(unit, dtype=np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def pick_slices(report: dict[str, Any], depth: int, n: int = 6) -> list[int]:
    """Up to ``n`` evaluated slices evenly spread over the head, always including the worst one."""
    evaluated = sorted(report.get("dice", {}))
    if not evaluated:
        return sorted({int(round(x)) for x in np.linspace(0, depth - 1, min(n, depth))})
    picks = {evaluated[int(round(i))] for i in np.linspace(0, len(evaluated) - 1, min(n, len(evaluated)))}
    worst = min(report["dice"], key=report["dice"].get)
    if worst not in picks:
        picks.discard(min(picks, key=lambda k: abs(k - worst)))
        picks.add(worst)
    return sorted(picks)


def save_montage(
    source_unit: np.ndarray,
    output_unit: np.ndarray,
    path: str | os.PathLike,
    report: dict[str, Any] | None = None,
    slice_index: Sequence[int] | None = None,
    axcodes: str = "PLS",
    n: int = 6,
    columns: int = 2,
    min_tile: int = 128,
) -> Path:
    """PNG montage of a few axial slices, each as ``input | output``; red frame where Dice < threshold.

    ``slice_index`` maps array slice k to the number used in ``report`` (as in `consistency_report`).
    """
    src, out = np.asarray(source_unit), np.asarray(output_unit)
    depth = src.shape[2]
    names = list(range(depth)) if slice_index is None else [int(i) for i in slice_index]
    position = {name: k for k, name in enumerate(names)}
    report = report or {}
    dice_of = report.get("dice") or {}
    if dice_of:
        chosen = [c for c in pick_slices(report, depth, n) if c in position]
    else:
        chosen = [names[k] for k in pick_slices({}, depth, n)]
    zoom = max(1, -(-min_tile // max(src.shape[0], src.shape[1])))  # small volumes are enlarged to be legible
    h, w = (zoom * s for s in upright(src[:, :, 0], axcodes).shape)
    gap, label_h, pad = 2, 14, 4
    tile_w, tile_h = 2 * w + gap + 2 * pad, h + label_h + 2 * pad
    rows = max(1, -(-len(chosen) // columns))
    canvas = Image.new("RGB", (columns * tile_w, rows * tile_h), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    threshold = report.get("threshold", 0.0)
    for i, name in enumerate(chosen):
        k = position[name]
        x0, y0 = (i % columns) * tile_w, (i // columns) * tile_h
        block = np.ones((zoom, zoom), np.uint8)
        tiles = [np.kron(_to_uint8(upright(a[:, :, k], axcodes)), block) for a in (src, out)]
        pair = np.concatenate([tiles[0], np.zeros((h, gap), np.uint8), tiles[1]], axis=1)
        canvas.paste(Image.fromarray(pair, mode="L").convert("RGB"), (x0 + pad, y0 + label_h + pad))
        d = dice_of.get(name)
        text = f"slice {name}" + (f"  dice {d:.3f}" if d is not None else "")
        bad = d is not None and d < threshold
        draw.text((x0 + pad, y0 + 1), text, fill=(255, 80, 80) if bad else (230, 230, 230))
        if bad:
            draw.rectangle([x0 + 1, y0 + 1, x0 + tile_w - 2, y0 + tile_h - 2], outline=(255, 0, 0), width=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.png")
    try:
        canvas.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
