"""Time-budgeted training: fit the whole constant + decay schedule into a wall-clock budget.

The handler measures iterations per second over a window (the first ``measure_seconds``, at most 10% of the
budget), then plans the total number of iterations so the run ends inside the budget, and spreads the
learning-rate schedule over them with the paper's 1:1 ratio of constant and decaying learning rate, so the
learning rate reaches zero at the last iteration. It re-plans every window with the speed of the most recent
window (other load on the machine varies), and at every iteration in the last three windows, so the planned end
comes before the hard stop even when the machine slows down; a re-plan during the decay continues the decay from
the current learning rate (no jump back up), so the 1:1 split becomes approximate. Plans are in iterations, not epochs,
so a budget shorter than one epoch still ends with the learning rate at zero. The validator runs once after the
first window, and the time of the latest validation is reserved for the final one (``ValidateOnCompleted``),
so the run, final validation and best checkpoint included, ends inside the budget.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)


class TimeBudgetHandler:
    """Plan the iterations of a trainer, and its LR schedules, from a wall-clock budget.

    Args:
        budget_minutes: the whole run's wall-clock budget; None or <= 0 disables the handler.
        schedulers: ``LambdaLR`` schedulers whose rule is a ``LinearDecayRule``, stepped once per iteration.
        validator: the validation engine, whose run time is measured and reserved for the final validation.
        validate_first: with a validator, validate once after the first speed window to measure that time
            (otherwise nothing is reserved until the first scheduled validation, and the final one may overrun).
        measure_seconds: speed-measurement window (capped at 10% of the budget).
        safety: fraction of the remaining time planned for training iterations.
        reserve_seconds: the hard stop comes at least this long before the budget ends.
        constant_fraction: share of iterations at constant learning rate (0.5 = the paper's 100 + 100 epochs).
    """

    def __init__(self, budget_minutes: float | None, schedulers: Sequence[Any] = (), validator: Engine | None = None,
                 measure_seconds: float = 60.0, safety: float = 0.9, reserve_seconds: float = 5.0,
                 constant_fraction: float = 0.5, validate_first: bool = True) -> None:
        self.budget = None if not budget_minutes or budget_minutes <= 0 else float(budget_minutes) * 60.0
        self.schedulers = list(schedulers)
        self.validator, self.validate_first = validator, bool(validate_first)
        self.window = 0.0 if self.budget is None else min(measure_seconds, 0.1 * self.budget)
        self.safety, self.reserve_seconds, self.constant_fraction = safety, reserve_seconds, constant_fraction
        self.start: float | None = None
        self.samples: deque[tuple[float, int]] = deque()
        self.last_plan: float | None = None
        self.planned_iterations: int | None = None
        self.iterations_per_second: float | None = None
        self.validation_seconds = 0.0
        self._validation_started: float | None = None

    def attach(self, engine: Engine) -> None:
        if self.budget is None:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        if self.validator is not None:
            self.validator.add_event_handler(Events.STARTED, self._validation_start)
            self.validator.add_event_handler(Events.COMPLETED, self._validation_end)

    def elapsed(self) -> float:
        return 0.0 if self.start is None else time.perf_counter() - self.start

    def _started(self, engine: Engine) -> None:
        self.start = time.perf_counter()

    def _validation_start(self, _: Engine) -> None:
        self._validation_started = time.perf_counter()

    def _validation_end(self, _: Engine) -> None:
        if self._validation_started is not None:
            self.validation_seconds = time.perf_counter() - self._validation_started
            # the pause is not training speed: shift the speed samples past it
            self.samples = deque((t + self.validation_seconds, it) for t, it in self.samples)
            self._validation_started = None

    def _iteration_completed(self, engine: Engine) -> None:
        assert self.budget is not None
        if self.planned_iterations is not None and engine.state.iteration >= self.planned_iterations:
            logger.info("time budget: planned %d iterations done", self.planned_iterations)
            engine.terminate()  # before any re-plan: the schedule has ended, a later plan must not extend it
            return
        now = time.perf_counter()
        self.samples.append((now, engine.state.iteration))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        span = now - self.samples[0][0]
        # near the end (the last three windows) re-plan at every iteration, so a slow-down after the last plan
        # shortens the schedule instead of reaching the hard stop with the learning rate above zero
        closing = self.budget - self.elapsed() - self.validation_seconds < 3 * self.window
        due = self.last_plan is None or now - self.last_plan >= self.window or closing
        if due and span >= self.window and span > 0:  # the first sample (warm-up) starts the window
            rate = (engine.state.iteration - self.samples[0][1]) / span
            if self.last_plan is None and self.validate_first and self.validator is not None:
                self._validate_now(engine)  # measures what the final validation will cost
            self._plan(engine, rate, log=not closing)
            self.last_plan = now = time.perf_counter()
        reserve = self.reserve_seconds + self.validation_seconds
        if self.elapsed() >= self.budget - reserve:
            logger.warning("time budget reached at epoch %d, iteration %d: stopping", engine.state.epoch,
                           engine.state.iteration)
            engine.terminate()

    def _validate_now(self, engine: Engine) -> None:
        """Validate once after the first speed window: its time is then reserved for the final validation (which
        must end inside the budget), and a best checkpoint exists early."""
        logger.info("time budget: validating once to measure the validation time")
        self.validator.run(engine.state.epoch)
        logger.info("time budget: one validation takes %.1f s; reserved for the final one", self.validation_seconds)

    def _plan(self, engine: Engine, iterations_per_second: float, log: bool = True) -> None:
        done = engine.state.iteration
        if self.planned_iterations is not None and any(
                s.lr_lambdas[0](s.last_epoch) <= 0 for s in self.schedulers):
            return  # the schedule is at zero for its last iteration: a new plan must not run past its end
        remaining = max(0.0, self.budget - self.elapsed() - self.reserve_seconds - self.validation_seconds)
        total = max(done + 1, done + math.floor(iterations_per_second * remaining * self.safety))
        self.iterations_per_second, self.planned_iterations = iterations_per_second, total
        engine.state.max_epochs = max(engine.state.epoch, math.ceil(total / engine.state.epoch_length))
        for scheduler in self.schedulers:
            self._respread(scheduler, total)
        (logger.info if log else logger.debug)("time budget %.1f min: %.2f it/s, planning %d iterations (%.2f epochs)",
                                               self.budget / 60, iterations_per_second, total,
                                               total / engine.state.epoch_length)

    def _respread(self, scheduler: Any, total: int) -> None:
        """Fit the rule to end at zero at iteration ``total - 1``, continuous at the next step."""
        rule, step = scheduler.lr_lambdas[0], scheduler.last_epoch  # ``step`` is the next iteration's index
        factor = rule(step)
        if step < rule.constant_iters:  # still constant: the 1:1 split, but never decay in the past
            constant = max(round(total * self.constant_fraction), step)
        elif factor <= 0:
            return
        else:  # continue the decay from the current factor down to zero at the new end; an end too near for
            # that (the next iteration the last, or just past the constant phase) drops faster from here, never
            # back into the constant phase (the learning rate back at its base)
            constant = min(round((step + 1 - (1.0 - factor) * total) / factor), step)
        rule.set_total(constant, total - constant)
        for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * rule(step)
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


class ValidateOnCompleted:
    """Run the validator once more when training completes, unless the last epoch was just validated."""

    def __init__(self, validator: Any, interval: int = 1) -> None:
        self.validator, self.interval = validator, max(1, int(interval))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval != 0 or getattr(engine, "should_terminate", False):
            self.validator.run(engine.state.epoch)
