#!/usr/bin/env python
"""Load test of batch conversion: N small volumes in one `run_batch`, resident memory sampled after every file.

    python scripts/load_convert.py [--n 200] [--shape 48 48 16] [--image-size 256] [--output-dir DIR] [--json F]

Makes N distinct CT head volumes (NIfTI), converts them ct2mri in one batch run with a tiny identity-like
generator (a 3x3 convolution that starts as the identity), and reads VmRSS from /proc/self/status after each
file. Reports RSS at the start (model ready, before the first file), at the end, the peak (VmHWM), the growth
and the least-squares slope of RSS per file over the second half (the first files warm caches up), the total
time and the failures.

Run it with ``MALLOC_MMAP_THRESHOLD_=131072`` to pin glibc's mmap threshold: freed volume-sized buffers then
go back to the system at once and RSS follows live memory (without it glibc now and then keeps freed memory,
and single samples jump by tens of MB). At ``--image-size 256`` every file goes through 256 x 256 x depth
float32 tensors (4 MB for depth 16), so a leak of any per-file tensor would grow RSS by megabytes per file.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from ctmri_monai.apps.benchmarking import machine_info, reset_peak_rss, rss_bytes, write_json


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory of this process in MiB (``VmRSS``, or ``VmHWM`` for the peak)."""
    return rss_bytes(field) / 2**20


class IdentityishGenerator(torch.nn.Module):
    """A 3x3 convolution initialised to the identity, plus tanh: real weights, output close to the input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x) * 1.5) / np.tanh(1.5)


def make_volumes(folder: Path, n: int, shape: tuple[int, int, int], seed: int = 0) -> list[Path]:
    """N distinct int16 CT heads (an ellipsoid of tissue texture in air), 1 x 1 x 3 mm."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x, y = np.ogrid[-1:1:shape[0] * 1j, -1:1:shape[1] * 1j]  # sparse grids: large volumes stay cheap to make
    paths = []
    for i in range(n):
        a, b = rng.uniform(0.6, 0.9, 2)
        inside = (x ** 2 / a + y ** 2 / b < 1.0)[:, :, None]
        hu = rng.integers(-100, 900, size=shape, dtype=np.int16)
        np.copyto(hu, np.int16(-1000), where=~inside)
        path = folder / f"vol{i:04d}.nii.gz"
        nib.save(nib.Nifti1Image(hu, np.diag([1.0, 1.0, 3.0, 1.0])), str(path))
        paths.append(path)
    return paths


def second_half_trend(values: list[float]) -> tuple[float, float, float]:
    """Over the second half of ``values``: (least-squares slope per file, last - first, floor growth).

    The floor growth (lowest of the last five minus lowest of the first five) ignores the transient memory
    glibc keeps now and then after a large free, which makes single samples jump by tens of MB.
    """
    half = values[len(values) // 2:]
    if len(half) < 2:
        return 0.0, 0.0, 0.0
    x = np.arange(len(half), dtype=np.float64)
    slope = float(np.polyfit(x, np.asarray(half, np.float64), 1)[0])
    k = max(1, min(5, len(half) // 2))
    return slope, float(half[-1] - half[0]), float(min(half[-k:]) - min(half[:k]))


def run(n: int = 200, shape: tuple[int, int, int] = (48, 48, 16), image_size: int = 256,
        output_dir: str | os.PathLike | None = None, batch_size: int = 16) -> dict[str, Any]:
    """Make the volumes, convert them in one batch, return the figures."""
    from ctmri_monai.convert import BatchOptions, ConvertOptions, ModelSource, run_batch
    from ctmri_monai.spec import ModelSpec, SliceGeometry

    work = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="load_convert_"))
    inputs = make_volumes(work / "inputs", n, shape)
    generator = IdentityishGenerator().eval()
    info = {"file": "identityish.pt", "sha256": "0" * 64,
            "spec": ModelSpec(geometry=SliceGeometry(image_size=image_size, pixdim=(1.0, 1.0)))}
    samples: list[float] = []
    statuses: list[str] = []

    def on_record(record: dict[str, Any]) -> None:
        statuses.append(record["status"])
        samples.append(rss_mb())

    generator(torch.zeros(1, 1, 8, 8))
    reset_peak_rss()  # the peak below is the conversion's, not the making of the inputs
    start = rss_mb()
    t0 = time.perf_counter()
    options = BatchOptions(convert=ConvertOptions.for_run("cpu", batch_size=batch_size), progress=False,
                           stream=io.StringIO(), on_record=on_record)
    status = run_batch(inputs, work / "outputs", "ct2mri", ModelSource(generator=generator, model_info=info), options)
    seconds = time.perf_counter() - t0
    slope, growth, floor = second_half_trend(samples)
    return {
        "files": n, "shape": list(shape), "image_size": image_size, "exit_status": status,
        "ok": statuses.count("ok") + statuses.count("flagged"), "failed": statuses.count("failed"),
        "rss_start_mb": round(start, 1), "rss_end_mb": round(samples[-1], 1) if samples else None,
        "rss_peak_mb": round(rss_mb("VmHWM"), 1), "rss_max_sampled_mb": round(max(samples), 1) if samples else None,
        "second_half_slope_mb_per_file": round(slope, 4), "second_half_growth_mb": round(growth, 2),
        "second_half_floor_growth_mb": round(floor, 2), "malloc_mmap_threshold": os.environ.get(
            "MALLOC_MMAP_THRESHOLD_", "glibc default (dynamic)"),
        "seconds": round(seconds, 2), "seconds_per_file": round(seconds / max(n, 1), 4),
        "rss_samples_mb": [round(v, 1) for v in samples], "output_dir": str(work),
        "machine": machine_info(torch.device("cpu")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of volumes")
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 48, 16), metavar=("X", "Y", "Z"))
    parser.add_argument("--image-size", type=int, default=256, help="network image size (slices padded to it)")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per generator call")
    parser.add_argument("--output-dir", default=None, help="work folder (default: a new temporary folder)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    figures = run(args.n, tuple(args.shape), args.image_size, args.output_dir, args.batch_size)
    text = json.dumps({k: v for k, v in figures.items() if k != "rss_samples_mb"}, indent=2)
    print(text)
    if args.json:
        write_json(figures, args.json)
    return 0 if figures["failed"] == 0 and figures["exit_status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
