"""Mixed precision policy: bf16 autocast where the GPU supports it, fp16 with a grad scaler otherwise, off on CPU."""

from __future__ import annotations

import contextlib

import torch


def autocast_dtype(device: torch.device | str, amp: bool) -> torch.dtype | None:
    """The autocast dtype to use on ``device``, or None for full precision (always None on CPU)."""
    device = torch.device(device)
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A CUDA grad scaler for fp16 autocast; bf16 and fp32 need none."""
    return torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
