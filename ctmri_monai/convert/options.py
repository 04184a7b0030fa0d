"""The options that travel together through a conversion, as typed objects, built once.

`ConvertOptions`: how one volume is converted (slices per call, device, engine and threads, mixed precision,
background, QA threshold, voxel limit, series choice, slice inferer, whether the disagreement map is made).
`ConvertOptions.for_run` is the one place that derives the engine, the device, the batch size and mixed precision
from what a user asked for; the CLI, the node, DICOMweb and the bundle call it. `ModelSource`: where a batch's
model comes from. `BatchOptions`: how a batch runs (overwrite, DICOM output, progress, read-ahead, ranks, where the
table goes). Each refuses, with a `ValueError` naming it, an option that does not apply.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from ctmri_monai.spec import ModelSpec
from ctmri_monai.utils.device import resolve_device

__all__ = ["BatchOptions", "ConvertOptions", "ModelSource", "default_batch_size", "split_options"]

#: The engines that run on the CPU only.
CPU_ENGINES = ("onnxruntime", "openvino")


def default_batch_size(device: str | torch.device) -> int:
    """Slices per generator call: 16 on CUDA; 1 on the CPU, where larger batches measured slower
    (ResNet-9 at 256 x 256 on 2 cores: 1.1-1.3 slices/s at batch 1, 1.0 at 4, 0.9 at 16)."""
    return 16 if torch.device(device).type == "cuda" else 1


#: The engine an exported file runs with unless told otherwise.
EXPORTED_ENGINES = {"torchscript": "torch", "onnx": "onnxruntime"}


@dataclass(frozen=True)
class ConvertOptions:
    """How one volume is converted (see `ctmri_monai.convert.pipeline.convert_volume`); build it with
    `for_run` so that the device, engine, batch size and mixed precision agree."""

    batch_size: int = 16
    device: str | torch.device = "cpu"
    amp: bool = True
    mask_background: bool = True
    qa_threshold: float = 0.90
    max_voxels: int | None = None
    series_uid: str | None = None
    inferer: Any = None
    disagreement: bool = False
    engine: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.engine in CPU_ENGINES and not str(self.device).startswith("cpu"):
            raise ValueError(f"the {self.engine} engine runs on the CPU, not on {self.device}: build the options "
                             "with ConvertOptions.for_run")

    @classmethod
    def for_run(cls, device: str | torch.device | None = "auto", engine: str | None = None, *,
                model: str | os.PathLike | None = None, batch_size: int | None = None, **fields: Any
                ) -> ConvertOptions:
        """The options of one run: the engine (as asked, else the exported ``model`` file's), the device it runs
        on (the CPU for onnxruntime, openvino and exported files; else ``device`` resolved), the batch size
        (given, else `default_batch_size` of that device) and mixed precision (only on CUDA); ``fields``: the
        other options (``amp``, ``threads``, ``disagreement``, ...)."""
        from ctmri_monai.networks.export import exported_format

        exported = exported_format(model) if model is not None else None
        engine = engine or EXPORTED_ENGINES.get(exported or "") or ("torch" if fields.get("threads") else None)
        dev = resolve_device("cpu" if engine in CPU_ENGINES or exported else device)
        amp = bool(fields.pop("amp", True)) and dev.type == "cuda"
        size = default_batch_size(dev) if batch_size is None else int(batch_size)
        return cls(batch_size=size, device=dev, amp=amp, engine=engine, **fields)

    def replace(self, **changes: Any) -> ConvertOptions:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ModelSource:
    """Where a batch's model comes from: a ``checkpoint`` (a training checkpoint or a file of `ctmri export`,
    read through ``load_model(path, direction, device) -> (module, info)`` when given), or a ``generator`` with its
    contract (``spec``, or a ``model_info`` holding one). ``contract_overrides`` (``ct_window``, ``framing``,
    ``pixdim``, ``frame_by``) replace parts of the contract, each logged."""

    checkpoint: str | os.PathLike | None = None
    generator: Callable[[torch.Tensor], torch.Tensor] | None = None
    spec: ModelSpec | None = None
    model_info: Mapping[str, Any] | None = None
    contract_overrides: Mapping[str, Any] | None = None
    load_model: Callable[..., tuple[Any, dict]] | None = None

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.generator is None):
            raise ValueError("give exactly one of checkpoint and generator")
        if self.checkpoint is not None and (self.spec is not None or self.model_info is not None):
            raise ValueError("spec and model_info describe a generator; a checkpoint carries its own contract "
                             "(give contract_overrides to change parts of it)")
        if self.generator is not None and self.load_model is not None:
            raise ValueError("load_model reads a checkpoint; it does not apply to a generator")
        if self.generator is not None and self.spec is None and (self.model_info or {}).get("spec") is None \
                and (self.model_info or {}).get("model_spec") is None:
            raise ValueError("a generator needs its contract: give spec= (a ModelSpec) or a model_info holding one")


@dataclass(frozen=True)
class BatchOptions:
    """How a batch runs (see `ctmri_monai.convert.batch.run_batch`); ``convert``: each volume's options (None:
    `ConvertOptions.for_run` for the model; must be None when the batch is given a ready service, which has
    its own)."""

    convert: ConvertOptions | None = None
    overwrite: bool = False
    dicom: bool = False
    progress: bool = True
    read_ahead: bool = True
    rank: int | None = None
    world_size: int | None = None
    stream: Any = None
    on_record: Callable[[dict[str, Any]], None] | None = None


_CONVERT = {f.name for f in fields(ConvertOptions)}


def split_options(base: ConvertOptions | None = None, **names: Any) -> tuple[ConvertOptions, dict[str, Any]]:
    """``base`` (default `ConvertOptions()`) updated with the ``names`` that are its fields, and the other names."""
    base = base or ConvertOptions()
    own = {k: v for k, v in names.items() if k in _CONVERT}
    return (base.replace(**own) if own else base), {k: v for k, v in names.items() if k not in _CONVERT}
