"""Time-budgeted training: fit the whole constant + decay schedule into a wall-clock budget.

The handler measures iterations per second over the first ``measure_seconds`` (one minute by default, less for
short budgets), then sets the epoch count so the run ends inside the budget (corrected at every epoch end with
the speed measured so far), and re-spreads the learning-rate
schedule over the new length with the paper's 1:1 ratio of constant and decaying epochs, so the learning rate
reaches zero at the last iteration. A hard stop ends the run (saving the final checkpoint on ``COMPLETED``) if
the estimate was too optimistic; ``ValidateOnCompleted`` makes sure a best checkpoint exists by then.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)


class TimeBudgetHandler:
    """Set ``max_epochs`` and the LR schedules of a trainer from a wall-clock budget.

    Args:
        budget_minutes: the whole run's wall-clock budget; None or <= 0 disables the handler.
        schedulers: ``LambdaLR`` schedulers whose rule is a ``LinearDecayRule`` (re-spread after measuring).
        measure_seconds: how long to measure speed (capped at 10% of the budget).
        safety: fraction of the remaining time planned for training iterations (the rest covers validation,
            sample grids and checkpoints).
        reserve_seconds: the hard stop comes this long before the budget ends.
        constant_fraction: share of epochs at constant learning rate (0.5 = the paper's 100 + 100).
    """

    def __init__(self, budget_minutes: float | None, schedulers: Sequence[Any] = (), measure_seconds: float = 60.0,
                 safety: float = 0.85, reserve_seconds: float = 5.0, constant_fraction: float = 0.5) -> None:
        self.budget = None if not budget_minutes or budget_minutes <= 0 else float(budget_minutes) * 60.0
        self.schedulers = list(schedulers)
        self.measure_seconds = measure_seconds
        self.safety, self.reserve_seconds, self.constant_fraction = safety, reserve_seconds, constant_fraction
        self.start: float | None = None
        self.first_iteration: int | None = None
        self.measure_start: float | None = None
        self.planned_epochs: int | None = None
        self.iterations_per_second: float | None = None

    def attach(self, engine: Engine) -> None:
        if self.budget is None:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._replan)

    def elapsed(self) -> float:
        return 0.0 if self.start is None else time.perf_counter() - self.start

    def _started(self, engine: Engine) -> None:
        self.start = time.perf_counter()

    def _iteration_completed(self, engine: Engine) -> None:
        assert self.budget is not None
        now = time.perf_counter()
        if self.first_iteration is None:  # the first iteration (warm-up, lazy inits) is not measured
            self.first_iteration, self.measure_start = engine.state.iteration, now
            return
        if self.planned_epochs is None and now - self.measure_start >= min(self.measure_seconds, 0.1 * self.budget):
            self._plan(engine, (engine.state.iteration - self.first_iteration) / (now - self.measure_start))
        if self.elapsed() >= self.budget - self.reserve_seconds:
            logger.warning("time budget reached at epoch %d, iteration %d: stopping", engine.state.epoch,
                           engine.state.iteration)
            engine.terminate()

    def _replan(self, engine: Engine) -> None:
        """Correct the plan at each epoch end with the speed measured so far (other load on the machine varies)."""
        if self.planned_epochs is None or self.measure_start is None:
            return
        seconds = time.perf_counter() - self.measure_start
        if seconds > 0 and engine.state.epoch < engine.state.max_epochs:
            self._plan(engine, (engine.state.iteration - self.first_iteration) / seconds)

    def _plan(self, engine: Engine, iterations_per_second: float) -> None:
        epoch_length = engine.state.epoch_length
        remaining = max(0.0, self.budget - self.elapsed() - self.reserve_seconds)
        affordable = engine.state.iteration + iterations_per_second * remaining * self.safety
        epochs = max(engine.state.epoch, 1, math.floor(affordable / epoch_length))  # always finish this epoch
        self.iterations_per_second, self.planned_epochs = iterations_per_second, epochs
        engine.state.max_epochs = epochs
        constant = round(epochs * self.constant_fraction) * epoch_length
        for scheduler in self.schedulers:
            scheduler.lr_lambdas[0].set_total(constant, epochs * epoch_length - constant)
        logger.info("time budget %.1f min: %.2f it/s measured, planning %d epochs (%d constant LR)",
                    self.budget / 60, iterations_per_second, epochs, constant // epoch_length)


class ValidateOnCompleted:
    """Run the validator once more when training completes, unless the last epoch was just validated."""

    def __init__(self, validator: Any, interval: int = 1) -> None:
        self.validator, self.interval = validator, max(1, int(interval))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval != 0 or getattr(engine, "should_terminate", False):
            self.validator.run(engine.state.epoch)
