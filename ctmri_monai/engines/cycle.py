"""One CycleGAN cycle on slice stacks, shared by the trainer and the sample grids.

With context k, the stacks hold 4k + 1 slices: generator A translates the 2k + 1 middle slices (each from its own
2k + 1 window), generator B reconstructs the middle slice from those translations. With k = 0 this is the plain
2D cycle: A(x), then B(A(x)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ctmri_monai.transforms.context import centre_slice, context_windows

__all__ = ["cycle"]

Network = Callable[[torch.Tensor], torch.Tensor]


def cycle(forward: Network, backward: Network, stack: torch.Tensor, context: int,
          call: Callable[[torch.Tensor, Network], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(translated middle slice (N, 1, S, S), its reconstruction (N, 1, S, S)) of (N, 4k + 1, S, S) stacks.

    ``call(x, network)`` runs a network (a MONAI inferer; default: ``network(x)``).
    """
    run = call or (lambda x, net: net(x))
    n = int(stack.shape[0])
    translated = run(context_windows(stack, context), forward)  # (N * (2k + 1), 1, S, S)
    translated = translated.reshape(n, 2 * context + 1, *translated.shape[2:])
    return centre_slice(translated), run(translated, backward)
