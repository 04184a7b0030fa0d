"""Evaluation outputs: translated images on disk and the results table (JSON + Markdown)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from ctmri_monai.io.atomic import atomic_write_json, atomic_write_text
from ctmri_monai.io.images import save_png, unit_to_uint8
from ctmri_monai.networks import count_parameters

TABLE_FIELDS = ("backbone", "fid_ct2mri", "fid_mri2ct", "kid_ct2mri", "kid_mri2ct", "params_m", "n_test_ct",
                "n_test_mri", "seconds")


def _names(paths: Any, n: int, prefix: str, start: int) -> list[str]:
    if isinstance(paths, (list, tuple)) and len(paths) == n:
        return [Path(str(p)).stem for p in paths]
    return [f"{prefix}_{start + i:05d}" for i in range(n)]


class TranslationSaver:
    """Save every valid translated slice as an 8-bit PNG: ``output_dir/ct2mri/<ct name>.png`` and ``mri2ct/``."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir)
        self.count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        n = out["fake_mri"].shape[0]
        for direction, fake, valid, paths in (("ct2mri", out["fake_mri"], out["ct_valid"], out.get("ct_path")),
                                              ("mri2ct", out["fake_ct"], out["mri_valid"], out.get("mri_path"))):
            names = _names(paths, n, direction, self.count)
            fake, keep = fake.detach().float().cpu(), torch.as_tensor(valid).tolist()  # one copy per batch
            for i in range(n):
                if keep[i]:
                    save_png(unit_to_uint8(fake[i]), self.output_dir / direction / f"{names[i]}.png")
        self.count += n


def markdown_table(rows: list[Mapping[str, Any]], fields: tuple[str, ...]) -> str:
    """Rows of dicts as a Markdown table; floats with 2 decimals (4 for KID)."""
    def fmt(key: str, value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}" if key.startswith("kid") else f"{value:.2f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(fmt(f, row.get(f)) for f in fields) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class ResultsWriter:
    """On evaluation end, write ``results.json`` and ``results.md`` with the paper's table fields and more.

    Fields: backbone, FID and KID both ways, generator parameters (M, one generator), test images per domain,
    seconds, plus every other metric in the engine's state (paired MAE/PSNR/SSIM that a `PairedMetricsHandler`
    attached before this one added) and ``extra`` items.
    """

    def __init__(self, output_dir: str, backbone: str, generator: nn.Module, extra: Mapping[str, Any] | None = None):
        self.output_dir = Path(output_dir)
        self.backbone, self.generator = backbone, generator
        self.extra = dict(extra or {})
        self.start = 0.0
        self.n_ct = self.n_mri = 0
        self.row: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _started(self, engine: Engine) -> None:
        self.start, self.n_ct, self.n_mri = time.perf_counter(), 0, 0

    def _count(self, engine: Engine) -> None:
        out = engine.state.output
        n_ct, n_mri = torch.stack([torch.as_tensor(out["ct_valid"]).sum(), torch.as_tensor(out["mri_valid"]).sum()
                                   ]).tolist()
        self.n_ct, self.n_mri = self.n_ct + n_ct, self.n_mri + n_mri

    def _write(self, engine: Engine) -> None:
        metrics = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))}
        self.row = {"backbone": self.backbone, **metrics,
                    "params_m": round(count_parameters(self.generator) / 1e6, 3),
                    "n_test_ct": self.n_ct, "n_test_mri": self.n_mri,
                    "seconds": round(time.perf_counter() - self.start, 1), **self.extra}
        atomic_write_json(self.output_dir / "results.json", self.row)
        fields = TABLE_FIELDS + tuple(k for k in self.row if k not in TABLE_FIELDS)
        atomic_write_text(self.output_dir / "results.md", markdown_table([self.row], fields))
