#!/usr/bin/env python
"""Conversion speed: slices per second end to end against the generator's pure forward and an fp32 batch-1 loop.

    python scripts/bench_convert.py             # ResNet-9 generator, 256 x 256 slices of a phantom CT volume
    python scripts/bench_convert.py --quick     # tiny generator, 32 x 32 x 8 volume: seconds on a CPU (CI)
    python scripts/bench_convert.py --demo      # the demo's sizes: ResNet-6, ngf 16, 64 x 64 frames at 3 mm of a
                                                # 96 x 96 x 48 phantom at 2 x 2 x 3 mm (`ctmri demo`)

Four figures on the same slices, in one run:
  end_to_end   ctmri_monai.convert.pipeline.convert_volume: read NIfTI, orient, resample, window, crop/pad, generator
               over batches of slices (AMP on CUDA), QA, invert, write NIfTI; the disagreement map off;
  end_to_end_map  the same with the disagreement map (``--disagreement``: its two extra forward passes per slice,
               MIND, its inverse onto the input's grid and its NIfTI), interleaved with end_to_end round by round;
  forward      the generator alone on the preprocessed slices already on the device, same batch size and AMP;
  baseline     the generator alone, one slice at a time in fp32 (the reference implementation's way).
The generator has random weights unless --checkpoint is given (speed does not depend on the weights).

    python scripts/bench_convert.py --engines   # torch eager vs ONNX Runtime vs OpenVINO on the CPU

--engines: one process, interleaved rounds (every engine once per round, in turn), for 1 and 2 threads and batch 1
and 4: end_to_end (convert_volume with the engine as the generator, map off) and forward (the engine alone on the
preprocessed slices), slices/s per engine and its ratio to torch eager in the same setting; fp32 throughout.
FLOPs per slice: torch.utils.flop_counter of one forward. Prints a table and writes JSON.

    python scripts/bench_convert.py --workers 1,2   # files per minute: one process vs Dask local workers

--workers: 12 phantom CT volumes (64 x 64 x 16, 3 mm; --slices S for 64 x 64 x S), a small two-generator
checkpoint (ResNet ngf 16, 3 blocks; the map off, as by default; --disagreement turns it on everywhere), converted
by run_batch in this process and by run_cluster_batch on a LocalCluster of each worker count (one thread each).
Files per minute are timed from the first finished file to the last (startup and model loads excluded); the
overhead per file is, on each worker, the time between two of its files finishing (seen by the client) minus the
second one's conversion seconds as its record reports them, averaged over all such pairs from the worker's second
file on (the client fetches a worker's first result over a new connection).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch import nn

from ctmri_monai.apps.benchmarking import (
    FlopCount,
    format_table,
    machine_info,
    peak_memory,
    reset_peak_memory,
    resolve_device,
    synchronize,
    write_json,
)
from ctmri_monai.utils.amp import autocast, autocast_dtype

# image_size px frames at pixdim mm; the phantom: in-plane pixels and its (x, y, z) spacing in mm.
FULL = {"image_size": 256, "ngf": 64, "n_blocks": 9, "num_downs": 8, "pixdim": 1.0, "phantom": (256, (1.0, 1.0, 4.0))}
QUICK = {"image_size": 32, "ngf": 4, "n_blocks": 1, "num_downs": 5, "pixdim": 1.0, "phantom": (32, (1.0, 1.0, 4.0))}
DEMO = {"image_size": 64, "ngf": 16, "n_blocks": 6, "num_downs": 6, "pixdim": 3.0, "phantom": (96, (2.0, 2.0, 3.0)),
        "name": "ResNet-6, ngf 16 (the demo's)", "slices": 48}


def write_phantom_ct(folder: Path, spec: dict[str, Any], slices: int) -> Path:
    """A phantom head CT (int16 HU) of ``slices`` slices at the spec's phantom size and spacing (FULL, QUICK: at
    the contract's 1 mm, so the grid needs no resampling)."""
    from ctmri_monai.phantoms import make_subject

    px, spacing = spec["phantom"]
    subject = make_subject(0, seed=0, shape=(px, px, slices), spacing=spacing)
    path = folder / "phantom_ct.nii.gz"
    nib.save(nib.Nifti1Image(subject.ct.astype(np.int16), subject.affine), path)
    return path


