"""Checkpoints: crash-safe saving, safe loading (``weights_only=True``), resume, and generator loading.

A checkpoint is a ``torch.save`` of a dict of state dicts and plain Python data, one entry per object of the
bundle's ``save_dict`` (``generator_ct2mri``, ``generator_mri2ct``, ``discriminator_ct``, ``discriminator_mri``,
optimisers, schedulers, pools, ``trainer`` and ``model_spec``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader
from monai.handlers import CheckpointSaver as MonaiCheckpointSaver
from torch import nn

from ctmri_monai import DIRECTIONS
from ctmri_monai.io.atomic import atomic_write, remove_stale_temporaries
from ctmri_monai.io.errors import CtmriError
from ctmri_monai.spec import ModelSpec

logger = logging.getLogger(__name__)

class CheckpointError(CtmriError):
    """A checkpoint file that cannot be used: missing, truncated, unsafe, or of another model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that holds pickled objects other than tensors and plain data (it could run code)."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through the one atomic writer, flushed to disk (file and folder) before the rename."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp), fsync=True)
    os.chmod(path, 0o644)


class AtomicDiskSaver(DiskSaver):
    """Ignite save handler that never leaves a truncated checkpoint behind (rank 0 only)."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=False, create_dir=True)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != 0:
            return
        atomic_torch_save(checkpoint, os.path.join(self.dirname, self.filename or filename))

    def remove(self, filename: str) -> None:
        if idist.get_rank() != 0:
            return
        path = Path(self.dirname) / (self.filename or filename)
        if path.exists():
            path.unlink()


class CheckpointSaver(MonaiCheckpointSaver):
    """MONAI's ``CheckpointSaver`` writing atomically (temporary file, fsync, rename).

    Same arguments as MONAI's; ``n_saved`` keeps the last K interval checkpoints, also across a resume (the
    interval checkpoints an earlier run left in ``save_dir`` count towards K). Temporary files of a run killed
    while saving are removed. A run that fails before its first iteration (e.g. a checkpoint that cannot be
    resumed) saves no "final" checkpoint: nothing that looks finished is left.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        os.makedirs(save_dir, exist_ok=True)
        if idist.get_rank() == 0:
            remove_stale_temporaries(save_dir)
        final_name = kwargs.get("final_filename")
        key_name = kwargs.get("key_metric_filename")
        for ckpt, fixed in ((self._final_checkpoint, final_name), (self._key_metric_checkpoint, key_name),
                            (self._interval_checkpoint, None)):
            if ckpt is not None:
                ckpt.save_handler = AtomicDiskSaver(save_dir, fixed)
        self._adopted = False
        self._iterations_run = 0

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count_iteration)

    def _count_iteration(self, engine: Engine) -> None:
        self._iterations_run += 1

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        if self._iterations_run == 0:
            raise e  # nothing trained in this run: keep whatever final checkpoint exists
        super().exception_raised(engine, e)

    def interval_completed(self, engine: Engine) -> None:
        if not self._adopted:
            self._adopted = True
            self._adopt_earlier_interval_checkpoints(engine)
        super().interval_completed(engine)

    def _adopt_earlier_interval_checkpoints(self, engine: Engine) -> None:
        """Count the interval checkpoints of an earlier run (before this save) towards ``n_saved``, deleting the
        oldest beyond it, so a resumed run keeps the last K in all."""
        ckpt = self._interval_checkpoint
        if ckpt is None or ckpt.n_saved is None or idist.get_rank() != 0:
            return
        current = engine.state.epoch if self.epoch_level else engine.state.iteration
        name = next(iter(self.save_dict)) if len(self.save_dict) == 1 else "checkpoint"
        prefix = f"{ckpt.filename_prefix}_" if ckpt.filename_prefix else ""
        pattern = re.compile(rf"^{re.escape(prefix + name)}_{re.escape(str(ckpt.score_name))}=(\d+)\.{ckpt.ext}$")
        earlier = sorted((int(m.group(1)), p.name) for p in Path(self.save_dir).iterdir()
                         if (m := pattern.match(p.name)) and int(m.group(1)) < current)
        known = {item.filename for item in ckpt._saved}
        items = sorted([*ckpt._saved, *(Checkpoint.Item(k, f) for k, f in earlier if f not in known)],
                       key=lambda it: it.priority)
        while len(items) > max(ckpt.n_saved - 1, 0):
            old = items.pop(0)
            ckpt.save_handler.remove(old.filename)
            logger.info("removed %s (keeping the last %d interval checkpoints)", old.filename, ckpt.n_saved)
        ckpt._saved = items


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {tuple(DIRECTIONS)}")


