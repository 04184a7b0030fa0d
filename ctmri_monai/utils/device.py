"""The one device resolver every config and command uses."""

from __future__ import annotations

import os

import torch

__all__ = ["local_device", "resolve_device"]


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (one GPU per process, as torchrun starts them), else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None) -> this process's GPU when CUDA is available, else the CPU; a bare "cuda" -> this
    process's GPU (``cuda:LOCAL_RANK`` under torchrun, else GPU 0); anything else as given."""
    if device in (None, "", "auto", "cuda") and torch.cuda.is_available():
        return local_device()
    if device in (None, "", "auto"):
        return torch.device("cpu")
    return torch.device(device)
