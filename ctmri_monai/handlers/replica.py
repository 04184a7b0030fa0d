"""Multi-GPU handlers: which handlers a rank attaches, and a check that every rank holds the same weights."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events
from torch import nn

from ctmri_monai.handlers.samples import SampleGridHandler
from ctmri_monai.utils.hashing import network_fingerprints

__all__ = ["ReplicaSyncCheck", "rank_handlers"]


def _main_only_types() -> tuple[type, ...]:
    from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardImageHandler, TensorBoardStatsHandler

    return StatsHandler, TensorBoardStatsHandler, TensorBoardImageHandler, SampleGridHandler, CheckpointSaver


def rank_handlers(handlers: Sequence[Any], rank: int | None = None,
                  main_only: Sequence[type] | None = None) -> list[Any]:
    """The handlers this rank should attach: all on rank 0; elsewhere without the writers of logs and files.

    ``main_only`` defaults to MONAI's ``StatsHandler``, ``TensorBoardStatsHandler``, ``TensorBoardImageHandler``,
    ``CheckpointSaver`` (whose saver writes on rank 0 only anyway; dropping it on the others also drops their
    "saved checkpoint" messages) and the sample grid handler. Validation, schedules and resume stay on every rank.
    """
    rank = idist.get_rank() if rank is None else rank
    if rank == 0:
        return list(handlers)
    skip = tuple(main_only) if main_only is not None else _main_only_types()
    return [h for h in handlers if not isinstance(h, skip)]


class ReplicaSyncCheck:
    """Check at the end of every ``interval`` epochs and of training that all ranks hold bitwise equal weights.

    Every rank fingerprints ``networks`` (:func:`network_fingerprints`) and gathers the others'; a mismatch
    raises ``RuntimeError`` (DDP keeps replicas equal, so a mismatch means a bug or a broken node).
    With ``output_dir``, each rank writes ``replica_fingerprints_rank<r>.json`` there (used by the tests).
    Costs one CPU copy and hash of the weights per check.
    """

    def __init__(self, networks: Mapping[str, nn.Module], interval: int = 1, output_dir: str | None = None) -> None:
        self.networks = dict(networks)
        self.interval = max(1, int(interval))
        self.output_dir = Path(output_dir) if output_dir else None
        self.last: dict[str, str] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        mine = network_fingerprints(self.networks)
        everyone = idist.all_gather(mine)
        rank = idist.get_rank()
        self.last = mine
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            record = {"rank": rank, "epoch": engine.state.epoch, "iteration": engine.state.iteration, **mine}
            (self.output_dir / f"replica_fingerprints_rank{rank}.json").write_text(json.dumps(record, indent=1))
        differing = sorted({name for other in everyone for name in mine if other.get(name) != mine[name]})
        if differing:
            raise RuntimeError(f"ranks hold different weights for {differing} at epoch {engine.state.epoch}")
