"""Multi-GPU / multi-node helpers for ``torchrun`` and the bundle's ``multi_gpu_train.yaml`` overlay.

:func:`init_distributed` / :func:`cleanup` in ``initialize`` / ``finalize``, :func:`wrap_ddp` for the networks the
trainer updates, :func:`seed_per_rank`, and :func:`shard_inputs` to split a batch conversion's inputs across ranks.
Ranks come from Ignite's ``ignite.distributed`` (which sees the process group); ``process_rank`` also reads
torchrun's variables, because a conversion under torchrun runs without a process group. Everything works in a plain
single process (rank 0 of 1).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import socket
from collections.abc import Sequence
from typing import Any, TypeVar

import ignite.distributed as idist
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ctmri_monai.utils.device import local_device

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["cleanup", "free_port", "init_distributed", "process_rank", "resolve_backend", "seed_per_rank",
           "shard_inputs", "unwrap", "wrap_ddp"]


def process_rank() -> tuple[int, int]:
    """(rank, world size): Ignite's when a process group exists, else torchrun's ``RANK`` / ``WORLD_SIZE``."""
    if idist.get_world_size() > 1:
        return idist.get_rank(), idist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shard_inputs(files: Sequence[T], rank: int | None = None, world_size: int | None = None) -> list[T]:
    """This rank's share of ``files``: every ``world_size``-th item from ``rank`` (``files[rank::world_size]``).

    The shards are disjoint, cover every item, differ in length by at most one and keep the input order, so a
    sorted list of similar volumes spreads the work evenly. ``rank`` / ``world_size`` default to
    :func:`process_rank`. Shard after every rank has built the same full list (and its output names).
    """
    env_rank, env_world = process_rank()
    rank = env_rank if rank is None else int(rank)
    world_size = env_world if world_size is None else int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard_inputs: need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    return list(files)[rank::world_size]


def resolve_backend(backend: str | None = "auto") -> str:
    """"auto" (or None) -> "nccl" when CUDA is available, else "gloo"; other names pass through."""
    if backend in (None, "", "auto"):
        return "nccl" if torch.cuda.is_available() else "gloo"
    return str(backend)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(backend: str | None = "auto", timeout_minutes: float = 30.0) -> dict[str, Any]:
    """Join the process group that ``torchrun`` describes in the environment (idempotent).

    Without torchrun's variables a one-process group is created on a free local port, so an overlay config also
    runs as a plain ``python -m monai.bundle run``. On CUDA the process is bound to ``cuda:LOCAL_RANK`` first.
    Returns {"backend", "rank", "world_size"}.
    """
    if not (dist.is_available() and dist.is_initialized()):
        name = resolve_backend(backend)
        if name == "nccl":
            torch.cuda.set_device(local_device())
        timeout = dt.timedelta(minutes=timeout_minutes)
        if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend=name, timeout=timeout)
        else:
            logger.warning("init_distributed: not started by torchrun; running as a single process")
            dist.init_process_group(backend=name, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                                    world_size=1, timeout=timeout)
    info = {"backend": dist.get_backend(), "rank": dist.get_rank(), "world_size": dist.get_world_size()}
    logger.info("distributed: rank %d of %d (%s)", info["rank"], info["world_size"], info["backend"])
    return info


def seed_per_rank(seed: int | None) -> int | None:
    """Seed Python's, NumPy's and torch's global generators with ``seed + rank`` (cuDNN flags untouched).

    Ranks then draw different random streams (dropout, DataLoader worker seeds and with them random pairing and
    flips in workers) instead of repeating rank 0's; rank 0 keeps exactly the single-process stream. What must
    agree across ranks uses its own seeds (train/val split, DistributedSampler, pools, FID features) or is
    broadcast (DDP copies rank 0's initial weights). Returns the seed used.
    """
    if seed is None:
        return None
    value = int(seed) + process_rank()[0]
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    return value


def cleanup() -> None:
    """Leave the process group, if any (for the config's ``finalize``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(net: nn.Module, device: str | torch.device | None = None, channels_last: bool = False,
             **kwargs: Any) -> nn.Module:
    """``DistributedDataParallel(net)`` when a process group of more than one process exists, else ``net``.

    ``channels_last`` converts the parameters before wrapping so DDP's gradient buckets share their layout.
    Defaults: ``device_ids=[device.index]`` on CUDA (none on CPU) and ``broadcast_buffers=False`` (the CycleGAN
    networks use instance norm without running statistics, so there is nothing to broadcast, and a rank-0-only
    forward, such as a sample grid, can never wait on the other ranks). Other ``kwargs`` go to DDP.
    The optimisers may keep the parameters of ``net``: DDP shares them.
    """
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return net
    device = torch.device(device) if device is not None else next(net.parameters()).device
    kwargs.setdefault("broadcast_buffers", False)
    if device.type == "cuda":
        kwargs.setdefault("device_ids", [device.index if device.index is not None else torch.cuda.current_device()])
    logger.info("DistributedDataParallel(%s) on %s, %d processes", type(net).__name__, device, dist.get_world_size())
    return nn.parallel.DistributedDataParallel(net, **kwargs)


def unwrap(net: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper; other modules unchanged."""
    if isinstance(net, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return net.module
    return net
