"""The disagreement map on the conversion road: computed from a translation, brought onto the input's grid, its
figures for the report, its file name, NIfTI description and table cell.

`volume_disagreement` runs `ctmri_monai.engines.disagreement.disagreement_map` on the translation's frames with the
forward generator alone (so an exported model gives a map too), brings it onto the input's grid with the frames'
own inverse (no preprocessing runs again), then `ctmri_monai.metrics.flagged.flag_figures` on that grid.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctmri_monai.engines.disagreement import disagreement_map
from ctmri_monai.engines.slices import Translation
from ctmri_monai.io.orientation import left_right_axis
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


def volume_disagreement(translation: Translation, generator: Generator, spec: ModelSpec, direction: str,
                        run: Mapping[str, Any]) -> VolumeDisagreement:
    """The disagreement map of one conversion: ``translation`` (its frames and their inverse) made by
    ``generator`` in ``direction`` on the contract ``spec``; ``run``: batch_size, device, amp as for conversion."""
    frames = translation.frames
    head = np.asarray(frames.head, bool)
    flip_axis = left_right_axis(spec.geometry.axcodes)
    result = disagreement_map(translation.source_unit, translation.fake_unit, generator, direction, head=head,
                              context=spec.geometry.context_slices, flip_axis=flip_axis, **run)
    inverse = frames.inverse
    input_head = np.asarray(inverse.input_head, bool)
    grid = np.clip(inverse.to_input(result.map), 0.0, 1.0).astype(np.float32)
    grid[~input_head] = 0.0  # resampling may carry the map's edge past the input's head
    figures = flag_figures(grid, input_head, inverse.affine)
    figures.update(scales={k: round(v, 4) for k, v in result.scales.items()}, passes=result.passes,
                   seconds=result.seconds)
    return VolumeDisagreement(grid, flag_mask(result.map, head), figures)


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
