"""Helpers for the benchmark scripts: machine description, synchronised timing, peak memory, FLOPs, tables, JSON.

Memory is reported with what it means: on CUDA ``torch.cuda.max_memory_allocated`` (tensors only); on the CPU the
peak resident set size of the process (``resource.getrusage``), which includes Python and the libraries, so the
benchmarks run each variant in a fresh process when they compare CPU memory.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import multiprocessing
import os
import platform
import resource
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ctmri_monai.utils.device import resolve_device  # re-exported for the benchmark scripts

__all__ = ["FlopCount", "cpu_model", "format_table", "machine_info", "peak_memory", "reset_peak_memory",
           "reset_peak_rss", "resolve_device", "rss_bytes", "run_isolated", "synchronize", "write_json"]


def cpu_model() -> str:
    """The CPU model name (``lscpu``'s "Model name", else /proc/cpuinfo, else ``platform.processor()``)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            if line.strip().lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where and when a benchmark ran: CPU, cores, threads, load, accelerator, library versions."""
    info: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "device": str(device),
        "accelerator": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if device.type == "cuda":
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    return info


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (timing boundaries); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_bytes(field: str = "VmRSS") -> int:
    """This process's resident memory from /proc/self/status: ``VmRSS`` (now) or ``VmHWM`` (peak since start or
    since `reset_peak_rss`); 0 where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``/proc/self/clear_refs``); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def reset_peak_memory(device: torch.device) -> None:
    """Start a new CUDA peak-memory window (the CPU peak RSS cannot be reset: use a fresh process)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA max allocated since the last reset, or this process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_peak_rss_of_process"


class FlopCount:
    """Count matmul/convolution FLOPs (2 per multiply-add, forward and backward) with ``FlopCounterMode``.

    Use as a context manager, or call :meth:`start` / :meth:`stop` from engine event handlers.
    Normalisation and element-wise operations are not counted (PyTorch's counter covers matmuls/convolutions).
    """

    def __init__(self) -> None:
        self.mode: FlopCounterMode | None = None
        self.total: int | None = None

    def start(self, *_: Any) -> None:
        self.mode = FlopCounterMode(display=False)
        self.mode.__enter__()

    def stop(self, *_: Any) -> None:
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.total = int(self.mode.get_total_flops())
            self.mode = None

    def __enter__(self) -> FlopCount:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run_isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a fresh spawned process (clean peak RSS and CUDA state); returns its result."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Plain-text table of ``rows``; ``columns`` are (key, header) pairs."""
    cells = [[header for _, header in columns]] + [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON, atomically (creating the folder); returns the path."""
    from ctmri_monai.io.atomic import atomic_write_json

    return atomic_write_json(path, data)
