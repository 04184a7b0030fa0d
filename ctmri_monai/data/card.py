"""Dataset cards: a ``dataset.json`` at a dataset's root that says what its pixels mean.

In the spirit of the Medical Segmentation Decathlon / nnU-Net ``dataset.json``. For 2D image folders it declares
the HU window the 8-bit CT images were exported with and, when known, their pixel size; training reads it into the
model's contract (`ctmri_monai.data.contract`). Keys (all optional but ``name``)::

    {"name": "...", "description": "...", "reference": "...", "licence": "...",
     "modality": {"trainA": "CT", "trainB": "MRI", "testA": "CT", "testB": "MRI"}, "file_ending": ".png",
     "ct": {"hu_window": {"level": 40, "width": 120}, "pixel_spacing_mm": 0.5},
     "mri": {"normalisation": {"method": "percentile", "lower": 0.5, "upper": 99.5}, "pixel_spacing_mm": null}}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctmri_monai.io.atomic import atomic_write_json
from ctmri_monai.io.errors import InputError
from ctmri_monai.spec import window_from_level_width

__all__ = ["CARD_NAME", "DatasetCard", "find_card", "read_card", "write_card"]

CARD_NAME = "dataset.json"


@dataclass
class DatasetCard:
    """What a card declares: CT export window [lo, hi] (HU), MRI percentiles, pixel sizes (mm) per domain."""

    path: Path | None = None
    ct_window: tuple[float, float] | None = None
    mri_percentiles: tuple[float, float] | None = None
    pixel_spacing_mm: dict[str, float | None] = field(default_factory=lambda: {"ct": None, "mri": None})
    raw: dict[str, Any] = field(default_factory=dict)


def _number(card: Path, value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InputError(card, f"{where} must be a positive number or null, got {value!r}")
    return float(value)


def read_card(path: str | os.PathLike) -> DatasetCard:
    """Parse a card file; a malformed one is one `InputError` naming the file and the key."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot read the dataset card ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict):
        raise InputError(path, "a dataset card must be a JSON object")
    card = DatasetCard(path=path, raw=raw)
    ct, mri = raw.get("ct") or {}, raw.get("mri") or {}
    window = ct.get("hu_window")
    if window is not None:
        try:
            card.ct_window = window_from_level_width(window["level"], window["width"])
        except (KeyError, TypeError, ValueError) as exc:
            problem = f"ct.hu_window must be {{'level': L, 'width': W}} with W > 0, got {window!r}"
            raise InputError(path, problem) from exc
    norm = mri.get("normalisation")
    if norm is not None:
        if not isinstance(norm, dict) or norm.get("method") != "percentile":
            raise InputError(path, f"mri.normalisation must be null or {{'method': 'percentile', 'lower': .., "
                                   f"'upper': ..}}, got {norm!r}")
        lower, upper = float(norm.get("lower", 0.5)), float(norm.get("upper", 99.5))
        if not 0.0 <= lower < upper <= 100.0:
            raise InputError(path, f"mri.normalisation percentiles must satisfy 0 <= lower < upper <= 100, got "
                                   f"{lower}, {upper}")
        card.mri_percentiles = (lower, upper)
    card.pixel_spacing_mm = {"ct": _number(path, ct.get("pixel_spacing_mm"), "ct.pixel_spacing_mm"),
                             "mri": _number(path, mri.get("pixel_spacing_mm"), "mri.pixel_spacing_mm")}
    return card


def find_card(dataset_dir: str | os.PathLike,
              card: str | os.PathLike | DatasetCard | None = None) -> DatasetCard | None:
    """The card ``card`` names, else ``<dataset_dir>/dataset.json`` when it exists, else None. A `DatasetCard`
    (read once by the caller, as the bundle does) is returned as it is."""
    if isinstance(card, DatasetCard):
        return card
    if card is not None:
        if not Path(card).is_file():
            raise InputError(card, "dataset card not found")
        return read_card(card)
    default = Path(dataset_dir) / CARD_NAME
    return read_card(default) if default.is_file() else None


def write_card(folder: str | os.PathLike, name: str, description: str, ct_level_width: tuple[float, float] | None,
               pixel_spacing_mm: float | None = None, mri_percentiles: tuple[float, float] | None = None,
               **extra: Any) -> Path:
    """Write ``<folder>/dataset.json`` atomically for 2D image folders (trainA/testA = CT, trainB/testB = MRI)."""
    card: dict[str, Any] = {
        "name": name, "description": description, **extra,
        "modality": {"trainA": "CT", "trainB": "MRI", "testA": "CT", "testB": "MRI"}, "file_ending": ".png",
        "ct": {"hu_window": None if ct_level_width is None else {"level": float(ct_level_width[0]),
                                                                 "width": float(ct_level_width[1])},
               "pixel_spacing_mm": pixel_spacing_mm},
        "mri": {"normalisation": None if mri_percentiles is None else {
            "method": "percentile", "lower": float(mri_percentiles[0]), "upper": float(mri_percentiles[1])},
            "pixel_spacing_mm": pixel_spacing_mm},
    }
    return atomic_write_json(Path(folder) / CARD_NAME, card)
