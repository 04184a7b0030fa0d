"""Content fingerprints of tensors and state dicts (bitwise: equal iff the bytes are equal)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ctmri_monai.utils.distributed import unwrap

__all__ = ["file_sha256", "network_fingerprints", "state_dict_sha256", "update_digest"]


def update_digest(digest: Any, tensor: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes (a contiguous CPU copy, no further copy) into a hashlib digest."""
    t = tensor.detach().as_subclass(torch.Tensor).cpu().contiguous()
    digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        digest.update(t.reshape(-1).view(torch.uint8).numpy())


def state_dict_sha256(state: Mapping[str, Any]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and tensor bytes (CPU copy); equal iff bitwise equal."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            update_digest(digest, value)
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def network_fingerprints(networks: Mapping[str, nn.Module]) -> dict[str, str]:
    """{name: :func:`state_dict_sha256` of the unwrapped network's state dict} (checkpoint key names)."""
    return {name: state_dict_sha256(unwrap(net).state_dict()) for name, net in networks.items()}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
