"""Single-device speed switches for bundle configs: cuDNN autotuning and optional ``torch.compile``.

Mixed precision lives in :mod:`ctmri_monai.utils.amp` and the trainer's ``amp`` / ``channels_last`` arguments; data
loading speed (workers, pinned memory) in the DataLoader entries of the config. Each switch here is safe to
call on a CPU-only machine, where it does nothing that changes results.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["configure_backends", "maybe_compile"]


def configure_backends(device: str | torch.device, benchmark: bool = True) -> dict[str, Any]:
    """Set cuDNN autotuning for ``device``; call it after ``monai.utils.set_determinism`` in ``initialize``.

    On CUDA, ``benchmark=True`` lets cuDNN time its convolution algorithms once per input shape and keep the
    fastest (the CycleGAN shapes are fixed, so this pays off after the first iteration); it also clears
    ``cudnn.deterministic``, which ``set_determinism`` sets and which would restrict the algorithms. Results then
    vary between runs only at floating-point rounding level. ``benchmark=False`` keeps MONAI's deterministic
    choice. On other devices nothing changes. Returns the resulting flags (for logs and tests).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(benchmark)
        if benchmark:
            torch.backends.cudnn.deterministic = False
        logger.info("cudnn.benchmark=%s, cudnn.deterministic=%s", torch.backends.cudnn.benchmark,
                    torch.backends.cudnn.deterministic)
    return {"device": str(device), "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic)}


def maybe_compile(net: nn.Module, enabled: bool = False, **kwargs: Any) -> nn.Module:
    """Compile ``net``'s forward in place with ``torch.compile`` when ``enabled``; return ``net`` itself.

    ``nn.Module.compile`` keeps the module object, so parameter identity (optimisers), ``state_dict`` key names
    (checkpoints: no ``_orig_mod.`` prefix) and DDP wrapping are unchanged. ``kwargs`` go to ``torch.compile``
    (``mode``, ``backend``, ``dynamic``, ...). The first iterations are slow while graphs are compiled.
    """
    if enabled:
        net.compile(**kwargs)
        logger.info("compiled %s with %s", type(net).__name__, kwargs or "default settings")
    return net