def _trained_as(spec: ModelSpec) -> str:
    n = spec.network
    return (f"backbone={n.backbone}, ngf={n.ngf}, in/out channels {n.in_channels}/{n.out_channels}, "
            f"image_size={spec.geometry.image_size}")


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
                              f"trained as {_trained_as(spec)} ({str(err).splitlines()[0]})") from err
    return net.eval()


def generator_from(data: Mapping[str, Any], direction: str, path: str | os.PathLike = "checkpoint",
                   device: str | torch.device = "cpu") -> nn.Module:
    """The generator of ``direction`` built and loaded from already loaded checkpoint ``data`` (from ``path``)."""
    from ctmri_monai.networks import define_generator

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


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest loadable checkpoint in ``folder`` (by the trainer iteration recorded inside), or None.

    Truncated or corrupt files (a crash while writing by other means than ``atomic_torch_save``) are skipped
    with a warning; a file that fails the safety check raises `UnsafeCheckpointError`: someone put a pickle
    with code in the run's folder, and training must stop rather than silently start from scratch.
    At equal iterations an interval checkpoint (``checkpoint_*``) wins over ``final.pt``, then over the rest
    (e.g. ``best.pt``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    best: tuple[int, int, Path] | None = None
    for path in sorted(folder.glob("*.pt")):
        try:
            state = load_checkpoint(path).get("trainer", {})
        except UnsafeCheckpointError:
            raise
        except CheckpointError as err:
            logger.warning("skipping unusable checkpoint: %s", err)
            continue
        rank = 2 if path.name.startswith("checkpoint_") else 1 if path.name == "final.pt" else 0
        key = (int(state.get("iteration", 0)), rank, path)
        if best is None or key[:2] > best[:2]:
            best = key
    return None if best is None else best[2]


class ResumeHandler:
    """Resume from the newest complete checkpoint in ``checkpoint_dir`` when ``enabled`` (MONAI CheckpointLoader).

    A run killed at any moment is resumed by running the same command again; with no checkpoint it starts fresh.
    """

    def __init__(self, checkpoint_dir: str, load_dict: dict, enabled: bool = True,
                 map_location: str | torch.device | None = None) -> None:
        self.checkpoint_dir, self.load_dict, self.enabled = checkpoint_dir, load_dict, enabled
        self.map_location = map_location
        self.loaded_from: Path | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return
        try:
            CheckpointLoader(str(path), self.load_dict, map_location=self.map_location)(engine)
        except (RuntimeError, KeyError, ValueError) as err:
            trained = _trained_as(ModelSpec.from_state(load_checkpoint(path).get("model_spec")))
            raise CheckpointError(
                f"{path}: cannot resume from it ({type(err).__name__}: {str(err).strip().splitlines()[0][:200]}); "
                f"it was trained with {trained}. Train with the same settings, into a new output_dir, or with "
                "resume false") from err
        self.loaded_from = path
        logger.info("resumed from %s at epoch %d", path, engine.state.epoch)


__all__ = ["AtomicDiskSaver", "Checkpoint", "CheckpointError", "CheckpointSaver", "ResumeHandler",
           "UnsafeCheckpointError", "atomic_torch_save", "file_sha256", "latest_checkpoint", "load_checkpoint",
           "generator_from", "load_generator", "load_generator_weights", "model_info", "read_model_spec",
           "remove_stale_temporaries"]


def read_model_spec(path: str | os.PathLike, missing_ok: bool = False) -> ModelSpec:
    """The `ModelSpec` a checkpoint was trained with (a version-1 spec converted, see `ModelSpec.from_state`).

    ``missing_ok``: a checkpoint file that does not exist yet gives the defaults (for building a network
    definition before any training, e.g. ``verify_net_in_out``); a corrupt one still raises.
    """
    if missing_ok and not Path(path).exists():
        return ModelSpec()
    return ModelSpec.from_state(load_checkpoint(path).get("model_spec"))