def build_generator(args: argparse.Namespace, spec: dict[str, Any], device: torch.device,
                    direction: str = "ct2mri") -> tuple[nn.Module, str]:
    if args.checkpoint:
        from ctmri_monai.networks.loading import load_generator

        net, info = load_generator(args.checkpoint, direction, device)
        return net, f"{args.checkpoint} ({info['spec'].network.backbone})"
    from ctmri_monai.networks import define_generator

    torch.manual_seed(0 if direction == "ct2mri" else 1)
    net = define_generator(args.backbone, ngf=spec["ngf"], n_blocks=spec["n_blocks"], num_downs=spec["num_downs"])
    name = spec.get("name") or ({"resnet": "ResNet-9", "unet": "U-Net-256"}[args.backbone] if not args.quick
                                else f"tiny {args.backbone}")
    return net.to(device).eval(), f"{name}, random weights"


def contract(spec: dict[str, Any]) -> Any:
    """A volumes-trained model's contract: ``image_size`` frames at ``pixdim`` mm."""
    from ctmri_monai.spec import ModelSpec, SliceGeometry

    return ModelSpec(geometry=SliceGeometry(image_size=spec["image_size"], pixdim=(spec["pixdim"],) * 2))


def preprocessed_slices(path: Path, spec: dict[str, Any], device: torch.device) -> torch.Tensor:
    """The conversion's own preprocessing of ``path``, as (D, 1, S, S) slices on ``device``."""
    from ctmri_monai.io import load_volume
    from ctmri_monai.transforms import volume_pipeline

    x = volume_pipeline(contract(spec), "ct")({"image": load_volume(path).image})["image"]
    return x.as_tensor()[0].permute(2, 0, 1).unsqueeze(1).contiguous().to(device)


@torch.no_grad()
def time_forward(net: nn.Module, slices: torch.Tensor, batch_size: int, amp_dtype: torch.dtype | None,
                 repeats: int) -> float:
    """Seconds for ``repeats`` passes of ``net`` over ``slices`` in batches (after one untimed batch)."""
    device = slices.device
    with autocast(device, amp_dtype):
        net(slices[:batch_size])
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            for i in range(0, len(slices), batch_size):
                net(slices[i:i + batch_size])
        synchronize(device)
    return time.perf_counter() - t0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny generator and volume: seconds on a CPU")
    p.add_argument("--demo", action="store_true", help="the demo's generator and phantom size")
    p.add_argument("--backbone", default="resnet", choices=["resnet", "unet"])
    p.add_argument("--checkpoint", default=None, help="use this checkpoint's CT->MRI generator")
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default)")
    p.add_argument("--slices", type=int, default=None,
                   help="slices of the test volume (default 32 CPU, 256 CUDA; --workers: 16)")
    p.add_argument("--batch-size", type=int, default=None, help="slices per generator call (default 16 CPU, 64 CUDA)")
    p.add_argument("--repeats", type=int, default=None, help="timed passes over the volume (default 1 CPU, 5 CUDA)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="mixed precision on CUDA")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's choice)")
    p.add_argument("--output", default="bench_convert.json", help="JSON output file")
    p.add_argument("--engines", action="store_true", help="compare torch, onnxruntime and openvino on the CPU")
    p.add_argument("--workers", default=None, help="e.g. 1,2: Dask local worker counts vs one process")
    p.add_argument("--files", type=int, default=12, help="--workers: volumes in the batch")
    p.add_argument("--rounds", type=int, default=2, help="--engines: interleaved rounds")
    p.add_argument("--disagreement", action="store_true", help="--workers: make the disagreement map too")
    return p.parse_args(argv)


def time_engine_forward(engine: Any, slices: torch.Tensor, batch_size: int) -> float:
    """Seconds for one pass of ``engine`` over ``slices`` in batches."""
    t0 = time.perf_counter()
    for i in range(0, len(slices), batch_size):
        engine(slices[i:i + batch_size])
    return time.perf_counter() - t0


