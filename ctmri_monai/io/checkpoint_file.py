"""Checkpoint files: saved atomically (fsync, then rename) and loaded safely (``weights_only=True``).

A checkpoint is a ``torch.save`` of a dict of state dicts and plain data: the bundle's ``checkpoint_objects``
(generators, discriminators, optimisers, schedulers, pools, trainer state and the model's contract ``model_spec``).
Anything else pickled in it is refused, because unpickling it could run code.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ctmri_monai.io.atomic import atomic_write
from ctmri_monai.io.errors import CtmriError

__all__ = ["CheckpointError", "UnsafeCheckpointError", "atomic_torch_save", "load_checkpoint"]


class CheckpointError(CtmriError):
    """A checkpoint file that cannot be used: missing, truncated, unsafe, or of another model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that holds pickled objects other than tensors and plain data (it could run code)."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through the one atomic writer, flushed to disk (file and folder) before the rename."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp), fsync=True)
    os.chmod(path, 0o644)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    missing_ok: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; one clear ``CheckpointError`` naming the file otherwise.
    ``missing_ok``: a file that does not exist yet gives ``{}`` (configs built before any training)."""
    path = Path(path)
    if missing_ok and not path.exists():
        return {}
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err.__context__ or "") or str(err)
        if "global" not in detail.lower():  # not a pickle of forbidden objects: not a torch checkpoint at all
            raise CheckpointError(f"{path}: corrupt or not a checkpoint ({detail.splitlines()[0][:200]})") from err
        raise UnsafeCheckpointError(f"{path}: refused to load: the checkpoint holds objects other than tensors and "
                                    f"plain data, which could run code ({detail.splitlines()[0][:200]}); only load "
                                    "checkpoints from trusted sources") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({str(err).splitlines()[0]})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a ctmri-monai checkpoint (top level is {type(data).__name__})")
    return data
