"""Time-budget re-planning keeps the learning rate monotone and ends it at zero on the planned iteration."""

from __future__ import annotations

import pytest
import torch

from ctmri_monai.engines.schedule import cyclegan_scheduler
from ctmri_monai.handlers.budget import TimeBudgetHandler


@pytest.mark.parametrize("plans", [{30: 200}, {30: 200, 120: 260, 180: 230}, {5: 40, 25: 400, 300: 320},
                                   {30: 200, 150: 151}, {30: 200, 101: 103}, {30: 200, 101: 102}])
def test_respread_is_monotone_and_ends_at_zero(plans: dict[int, int]) -> None:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = cyclegan_scheduler(optimizer, n_epochs=100, n_epochs_decay=100, epoch_length=10)
    handler = TimeBudgetHandler(1.0, [scheduler])
    lrs, total = [], 10**6
    for iteration in range(1, 10**4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        if iteration in plans:
            total = plans[iteration]
            handler._respread(scheduler, total)
        if iteration >= total:
            break
    assert len(lrs) == total
    assert lrs[0] == 1.0 and lrs[-1] == 0.0 and lrs[-2] > 0.0
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:], strict=False)), "the learning rate went back up"


def test_a_plan_after_the_schedule_reached_zero_does_not_extend_the_run() -> None:
    """Once the next iteration is the planned last one (at zero), a faster speed would plan more: the plan
    stays (else the run goes on past the rule's end and ends at an iteration it did not plan)."""
    from ignite.engine import Engine

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = cyclegan_scheduler(optimizer, n_epochs=100, n_epochs_decay=100, epoch_length=10)
    handler = TimeBudgetHandler(1.0, [scheduler])
    handler.start = __import__("time").perf_counter()
    engine = Engine(lambda e, b: None)
    engine.state.epoch_length, engine.state.epoch, engine.state.max_epochs = 10, 1, 100
    engine.state.iteration = 10
    for _ in range(10):
        scheduler.step()
    handler._plan(engine, iterations_per_second=4.0 / 60)  # a few iterations left in the minute
    end = handler.planned_iterations
    assert 11 < end <= 14
    for engine.state.iteration in range(11, end):
        scheduler.step()
    assert scheduler.lr_lambdas[0](scheduler.last_epoch) == 0.0  # the planned last iteration runs at zero
    handler._plan(engine, iterations_per_second=100.0)
    assert handler.planned_iterations == end


def test_disabled_without_budget() -> None:
    handler = TimeBudgetHandler(None)
    assert handler.budget is None and handler.window == 0.0


def test_validation_time_is_measured_early_and_the_run_ends_inside_the_budget() -> None:
    """The validator runs once after the first speed window; its time is reserved, so training plus the final
    validation end inside the budget (without the early run nothing would be reserved and it would overrun)."""
    import time

    from ignite.engine import Engine, Events

    from ctmri_monai.handlers.budget import ValidateOnCompleted

    runs: list[float] = []

    class Validator(Engine):  # run(epoch), as MONAI's Evaluator
        def run(self, global_epoch: int = 1) -> None:
            super().run([0])

    validator = Validator(lambda engine, batch: time.sleep(0.6))
    validator.add_event_handler(Events.COMPLETED, lambda e: runs.append(time.perf_counter()))
    trainer = Engine(lambda e, b: time.sleep(0.01))
    budget_minutes = 4.0 / 60  # 4 s; the speed window is capped at 10 %: 0.4 s
    handler = TimeBudgetHandler(budget_minutes, validator=validator, reserve_seconds=0.2)
    handler.attach(trainer)
    ValidateOnCompleted(validator, interval=1000).attach(trainer)
    start = time.perf_counter()
    trainer.run(range(50), max_epochs=1000)
    elapsed = time.perf_counter() - start
    assert len(runs) == 2, "one early validation and the final one"
    assert handler.validation_seconds == pytest.approx(0.6, abs=0.2)
    assert runs[0] - start < 1.5 and elapsed < 4.0, elapsed
    assert elapsed > 2.5  # and the budget was used, not thrown away
