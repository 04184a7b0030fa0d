"""Multi-GPU / multi-node helpers on PyTorch's distributed stack, for ``torchrun`` and the bundle's overlay.

``bundle/configs/multi_gpu_train.yaml`` uses them: :func:`init_distributed` / :func:`cleanup` in ``initialize`` /
``finalize``, :func:`local_device` as ``device``, :func:`wrap_ddp` for the networks the trainer updates,
:func:`rank_handlers` to keep log writers on rank 0, and :class:`ReplicaSyncCheck` to prove that every rank holds
the same weights. :func:`shard_inputs` splits a batch conversion's inputs across ranks. Everything also works in
a plain single process (rank 0 of 1), so the same code runs with and without ``torchrun``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import random
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["ReplicaSyncCheck", "cleanup", "distributed_env", "free_port", "gather_objects", "init_distributed",
           "local_device", "network_fingerprints", "rank_handlers", "resolve_backend", "resolve_device",
           "seed_per_rank", "shard_inputs", "state_dict_sha256", "unwrap", "update_digest", "wrap_ddp"]


def distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank): from the process group when initialised, else torchrun's variables."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), local


def shard_inputs(files: Sequence[T], rank: int | None = None, world_size: int | None = None) -> list[T]:
    """This rank's share of ``files``: every ``world_size``-th item from ``rank`` (``files[rank::world_size]``).

    The shards are disjoint, cover every item, differ in length by at most one and keep the input order, so a
    sorted list of similar volumes spreads the work evenly. ``rank`` / ``world_size`` default to
    :func:`distributed_env`. Shard after every rank has built the same full list (and its output names).
    """
    env_rank, env_world, _ = distributed_env()
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


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (one GPU per process, as torchrun starts them), else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None) -> this process's GPU when CUDA is available, else the CPU; a bare "cuda" -> this
    process's GPU (``cuda:LOCAL_RANK`` under torchrun, else GPU 0); anything else as given."""
    if device in (None, "", "auto", "cuda") and torch.cuda.is_available():
        return local_device()
    if device in (None, "", "auto"):
        return torch.device("cpu")
    return torch.device(device)


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
    value = int(seed) + distributed_env()[0]
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


def _main_only_types() -> tuple[type, ...]:
    from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardImageHandler, TensorBoardStatsHandler

    from ctmri_monai.handlers import SampleGridHandler

    return StatsHandler, TensorBoardStatsHandler, TensorBoardImageHandler, SampleGridHandler, CheckpointSaver


def rank_handlers(handlers: Sequence[Any], rank: int | None = None,
                  main_only: Sequence[type] | None = None) -> list[Any]:
    """The handlers this rank should attach: all on rank 0; elsewhere without the writers of logs and files.

    ``main_only`` defaults to MONAI's ``StatsHandler``, ``TensorBoardStatsHandler``, ``TensorBoardImageHandler``,
    ``CheckpointSaver`` (whose saver writes on rank 0 only anyway; dropping it on the others also drops their
    "saved checkpoint" messages) and the sample grid handler. Validation, schedules and resume stay on every rank.
    """
    rank = distributed_env()[0] if rank is None else rank
    if rank == 0:
        return list(handlers)
    skip = tuple(main_only) if main_only is not None else _main_only_types()
    return [h for h in handlers if not isinstance(h, skip)]


def update_digest(digest: Any, tensor: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes (a contiguous CPU copy, no further copy) into a hashlib digest."""
    t = tensor.detach().as_subclass(torch.Tensor).cpu().contiguous()
    digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        digest.update(t.reshape(-1).view(torch.uint8).numpy())


def state_dict_sha256(state: Mapping[str, Any]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and tensor bytes (CPU copy); equal iff bitwise equal."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            update_digest(digest, value)
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def network_fingerprints(networks: Mapping[str, nn.Module]) -> dict[str, str]:
    """{name: :func:`state_dict_sha256` of the unwrapped network's state dict} (checkpoint key names)."""
    return {name: state_dict_sha256(unwrap(net).state_dict()) for name, net in networks.items()}


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class ReplicaSyncCheck:
    """Check at the end of every ``interval`` epochs and of training that all ranks hold bitwise equal weights.

    Every rank fingerprints ``networks`` (:func:`network_fingerprints`) and gathers the others'; a mismatch
    raises ``RuntimeError`` (DDP keeps replicas equal, so a mismatch means a bug or a broken node).
    With ``output_dir``, each rank writes ``replica_fingerprints_rank<r>.json`` there (used by the tests).
    Costs one CPU copy and hash of the weights per check.
    """

    def __init__(self, networks: Mapping[str, nn.Module], interval: int = 1, output_dir: str | None = None) -> None:
        self.networks = dict(networks)
        self.interval = max(1, int(interval))
        self.output_dir = Path(output_dir) if output_dir else None
        self.last: dict[str, str] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        mine = network_fingerprints(self.networks)
        everyone = gather_objects(mine)
        rank = distributed_env()[0]
        self.last = mine
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            record = {"rank": rank, "epoch": engine.state.epoch, "iteration": engine.state.iteration, **mine}
            (self.output_dir / f"replica_fingerprints_rank{rank}.json").write_text(json.dumps(record, indent=1))
        differing = sorted({name for other in everyone for name in mine if other.get(name) != mine[name]})
        if differing:
            raise RuntimeError(f"ranks hold different weights for {differing} at epoch {engine.state.epoch}")
