"""Inference engines behind one interface: a float32 batch of slice stacks (B, 2k + 1, S, S) in, (B, 1, S, S) out.

``torch`` runs the PyTorch module (or an exported TorchScript file); ``onnxruntime`` and ``openvino`` run an
exported ONNX file on the CPU. Every engine is a callable on a torch tensor or a numpy array that returns a
torch float32 tensor on the CPU, so `ctmri_monai.engines.slices.infer_slices` (and every road above it) takes
any of them as "the generator". ``threads``: intra-op threads of the engine (default `available_cores`).
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_numpy
from torch import nn

from ctmri_monai.networks.export import export_module, exported_format, read_contract
from ctmri_monai.spec import ModelSpec

__all__ = ["ENGINES", "EngineUnavailable", "OnnxRuntimeEngine", "OpenVinoEngine", "TorchEngine", "available_cores",
           "engine_for_module", "open_exported"]

ENGINES = ("torch", "onnxruntime", "openvino")
INSTALL = {"onnxruntime": "pip install 'ctmri-monai[onnx]'", "openvino": "pip install 'ctmri-monai[openvino]'"}


class EngineUnavailable(ImportError):
    """An engine whose package is not installed (the message says which extra installs it)."""


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), the default number of engine threads."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _package(engine: str) -> Any:
    """The engine's package (same name as the engine), or `EngineUnavailable` with the extra that installs it."""
    try:
        return importlib.import_module(engine)
    except ImportError as exc:
        raise EngineUnavailable(f"the {engine} engine is not installed: {INSTALL[engine]}") from exc


def _numpy(x: Any) -> np.ndarray:
    return np.ascontiguousarray(convert_to_numpy(x, dtype=np.float32))


class TorchEngine:
    """A PyTorch module (eager or TorchScript) as an engine; sets torch's intra-op threads to ``threads``."""

    name = "torch"

    def __init__(self, module: nn.Module, threads: int | None = None) -> None:
        self.module = module.eval()
        self.threads = threads or available_cores()
        torch.set_num_threads(self.threads)

    def __call__(self, x: Any) -> torch.Tensor:
        x = torch.as_tensor(x) if isinstance(x, np.ndarray) else x
        with torch.no_grad():
            return self.module(x).float()


class OnnxRuntimeEngine:
    """An ONNX file run by ONNX Runtime's CPU provider with ``threads`` intra-op threads (one inter-op)."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        ort = _package("onnxruntime")
        self.threads = threads or available_cores()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = self.threads, 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: Any) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: _numpy(x)})[0])


class OpenVinoEngine:
    """An ONNX file compiled by OpenVINO for the CPU with ``threads`` threads, at fp32 precision (OpenVINO would
    otherwise pick bf16 on CPUs that have it)."""

    name = "openvino"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        ov = _package("openvino")
        self.threads = threads or available_cores()
        self.compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                   "INFERENCE_NUM_THREADS": self.threads})
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: Any) -> torch.Tensor:
        out = self.request.infer({0: _numpy(x)})
        return torch.from_numpy(np.array(out[self.compiled.output(0)], dtype=np.float32, copy=True))


def _runtime(engine: str, onnx_path: Path, threads: int | None) -> Any:
    if engine == "onnxruntime":
        return OnnxRuntimeEngine(onnx_path, threads)
    if engine == "openvino":
        return OpenVinoEngine(onnx_path, threads)
    raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")


def engine_for_module(module: nn.Module, spec: ModelSpec, engine: str = "torch", threads: int | None = None) -> Any:
    """``module`` as ``engine``: itself under torch, else exported to ONNX (a temporary file) and compiled."""
    if engine == "torch":
        return TorchEngine(module, threads)
    with tempfile.TemporaryDirectory(prefix="ctmri-engine-") as tmp:
        path = export_module(module, spec, "onnx", Path(tmp) / "generator.onnx")
        return _runtime(engine, path, threads)


def open_exported(path: str | os.PathLike, engine: str | None = None,
                  threads: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(engine, contract) of an exported file: the contract from the file alone (`read_contract`: refused
    without one); ``engine`` default: torch for TorchScript, onnxruntime for ONNX. TorchScript runs only under
    torch, ONNX only under onnxruntime / openvino."""
    contract = read_contract(path)
    fmt = exported_format(path)
    engine = engine or ("torch" if fmt == "torchscript" else "onnxruntime")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    if fmt == "torchscript":
        if engine != "torch":
            raise ValueError(f"{path}: a TorchScript file runs with --engine torch; export ONNX for {engine}")
        return TorchEngine(torch.jit.load(str(path), map_location="cpu"), threads), contract
    if engine == "torch":
        raise ValueError(f"{path}: an ONNX file runs with --engine onnxruntime or openvino")
    return _runtime(engine, Path(path), threads), contract
