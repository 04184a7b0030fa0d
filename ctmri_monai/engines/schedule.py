"""Learning-rate schedule of CycleGAN: constant, then linear decay to zero, counted in iterations."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class LinearDecayRule:
    """Multiplier 1 for ``constant_iters`` iterations, then linear down to 0 at the last of ``decay_iters``.

    A plain object (not a closure) so ``LambdaLR.state_dict`` saves it and a resumed run, or a run whose
    epoch count was changed by the time budget, continues on the same curve.
    """

    def __init__(self, constant_iters: int, decay_iters: int) -> None:
        self.constant_iters = int(constant_iters)
        self.decay_iters = int(decay_iters)

    def set_total(self, constant_iters: int, decay_iters: int) -> None:
        self.constant_iters, self.decay_iters = int(constant_iters), int(decay_iters)

    def __call__(self, step: int) -> float:
        if step < self.constant_iters:
            return 1.0
        if self.decay_iters <= 0:
            return 0.0
        done = step - self.constant_iters + 1
        return max(0.0, 1.0 - done / self.decay_iters)


def cyclegan_scheduler(optimizer: Optimizer, n_epochs: int, n_epochs_decay: int, epoch_length: int) -> LambdaLR:
    """``LambdaLR`` stepped once per iteration: ``n_epochs`` constant, ``n_epochs_decay`` decaying to zero."""
    rule = LinearDecayRule(n_epochs * epoch_length, n_epochs_decay * epoch_length)
    return LambdaLR(optimizer, rule)
