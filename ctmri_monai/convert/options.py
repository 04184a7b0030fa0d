"""The options that travel together through a conversion, as typed objects.

`ConvertOptions`: how one volume is converted (slices per call, device, mixed precision, background, QA threshold,
voxel limit, series choice, slice inferer, whether the disagreement map is made). `BatchOptions`: how a batch
runs (overwrite, DICOM output, progress, read-ahead, ranks, where the table goes), which model it uses when none
is loaded from a checkpoint, and the engine (torch, onnxruntime, openvino) and threads that run the generator.
Keyword arguments of the old flat signatures map onto these fields by name (`split_options`), so a caller may give
either the objects or the names; an unknown name is a ``TypeError`` as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ctmri_monai.spec import ModelSpec

__all__ = ["BatchOptions", "ConvertOptions", "split_options"]


@dataclass(frozen=True)
class ConvertOptions:
    """How one volume is converted (see `ctmri_monai.convert.pipeline.convert_volume`)."""

    batch_size: int = 16
    device: str | torch.device = "cpu"
    amp: bool = True
    mask_background: bool = True
    qa_threshold: float = 0.90
    max_voxels: int | None = None
    series_uid: str | None = None
    inferer: Any = None
    disagreement: bool = True

    def replace(self, **changes: Any) -> ConvertOptions:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class BatchOptions:
    """How a batch runs (see `ctmri_monai.convert.batch.run_batch`); ``convert`` is each volume's options with
    ``batch_size`` None meaning the device's default and ``device`` "auto" resolved once."""

    convert: ConvertOptions = field(default_factory=lambda: ConvertOptions(device="auto"))
    batch_size: int | None = None
    overwrite: bool = False
    dicom: bool = False
    progress: bool = True
    read_ahead: bool = True
    rank: int | None = None
    world_size: int | None = None
    stream: Any = None
    on_record: Callable[[dict[str, Any]], None] | None = None
    spec: ModelSpec | None = None
    model_info: Mapping[str, Any] | None = None
    contract_overrides: Mapping[str, Any] | None = None
    load_model: Callable[..., tuple[Any, dict]] | None = None
    engine: str | None = None
    threads: int | None = None


_CONVERT = {f.name for f in fields(ConvertOptions)}
_BATCH = {f.name for f in fields(BatchOptions)} - {"convert"}


def split_options(base: ConvertOptions | None = None, **names: Any) -> tuple[ConvertOptions, dict[str, Any]]:
    """``base`` (default `ConvertOptions()`) updated with the ``names`` that are its fields, and the other names."""
    base = base or ConvertOptions()
    own = {k: v for k, v in names.items() if k in _CONVERT}
    return (base.replace(**own) if own else base), {k: v for k, v in names.items() if k not in _CONVERT}


def batch_options(options: BatchOptions | None = None, **names: Any) -> BatchOptions:
    """``options`` (default `BatchOptions()`) updated by field name; ``batch_size`` and the `ConvertOptions` names
    go where they belong. An unknown name raises ``TypeError``."""
    options = options or BatchOptions()
    convert, rest = split_options(options.convert, **{k: v for k, v in names.items() if k != "batch_size"})
    unknown = sorted(set(rest) - _BATCH)
    if unknown:
        raise TypeError(f"unknown conversion option(s): {', '.join(unknown)}")
    if "batch_size" in names:
        rest["batch_size"] = names["batch_size"]
    return dataclasses.replace(options, convert=convert, **rest)
