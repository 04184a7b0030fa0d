"""Exported generators that carry their contract: ONNX (metadata properties) and TorchScript (extra files).

`export_generator` writes one direction's generator of a checkpoint with its contract: the `ModelSpec` state, the
direction, the source checkpoint's SHA-256 and the software version, as one JSON document under ``CONTRACT_KEY``
(ONNX ``metadata_props``; TorchScript ``_extra_files``). The input is (batch, 2k + 1, S, S) float32 with a dynamic
batch and the contract's fixed S; the output (batch, 1, S, S) in [-1, 1]. `read_contract` gives that document back
from the file alone; a file without one is refused with `ContractError`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctmri_monai import DIRECTIONS, __version__
from ctmri_monai.io.atomic import atomic_write
from ctmri_monai.io.errors import ContractError
from ctmri_monai.spec import ModelSpec

__all__ = ["CONTRACT_KEY", "FORMATS", "export_generator", "export_module", "exported_format", "read_contract"]

#: The metadata key (ONNX) / extra file name (TorchScript) that holds the contract as JSON.
CONTRACT_KEY = "ctmri_contract"
#: Export formats and their file suffixes.
FORMATS = {"onnx": ".onnx", "torchscript": ".ts"}
INPUT_NAME, OUTPUT_NAME = "slices", "synthetic"


def exported_format(path: str | os.PathLike) -> str | None:
    """"onnx" / "torchscript" for an exported file (by suffix: ``.onnx``; ``.ts`` or ``.jit``), else None."""
    suffix = Path(path).suffix.lower()
    return {".onnx": "onnx", ".ts": "torchscript", ".jit": "torchscript"}.get(suffix)


def _example(spec: ModelSpec, batch: int = 2) -> torch.Tensor:
    size = spec.geometry.image_size
    return torch.zeros(batch, spec.geometry.channels, size, size)


def export_module(net: nn.Module, spec: ModelSpec, fmt: str, output: str | os.PathLike,
                  contract: dict[str, Any] | None = None) -> Path:
    """Write ``net`` (eval, CPU, float32) as ``fmt`` to ``output`` atomically, with ``contract`` (JSON) inside."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {tuple(FORMATS)}")
    net = net.to("cpu", torch.float32).eval()
    text = json.dumps(contract, sort_keys=True) if contract is not None else None
    example = _example(spec)
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(net, example)
        extra = {f"{CONTRACT_KEY}.json": text} if text is not None else {}
        return atomic_write(output, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=extra))
    import onnx

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # the exporter's notes on instance norm in eval mode and shape inference
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (example,), str(tmp), dynamo=False, opset_version=17, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        if text is not None:
            model = onnx.load(str(tmp))
            entry = model.metadata_props.add()
            entry.key, entry.value = CONTRACT_KEY, text
            onnx.save(model, str(tmp))

    return atomic_write(output, write)


def export_generator(checkpoint: str | os.PathLike, direction: str, fmt: str,
                     output: str | os.PathLike) -> dict[str, Any]:
    """Export the ``direction`` generator of ``checkpoint`` as ``fmt`` to ``output``; returns the contract written."""
    from ctmri_monai.io.checkpoint_file import load_checkpoint
    from ctmri_monai.networks.loading import generator_from
    from ctmri_monai.utils.hashing import file_sha256

    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {tuple(DIRECTIONS)}")
    if exported_format(output) != fmt:
        raise ValueError(f"{output}: a {fmt} export is named *{FORMATS[fmt]}")
    data = load_checkpoint(checkpoint, map_location="cpu")
    spec = ModelSpec.from_state(data.get("model_spec"))
    net = generator_from(data, direction, checkpoint, "cpu")
    contract = {"model_spec": spec.state_dict(), "direction": direction, "format": fmt,
                "source_checkpoint": Path(checkpoint).name, "source_sha256": file_sha256(checkpoint),
                "software": f"ctmri-monai {__version__}", "torch": torch.__version__}
    export_module(net, spec, fmt, output, contract)
    return contract


def read_contract(path: str | os.PathLike) -> dict[str, Any]:
    """The contract document inside an exported file (``model_spec`` state, ``direction``, ``source_sha256``, ...).

    `ContractError` naming the file: not an exported format, unreadable, or without a (valid) contract."""
    fmt = exported_format(path)
    if fmt is None:
        raise ContractError(path, f"not an exported model (expected a suffix of {sorted(FORMATS.values())})")
    try:
        if fmt == "onnx":
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            text = props.get(CONTRACT_KEY)
        else:
            extra = {f"{CONTRACT_KEY}.json": ""}
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            text = extra[f"{CONTRACT_KEY}.json"] or None
    except (OSError, RuntimeError, ValueError) as exc:
        raise ContractError(path, f"cannot read the exported model ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # onnx raises its own DecodeError for a file that is not a model
        raise ContractError(path, f"cannot read the exported model ({type(exc).__name__})") from exc
    if not text:
        raise ContractError(path, f"an exported model without a ctmri contract ('{CONTRACT_KEY}'): export it "
                                  "with `ctmri export` so the file says how volumes must be prepared for it")
    try:
        contract = json.loads(text)
        ModelSpec.from_state(contract["model_spec"])
        if contract.get("direction") not in DIRECTIONS:
            raise ValueError(f"direction {contract.get('direction')!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise ContractError(path, f"its ctmri contract is not valid ({exc})") from exc
    return contract