def main_engines(args: argparse.Namespace) -> int:
    """The --engines mode (module docstring)."""
    from ctmri_monai.convert.pipeline import convert_volume
    from ctmri_monai.engines.runtimes import ENGINES, engine_for_module

    device = torch.device("cpu")
    spec = dict(QUICK if args.quick else DEMO if args.demo else FULL)
    size, depth = spec["image_size"], args.slices or (4 if args.quick else 8)
    net, model = build_generator(args, spec, device)
    machine = machine_info(device)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        volume = write_phantom_ct(Path(tmp), spec, depth)
        slices = preprocessed_slices(volume, spec, device)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            engines = {name: engine_for_module(net, contract(spec), name, threads) for name in ENGINES}
            for batch in (1, 4):
                seconds = {(name, kind): 0.0 for name in ENGINES for kind in ("end_to_end", "forward")}
                for engine in engines.values():  # untimed warm-up: first calls, compilation, allocator
                    engine(slices[:batch])
                for r in range(args.rounds):
                    for name, engine in engines.items():
                        t0 = time.perf_counter()
                        convert_volume(volume, Path(tmp) / f"out{r}.nii.gz", engine, contract(spec), "ct", "mri",
                                       batch_size=batch, device=device, amp=False, disagreement=False)
                        seconds[(name, "end_to_end")] += time.perf_counter() - t0
                        seconds[(name, "forward")] += time_engine_forward(engine, slices, batch)
                for (name, kind), s in seconds.items():
                    rows.append({"engine": name, "variant": kind, "threads": threads, "batch_size": batch,
                                 "seconds": s, "slices_per_s": depth * args.rounds / s})
    for row in rows:
        torch_row = next(r for r in rows if r["engine"] == "torch" and all(
            r[k] == row[k] for k in ("variant", "threads", "batch_size")))
        row["ratio_vs_torch"] = row["slices_per_s"] / torch_row["slices_per_s"]
    best = max((r for r in rows if r["variant"] == "end_to_end" and r["engine"] != "torch"),
               key=lambda r: r["ratio_vs_torch"])
    report = {"benchmark": "convert_engines", "quick": args.quick, "machine": machine,
              "settings": {"model": model, "image_size": size, "slices": depth, "rounds": args.rounds,
                           "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
              "results": rows, "best_end_to_end": best,
              "notes": ["fp32 everywhere; the engines run the same weights (ONNX exported in memory)",
                        "slices/s over all rounds; each round runs every engine once, in turn"]}
    path = write_json(report, args.output)
    print(f"{machine['cpu']} ({machine['cpu_count']} cores), torch {machine['torch']}, {machine['date']}, load "
          f"{machine['load_average_1_5_15']}; {model}; {depth} slices of {size} x {size}, {args.rounds} rounds")
    print(format_table(rows, [("engine", "engine"), ("variant", "variant"), ("threads", "threads"),
                              ("batch_size", "batch"), ("slices_per_s", "slices/s"),
                              ("ratio_vs_torch", "x torch")]))
    print(f"best end to end: {best['engine']} at {best['threads']} threads, batch {best['batch_size']}: "
          f"{best['ratio_vs_torch']:.2f}x torch eager; written: {path}")
    return 0


def _batch_rate(convert: Any, files: int) -> dict[str, Any]:
    """Run ``convert(on_record)``: files per minute from the first finished file to the last, the mean conversion
    seconds the records report, and the overhead per file: on each worker (one thread), the time between its
    consecutive finished files that its conversions do not account for, from its second file on (the client
    fetches a worker's first result over a new connection, which delays that one), over all workers."""
    stamps, seconds, by_worker = [], [], defaultdict(list)

    def on_record(record: dict[str, Any]) -> None:
        stamps.append(time.perf_counter())
        seconds.append(record["seconds"] or 0.0)
        by_worker[record.get("worker")].append((stamps[-1], seconds[-1]))

    convert(on_record)
    steady = stamps[-1] - stamps[0]
    runs = [done[1:] for done in by_worker.values() if len(done) >= 3]
    gaps = [(done[-1][0] - done[0][0]) - sum(s for _, s in done[1:]) for done in runs]
    intervals = sum(len(done) - 1 for done in runs)
    return {"files": files, "files_per_min": 60 * (files - 1) / steady, "steady_s": steady,
            "convert_s_per_file": sum(seconds) / files,
            "overhead_s_per_file": sum(gaps) / intervals if intervals else float("nan")}


def _on_record(workers: int | None, inputs: list[Path], out: Path, ckpt: Path, disagreement: bool,
               on_record: Any) -> int:
    """One batch through a single process (``workers`` None) or a LocalCluster of ``workers``."""
    from ctmri_monai.convert import BatchOptions, ConvertOptions, ModelSource, run_batch
    from ctmri_monai.convert.cluster.args import ClusterSpec
    from ctmri_monai.convert.cluster.run import run_cluster_batch

    common = {"progress": False, "overwrite": True, "stream": open(os.devnull, "w"), "on_record": on_record}
    model = ModelSource(checkpoint=ckpt)
    if workers is None:
        options = BatchOptions(convert=ConvertOptions.for_run("cpu", model=ckpt, disagreement=disagreement),
                               **common)
        return run_batch(inputs, out, "ct2mri", model, options)
    return run_cluster_batch(inputs, out, "ct2mri", model, ClusterSpec(workers=workers), BatchOptions(**common),
                             request={"device": "cpu", "disagreement": disagreement})


def main_workers(args: argparse.Namespace) -> int:
    """The --workers mode (module docstring)."""
    from ctmri_monai.io.checkpoint_file import atomic_torch_save
    from ctmri_monai.networks import define_generator
    from ctmri_monai.phantoms.render import make_subject

    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        for i in range(args.files):
            s = make_subject(i, seed=0, shape=(64, 64, args.slices or 16), spacing=(3.0, 3.0, 8.0))
            nib.save(nib.Nifti1Image(s.ct.astype(np.int16), s.affine), root / "in" / f"ct{i:02d}.nii.gz")
        from ctmri_monai.spec import CTIntensity, ModelSpec, NetworkSpec, SliceGeometry

        spec = ModelSpec(network=NetworkSpec(backbone="resnet", ngf=16, n_blocks=3), ct=CTIntensity((-1000, 1000)),
                         geometry=SliceGeometry(image_size=64, framing="spacing", pixdim=(3.0, 3.0)))
        torch.manual_seed(0)
        data = {f"generator_{d}": define_generator(**spec.generator_kwargs()).state_dict()
                for d in ("ct2mri", "mri2ct")}
        ckpt = root / "small.pt"
        atomic_torch_save(data | {"model_spec": spec.state_dict()}, ckpt)
        modes = [("single process", 1, None)] + [(f"dask {n} worker(s)", n, n)
                                                 for n in map(int, args.workers.split(","))]
        for name, n, workers in modes:
            out = root / name.replace(" ", "_")
            row = _batch_rate(partial(_on_record, workers, [root / "in"], out, ckpt, args.disagreement), args.files)
            rows.append({"mode": name, "workers": n, **row,
                         "overhead_pct": 100 * row["overhead_s_per_file"] / row["convert_s_per_file"]})
    base = next(r for r in rows if r["workers"] == 1 and r["mode"].startswith("dask"))["files_per_min"]
    for row in rows:
        row["x_1_worker"] = row["files_per_min"] / base
    machine = machine_info(torch.device("cpu"))
    path = write_json({"benchmark": "convert_workers", "machine": machine, "results": rows}, args.output)
    print(f"{machine['cpu']} ({machine['cpu_count']} cores), load {machine['load_average_1_5_15']}")
    print(format_table(rows, [("mode", "mode"), ("files_per_min", "files/min"), ("x_1_worker", "x 1 worker"),
                              ("convert_s_per_file", "convert s/file"), ("overhead_s_per_file", "overhead s/file"),
                              ("overhead_pct", "overhead %")]))
    print(f"written: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from ctmri_monai.convert.pipeline import convert_volume

    args = parse_args(argv)
    if args.engines:
        return main_engines(args)
    if args.workers:
        return main_workers(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    spec = dict(QUICK if args.quick else DEMO if args.demo else FULL)
    depth = args.slices or spec.get("slices") or (8 if args.quick else 256 if cuda else 32)
    batch = args.batch_size or (64 if cuda else 16)
    repeats = args.repeats or (5 if cuda else 1)
    amp_dtype = autocast_dtype(device, args.amp)
    machine = machine_info(device)
    net, model = build_generator(args, spec, device)
    size = spec["image_size"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        volume = write_phantom_ct(Path(tmp), spec, depth)
        slices = preprocessed_slices(volume, spec, device)
        n = len(slices)
        with torch.no_grad(), FlopCount() as flops:
            net(slices[:1])
        flops_per_slice = int(flops.total or 0)

        def run_e2e(i: int, with_map: bool) -> dict[str, Any]:
            return convert_volume(volume, Path(tmp) / f"out{i}.nii.gz", net, contract(spec), "ct", "mri",
                                  batch_size=batch, device=device, amp=args.amp, disagreement=with_map)

        run_e2e(-1, True)  # warm-up: first calls, allocator, cuDNN autotuning
        variants = {"end_to_end": False, "end_to_end_map": True}
        rounds_of, results_of = {v: [] for v in variants}, {v: [] for v in variants}
        reset_peak_memory(device)
        for i in range(repeats):  # interleaved: both variants see the same load on a shared machine
            for variant, with_map in variants.items():
                t0 = time.perf_counter()
                results_of[variant].append(run_e2e(i, with_map))
                rounds_of[variant].append(time.perf_counter() - t0)
        for variant, results in results_of.items():
            timings = {k: sum(r["timings"][k] for r in results) / repeats for k in results[0]["timings"]}
            rows.append({"variant": variant, "batch_size": batch, "amp_dtype": amp_dtype,
                         "seconds": sum(rounds_of[variant]), "round_seconds": rounds_of[variant],
                         "timings_per_volume_s": timings,
                         "peak_memory_bytes": peak_memory(device)[0] if cuda else None})
        for variant, b, dtype in (("forward", batch, amp_dtype), ("baseline_fp32_b1", 1, None)):
            reset_peak_memory(device)
            seconds = time_forward(net, slices, b, dtype, repeats)
            rows.append({"variant": variant, "batch_size": b, "amp_dtype": dtype, "seconds": seconds,
                         "peak_memory_bytes": peak_memory(device)[0] if cuda else None})
    forward_rate = baseline_rate = None
    for row in rows:
        row["amp_dtype"] = None if row["amp_dtype"] is None else str(row["amp_dtype"]).replace("torch.", "")
        row["slices"] = n * repeats
        row["slices_per_s"] = n * repeats / row["seconds"]
        row["achieved_tflops"] = flops_per_slice * row["slices_per_s"] / 1e12
        forward_rate = row["slices_per_s"] if row["variant"] == "forward" else forward_rate
        baseline_rate = row["slices_per_s"] if row["variant"] == "baseline_fp32_b1" else baseline_rate
    for row in rows:
        row["ratio_vs_forward"] = row["slices_per_s"] / forward_rate
        row["ratio_vs_baseline"] = row["slices_per_s"] / baseline_rate
    notes = ["end_to_end: convert_volume (read, preprocess, infer, QA, invert, write) of one phantom CT volume "
             "after one untimed warm-up conversion; end_to_end_map: the same with the disagreement map",
             "forward / baseline: the generator alone on the same preprocessed slices, already on the device",
             "FLOPs: torch.utils.flop_counter (matmul/conv, 2 per multiply-add) of one slice's forward"]
    if not cuda:
        notes.append("CPU: AMP is off by design (autocast only on CUDA): forward and end_to_end run fp32")
    if cuda:
        notes.append("peak_memory_bytes: torch.cuda.max_memory_allocated per variant")
    memory, kind = peak_memory(torch.device("cpu"))
    # end_to_end_map over end_to_end: the median of the rounds' ratios (each round runs both, back to back)
    map_cost = float(np.median(np.divide(rows[1]["round_seconds"], rows[0]["round_seconds"])))
    report = {"benchmark": "convert", "quick": args.quick, "demo": args.demo, "map_cost_ratio": map_cost,
              "machine": machine,
              "settings": {"model": model, "image_size": size, "volume_shape": [size, size, depth],
                           "slices": n, "batch_size": batch, "repeats": repeats, "amp": args.amp},
              "flops_per_slice": flops_per_slice, "process_peak_rss_bytes": memory, "results": rows, "notes": notes}
    path = write_json(report, args.output)
    print(f"{machine['cpu']} ({machine['cpu_count']} cores), {machine['accelerator'] or 'no GPU'}, torch "
          f"{machine['torch']}, {machine['date']}, load {machine['load_average_1_5_15']}")
    print(f"{model}; {n} slices of {size} x {size}; {flops_per_slice / 1e9:.4g} GFLOP per slice")
    print(format_table(rows, [("variant", "variant"), ("batch_size", "batch"), ("amp_dtype", "amp"),
                              ("slices_per_s", "slices/s"), ("ratio_vs_forward", "x forward"),
                              ("ratio_vs_baseline", "x fp32 b1"), ("achieved_tflops", "TFLOP/s")]))
    for row in rows[:2]:
        print(f"{row['variant']}, seconds per volume: "
              + ", ".join(f"{k} {v:.2f}" for k, v in row["timings_per_volume_s"].items()))
    print(f"with the map / without: {map_cost:.2f} x end to end (median of {repeats} interleaved rounds); "
          f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
