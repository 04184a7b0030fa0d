"""Checkpoint handlers: atomic interval / final / best checkpoints that keep the last K across resumes, and
resuming from the newest complete checkpoint."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader
from monai.handlers import CheckpointSaver as MonaiCheckpointSaver

from ctmri_monai.io.atomic import remove_stale_temporaries
from ctmri_monai.io.checkpoint_file import CheckpointError, UnsafeCheckpointError, atomic_torch_save, load_checkpoint
from ctmri_monai.io.errors import ContractError
from ctmri_monai.spec import ModelSpec

__all__ = ["AtomicDiskSaver", "CheckpointSaver", "ResumeHandler", "contract_differences", "latest_checkpoint"]

#: Contract fields that do not change what the generator sees: bookkeeping only.
_NOT_SEEN = {"notes", "version", "mri.declared"}

logger = logging.getLogger(__name__)


class AtomicDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` (rank 0 writes) saving with `atomic_torch_save`: unlike Ignite's own atomic mode it
    flushes to disk before the rename and uses pid-marked temporary names that a resumed run can clean up.
    ``filename`` replaces the name Ignite chooses (``final.pt``, ``best.pt``)."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True, create_dir=True)
        self.filename = filename

    def __call__(self, checkpoint: Any, filename: str, metadata: Any = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def _save_func(self, checkpoint: Any, path: Path, func: Any) -> None:
        atomic_torch_save(checkpoint, path)

    def remove(self, filename: str) -> None:
        if idist.get_rank() == self.save_on_rank:
            (self.dirname / (self.filename or filename)).unlink(missing_ok=True)


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


def _flat(state: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: list(state) if isinstance(state, tuple) else state}


def contract_differences(recorded: Any, current: ModelSpec) -> dict[str, tuple[Any, Any]]:
    """{field: (checkpoint's value, configuration's value)} for every contract field that changes what the
    generator sees (intensity, geometry, layout, network); ``recorded``: a checkpoint's ``model_spec`` state."""
    old, new = _flat(ModelSpec.from_state(recorded).state_dict()), _flat(current.state_dict())
    # A volumes model's training references only measure its gap (no head framing, no standardisation).
    unseen = ("training.",) if current.layout == "volumes" else ()
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if k not in _NOT_SEEN and not k.startswith(unseen) and old.get(k) != new.get(k)}


class ResumeHandler:
    """Resume from the newest complete checkpoint in ``checkpoint_dir`` when ``enabled`` (MONAI CheckpointLoader).

    A run killed at any moment is resumed by running the same command again; with no checkpoint it starts fresh.
    The transforms were built from the configuration's contract (``load_dict["model_spec"]``), so a checkpoint
    whose contract differs in anything the generator sees is refused (`ContractError` naming each field and both
    values), unless ``contract_override``: then the weights are resumed, the configuration's contract is kept (and
    recorded by the following checkpoints), and the change is logged as a warning.
    """

    def __init__(self, checkpoint_dir: str, load_dict: dict, enabled: bool = True,
                 map_location: str | torch.device | None = None, contract_override: bool = False) -> None:
        self.checkpoint_dir, self.load_dict, self.enabled = checkpoint_dir, load_dict, enabled
        self.map_location, self.contract_override = map_location, bool(contract_override)
        self.loaded_from: Path | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def _objects_to_load(self, path: Path) -> dict:
        """``load_dict``, without the contract when the checkpoint's differs and the override says so."""
        current = self.load_dict.get("model_spec")
        if not isinstance(current, ModelSpec):
            return self.load_dict
        changed = contract_differences(load_checkpoint(path).get("model_spec"), current)
        if not changed:
            return self.load_dict
        listing = "; ".join(f"{k}: {old!r} in the checkpoint, {new!r} in the configuration"
                            for k, (old, new) in changed.items())
        if not self.contract_override:
            raise ContractError(path, f"cannot resume: the configuration's data contract differs from the one this "
                                      f"checkpoint was trained on ({listing}). Resume with the checkpoint's settings, "
                                      "start over in a new output_dir, or pass --resume_contract_override true to "
                                      "go on from these weights with the configuration's contract (logged)")
        logger.warning("resume_contract_override: resuming %s with the configuration's contract, which differs (%s); "
                       "the following checkpoints record the configuration's", path, listing)
        current.notes.append(f"resumed from {path.name} with a changed contract ({listing})")
        return {k: v for k, v in self.load_dict.items() if k != "model_spec"}

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return
        objects = self._objects_to_load(path)
        try:
            CheckpointLoader(str(path), objects, map_location=self.map_location)(engine)
        except (RuntimeError, KeyError, ValueError) as err:
            trained = ModelSpec.from_state(load_checkpoint(path).get("model_spec")).describe_network()
            raise CheckpointError(
                f"{path}: cannot resume from it ({type(err).__name__}: {str(err).strip().splitlines()[0][:200]}); "
                f"it was trained with {trained}. Train with the same settings, into a new output_dir, or with "
                "resume false") from err
        self.loaded_from = path
        logger.info("resumed from %s at epoch %d", path, engine.state.epoch)
