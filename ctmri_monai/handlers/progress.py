"""A calm terminal for long runs: an Ignite progress bar on rank 0, and a filter that logs every N iterations."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine
from ignite.handlers import ProgressBar

__all__ = ["TrainingProgress", "every"]


def every(n: int) -> Callable[[Engine, int], bool]:
    """An Ignite event filter that passes every ``n``-th iteration (for ``StatsHandler(iteration_log=...)``)."""
    n = max(1, int(n))
    return lambda engine, iteration: iteration % n == 0


class TrainingProgress:
    """Ignite's ``ProgressBar`` per epoch, showing the generator and discriminator losses, on rank 0 and only when
    stderr is a terminal (in a log file every refresh would be a line)."""

    def __init__(self, enabled: bool = True, keys: tuple[str, ...] = ("loss_G", "loss_D_ct", "loss_D_mri")) -> None:
        self.enabled, self.keys = bool(enabled), keys

    def _losses(self, output: Any) -> dict[str, float]:
        return {k: output[k] for k in self.keys if isinstance(output, dict) and k in output}

    def attach(self, engine: Engine) -> None:
        if self.enabled and idist.get_rank() == 0 and sys.stderr.isatty():
            ProgressBar(persist=False, desc="train").attach(engine, output_transform=self._losses)
