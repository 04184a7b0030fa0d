#!/usr/bin/env python
"""A practical compute ceiling of this machine: dense matrix multiplication throughput, to read the other
benchmarks' TFLOP/s against (a measured ceiling, not the vendor's peak).

    python scripts/bench_peak.py [--device cpu|cuda] [--size 4096] [--repeats 10] [--json out.json]

fp32 on the CPU; fp32 (TF32 off), TF32 and bf16 on CUDA.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ctmri_monai.apps.benchmarking import machine_info, resolve_device, synchronize, write_json


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    """TFLOP/s of ``repeats`` (size x size) @ (size x size) products (2 size^3 FLOPs each), after one warm-up."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - t0) / 1e12


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, default=None, help="matrix size (default 2048 CPU, 8192 CUDA)")
    p.add_argument("--repeats", type=int, default=None, help="timed products (default 5 CPU, 50 CUDA)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    size = args.size or (8192 if cuda else 2048)
    repeats = args.repeats or (50 if cuda else 5)
    rows = []
    if cuda:
        saved = torch.backends.cuda.matmul.allow_tf32
        for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                  ("bf16", torch.bfloat16, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            rows.append({"dtype": name, "tflops": matmul_tflops(device, dtype, size, repeats)})
        torch.backends.cuda.matmul.allow_tf32 = saved
    else:
        rows.append({"dtype": "fp32", "tflops": matmul_tflops(device, torch.float32, size, repeats)})
    machine = machine_info(device)
    print(f"{machine['cpu']} ({machine['cpu_count']} cores), {machine['accelerator'] or 'no GPU'}, "
          f"torch {machine['torch']} ({torch.get_num_threads()} threads), {machine['date']}")
    print(f"| dense matmul {size} x {size} | TFLOP/s |\n|---|---|")
    for row in rows:
        print(f"| {row['dtype']} | {row['tflops']:.4g} |")
    if args.json:
        write_json({"machine": machine, "size": size, "repeats": repeats, "results": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
