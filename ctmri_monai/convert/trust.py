"""The disagreement map on the conversion road: computed from a translation, brought onto the input's grid, its
figures for the report, its file name, NIfTI description and table cell.

`volume_disagreement` runs `ctmri_monai.engines.disagreement.disagreement_map` on the translation's frames and
`on_input_grid` for the map and the head mask (> 0.5), then `ctmri_monai.metrics.flagged.flag_figures` on the
input's grid. It needs the loaded input image, so the pipeline calls it before freeing it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from ctmri_monai.engines.disagreement import disagreement_map, on_input_grid
from ctmri_monai.engines.slices import Translation
from ctmri_monai.io.paths import path_stem
from ctmri_monai.metrics.flagged import flag_figures, flag_mask
from ctmri_monai.spec import ModelSpec

__all__ = ["VolumeDisagreement", "disagreement_description", "disagreement_path", "flagged_cell",
           "volume_disagreement"]

Generator = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class VolumeDisagreement:
    """The map on the input's grid (``grid``, float32 in [0, 1]), the flagged voxels on the network's frames
    (``frames_flagged``, for the QA montage) and the JSON-ready ``figures`` (`flag_figures` plus the signals'
    scales, the extra passes per slice and the seconds)."""

    grid: np.ndarray
    frames_flagged: np.ndarray
    figures: dict[str, Any]


def volume_disagreement(translation: Translation, image: MetaTensor, affine: np.ndarray, spec: ModelSpec,
                        generators: tuple[Generator, Generator], direction: str,
                        run: Mapping[str, Any]) -> VolumeDisagreement:
    """The disagreement map of one conversion: ``translation`` of the loaded ``image`` (still on the input's
    grid, whose ``affine`` gives patient coordinates), ``generators`` (forward, backward) of ``direction``;
    ``run``: batch_size, device, amp as for conversion."""
    forward, backward = generators
    source = direction.split("2")[0]
    codes = spec.geometry.axcodes.upper()
    flip_axis = 0 if codes[0] in "LR" else 1  # the frames' left-right axis (1 for the default "PLS")
    result = disagreement_map(translation.source_unit, translation.fake_unit, forward, backward, direction,
                              head=translation.source_mask, context=spec.geometry.context_slices,
                              flip_axis=flip_axis, **run)
    grid = np.clip(on_input_grid(result.map, image, spec, source), 0.0, 1.0).astype(np.float32)
    head = on_input_grid(translation.source_mask.astype(np.float32), image, spec, source) > 0.5
    figures = flag_figures(grid, head, affine)
    figures.update(scales={k: round(v, 4) for k, v in result.scales.items()}, passes=result.passes,
                   seconds=result.seconds)
    return VolumeDisagreement(grid, flag_mask(result.map, translation.source_mask), figures)


def disagreement_path(output: str | os.PathLike, direction: str) -> Path:
    """``<stem>_<direction>_disagreement.nii.gz`` beside ``output`` (whose stem usually ends in the direction)."""
    out = Path(output)
    stem = path_stem(out)
    stem = stem if stem.endswith(f"_{direction}") else f"{stem}_{direction}"
    return out.parent / f"{stem}_disagreement.nii.gz"


def disagreement_description(direction: str, model_info: Mapping[str, Any] | None = None) -> str:
    """The map's NIfTI descrip (at most 80 characters): what it is, its scale and the model's hash."""
    sha = str((model_info or {}).get("sha256") or "")[:12]
    text = f"DISAGREEMENT MAP {direction} 0-1, 1=most suspect, flag>=0.5" + (f" model:{sha}" if sha else "")
    return text[:80]


def flagged_cell(figures: Mapping[str, Any] | None) -> str:
    """The flagged share of head voxels in a table cell (``-`` without a map)."""
    if not figures or figures.get("flagged_share") is None:
        return "-"
    return f"{100.0 * float(figures['flagged_share']):.2f}%"
