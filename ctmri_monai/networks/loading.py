"""Generators from checkpoints: built from the checkpoint's contract (`ModelSpec`) and loaded with its weights."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctmri_monai import DIRECTIONS
from ctmri_monai.io.checkpoint_file import CheckpointError, load_checkpoint
from ctmri_monai.networks.factory import define_generator
from ctmri_monai.spec import ModelSpec
from ctmri_monai.utils.hashing import file_sha256

__all__ = ["generator_from", "load_generator", "load_generator_weights", "model_info", "read_model_spec"]


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {tuple(DIRECTIONS)}")


def load_generator_weights(net: nn.Module, path: str | os.PathLike, direction: str,
                           data: Mapping[str, Any] | None = None) -> nn.Module:
    """Load the ``generator_<direction>`` weights of a checkpoint into ``net``; returns ``net`` in eval mode."""
    _check_direction(direction)
    data = load_checkpoint(path) if data is None else data
    key = f"generator_{direction}"
    if key not in data:
        raise CheckpointError(f"{path}: has no '{key}' entry (found: {', '.join(sorted(data)) or 'nothing'})")
    try:
        net.load_state_dict(data[key])
    except RuntimeError as err:
        spec = ModelSpec.from_state(data.get("model_spec"))
        raise CheckpointError(f"{path}: '{key}' does not fit the requested {type(net).__name__}; the checkpoint was "
                              f"trained as {spec.describe_network()} ({str(err).splitlines()[0]})") from err
    return net.eval()


def generator_from(data: Mapping[str, Any], direction: str, path: str | os.PathLike = "checkpoint",
                   device: str | torch.device = "cpu") -> nn.Module:
    """The generator of ``direction`` built and loaded from already loaded checkpoint ``data`` (from ``path``)."""
    _check_direction(direction)
    net = define_generator(**ModelSpec.from_state(data.get("model_spec")).generator_kwargs())
    return load_generator_weights(net, path, direction, data).to(device)


def load_generator(path: str | os.PathLike, direction: str,
                   device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the generator of ``direction`` ("ct2mri" or "mri2ct") from a checkpoint, in eval mode.

    Returns the module and its `model_info` (file, SHA-256, direction, and the `ModelSpec` under "spec").
    """
    data = load_checkpoint(path, map_location="cpu")
    net = generator_from(data, direction, path, device)
    return net, model_info(path, direction, ModelSpec.from_state(data.get("model_spec")))


def model_info(path: str | os.PathLike, direction: str, spec: ModelSpec | None = None) -> dict[str, Any]:
    """What outputs record about the model: checkpoint file, its SHA-256, direction, and its contract ("spec": the
    `ModelSpec`; "model_spec": the same as plain data)."""
    spec = read_model_spec(path) if spec is None else spec
    return {"spec": spec, "model_spec": spec.state_dict(), "sha256": file_sha256(path), "file": str(path),
            "direction": direction}


def read_model_spec(path: str | os.PathLike, missing_ok: bool = False) -> ModelSpec:
    """The `ModelSpec` a checkpoint was trained with (a version-1 spec converted, see `ModelSpec.from_state`).

    ``missing_ok``: a checkpoint file that does not exist yet gives the defaults (for building a network
    definition before any training, e.g. ``verify_net_in_out``); a corrupt one still raises.
    """
    if missing_ok and not Path(path).exists():
        return ModelSpec()
    return ModelSpec.from_state(load_checkpoint(path).get("model_spec"))
