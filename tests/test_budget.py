"""Time-budget re-planning keeps the learning rate monotone and ends it at zero on the planned iteration."""

from __future__ import annotations

import pytest
import torch

from ctmri_monai.budget import TimeBudgetHandler
from ctmri_monai.schedule import cyclegan_scheduler


@pytest.mark.parametrize("plans", [{30: 200}, {30: 200, 120: 260, 180: 230}, {5: 40, 25: 400, 300: 320}])
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


def test_disabled_without_budget() -> None:
    handler = TimeBudgetHandler(None)
    assert handler.budget is None and handler.window == 0.0
