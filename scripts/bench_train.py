#!/usr/bin/env python
"""Training speed: this project's CycleGANTrainer against a plain fp32 PyTorch CycleGAN loop, side by side.

    python scripts/bench_train.py                 # ResNet-9 and U-Net-256 at 256 x 256 (full size)
    python scripts/bench_train.py --quick         # tiny networks at 32 x 32: seconds on a CPU (CI)

The baseline is written here, the way the reference CycleGAN trains: batch 1, fp32, NCHW, the same networks,
losses (LSGAN, cycle 10, identity 0.5), image pools and Adam; on CUDA it sets cudnn.benchmark as the reference
does. The engine runs as the bundle configures it on the device: AMP (bf16, or fp16 + grad scaler) and
channels_last and cuDNN autotuning on CUDA (all three are no-ops or off on a CPU), at the engine batch sizes
asked for. Both read the same pre-made batches already on the device (data loading is not timed), and each
variant runs in a fresh process unless --no-isolate, so CPU peak RSS is per variant. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from typing import Any

import torch
from torch import nn

from ctmri_monai.apps.benchmarking import (
    FlopCount,
    format_table,
    machine_info,
    peak_memory,
    reset_peak_memory,
    resolve_device,
    rss_bytes,
    run_isolated,
    synchronize,
    write_json,
)

FULL = {"image_size": 256, "ngf": 64, "ndf": 64, "n_blocks": 9, "num_downs": 8}
QUICK = {"image_size": 32, "ngf": 4, "ndf": 4, "n_blocks": 1, "num_downs": 5}
BACKBONE_NAMES = {"resnet": "ResNet-9", "unet": "U-Net-256"}
LAMBDA_CYCLE, LAMBDA_IDENTITY, LR, POOL_SIZE = 10.0, 0.5, 2e-4, 50


# ------------------------------------------------------------------------------------ the plain fp32 baseline
class _Pool:
    """The reference image history: below 50 images store and return; then half the time swap with a stored one."""

    def __init__(self, size: int = POOL_SIZE) -> None:
        self.size, self.images = size, []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for image in images:
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif random.random() > 0.5:
                i = random.randrange(self.size)
                out.append(self.images[i].clone())
                self.images[i] = image
            else:
                out.append(image)
        return torch.cat(out, 0)


def _set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad = flag


class BaselineStep:
    """One reference CycleGAN iteration: generators' step (GAN + cycle + identity), then both discriminators."""

    def __init__(self, g_y: nn.Module, g_x: nn.Module, d_x: nn.Module, d_y: nn.Module) -> None:
        self.g_y, self.g_x, self.d_x, self.d_y = g_y, g_x, d_x, d_y
        self.opt_g = torch.optim.Adam(itertools.chain(g_y.parameters(), g_x.parameters()), LR, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(itertools.chain(d_x.parameters(), d_y.parameters()), LR, betas=(0.5, 0.999))
        self.pool_x, self.pool_y = _Pool(), _Pool()
        self.mse, self.l1 = nn.MSELoss(), nn.L1Loss()

    def gan(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        return self.mse(logits, torch.full_like(logits, 1.0 if real else 0.0))

    def __call__(self, real_x: torch.Tensor, real_y: torch.Tensor) -> None:
        _set_requires_grad([self.d_x, self.d_y], False)
        self.opt_g.zero_grad()
        fake_y = self.g_y(real_x)
        rec_x = self.g_x(fake_y)
        fake_x = self.g_x(real_y)
        rec_y = self.g_y(fake_x)
        idt_y, idt_x = self.g_y(real_y), self.g_x(real_x)
        loss_g = (self.gan(self.d_y(fake_y), True) + self.gan(self.d_x(fake_x), True)
                  + LAMBDA_CYCLE * (self.l1(rec_x, real_x) + self.l1(rec_y, real_y))
                  + LAMBDA_CYCLE * LAMBDA_IDENTITY * (self.l1(idt_y, real_y) + self.l1(idt_x, real_x)))
        loss_g.backward()
        self.opt_g.step()
        _set_requires_grad([self.d_x, self.d_y], True)
        self.opt_d.zero_grad()
        for d, real, fake in ((self.d_y, real_y, self.pool_y.query(fake_y.detach())),
                              (self.d_x, real_x, self.pool_x.query(fake_x.detach()))):
            (0.5 * (self.gan(d(real), True) + self.gan(d(fake.detach()), False))).backward()
        self.opt_d.step()


# ------------------------------------------------------------------------------------------- measurement
def _networks(spec: dict[str, Any], backbone: str, device: torch.device) -> list[nn.Module]:
    from ctmri_monai.networks import define_discriminator, define_generator

    torch.manual_seed(0)
    gens = [define_generator(backbone, ngf=spec["ngf"], n_blocks=spec["n_blocks"], num_downs=spec["num_downs"])
            for _ in range(2)]
    discs = [define_discriminator(ndf=spec["ndf"]) for _ in range(2)]
    return [n.to(device) for n in gens + discs]


def _batches(n: int, batch: int, size: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{d: (torch.rand(batch, 1, size, size, generator=g) * 2 - 1).to(device) for d in ("ct", "mri")}
            for _ in range(n)]


def measure(task: dict[str, Any]) -> dict[str, Any]:
    """One variant: ``warmup`` untimed iterations (FLOPs counted in the first), then ``iterations`` timed."""
    if task.get("threads"):
        torch.set_num_threads(int(task["threads"]))
    device, spec, variant = torch.device(task["device"]), task["spec"], task["variant"]
    random.seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the reference sets it; the engine's configure_backends too
    nets = _networks(spec, task["backbone"], device)
    start, total = task["warmup"], task["warmup"] + task["iterations"]
    batches = _batches(total, task["batch_size"], spec["image_size"], device)
    flops, times = FlopCount(), {}
    count = start >= 1 and not task["compile"]  # FLOPs of the first warm-up iteration, as a cross-check
    reset_peak_memory(device)
    setup_rss = rss_bytes()

    def mark(i: int) -> None:  # called after iteration i (1-based); i == 0: before the first
        if i == start or i == total:
            synchronize(device)
            times[i] = time.perf_counter()

    if variant == "baseline":
        step = BaselineStep(*nets)
        mark(0)
        for i, b in enumerate(batches, 1):
            if i == 1 and count:
                with flops:
                    step(b["ct"], b["mri"])
            else:
                step(b["ct"], b["mri"])
            mark(i)
        amp_dtype, channels_last = None, False
    else:
        from ignite.engine import Events

        from ctmri_monai.engines import CycleGANTrainer
        from ctmri_monai.engines.pool import ImagePool
        from ctmri_monai.utils.amp import autocast_dtype
        from ctmri_monai.utils.speed import configure_backends, maybe_compile

        configure_backends(device, True)
        for net in nets:
            maybe_compile(net, task["compile"])
        g_y, g_x, d_x, d_y = nets
        opt_g = torch.optim.Adam(itertools.chain(g_y.parameters(), g_x.parameters()), LR, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(itertools.chain(d_x.parameters(), d_y.parameters()), LR, betas=(0.5, 0.999))
        trainer = CycleGANTrainer(device, 1, batches, g_y, g_x, d_x, d_y, opt_g, opt_d, lambda_cycle=LAMBDA_CYCLE,
                                  lambda_identity=LAMBDA_IDENTITY, pool_ct=ImagePool(POOL_SIZE, seed=0),
                                  pool_mri=ImagePool(POOL_SIZE, seed=1), amp=task["amp"],
                                  channels_last=task["channels_last"])
        if count:
            trainer.add_event_handler(Events.ITERATION_STARTED(once=1), flops.start)
            trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), flops.stop)
        trainer.add_event_handler(Events.STARTED, lambda e: mark(0))
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: mark(e.state.iteration))
        trainer.run()
        amp_dtype, channels_last = autocast_dtype(device, task["amp"]), task["channels_last"]
    seconds = times[total] - times[start]
    memory, memory_kind = peak_memory(device)
    return {"flops_per_iteration_measured": flops.total, "seconds": seconds, "peak_memory_bytes": memory,
            "memory_kind": memory_kind, "setup_rss_bytes": setup_rss if device.type == "cpu" else None,
            "amp_dtype": None if amp_dtype is None else str(amp_dtype).replace("torch.", ""),
            "channels_last": channels_last}


def count_flops_per_image(spec: dict[str, Any], backbone: str) -> int:
    """FLOPs of one batch-1 baseline iteration, counted on the meta device (shapes only, no arithmetic).

    The engine does the same math per image (instance norm keeps images independent), so an engine iteration
    at batch B costs B times this; the first warm-up iteration of each variant measures it again on the device.
    """
    meta = torch.device("meta")
    step = BaselineStep(*_networks(spec, backbone, meta))
    batch = _batches(1, 1, spec["image_size"], meta)[0]
    with FlopCount() as flops:
        step(batch["ct"], batch["mri"])
    return int(flops.total or 0)


def variants(device: torch.device, batch_sizes: list[int], compile_too: bool) -> list[dict[str, Any]]:
    """Baseline, then the engine as configured on this device (plus fp32 and batch-size variants on CUDA)."""
    cuda = device.type == "cuda"
    out = [{"variant": "baseline", "batch_size": 1, "amp": False, "channels_last": False, "compile": False}]
    if cuda:
        out.append({"variant": "engine_fp32", "batch_size": 1, "amp": False, "channels_last": False,
                    "compile": False})
    for b in batch_sizes:
        out.append({"variant": "engine", "batch_size": b, "amp": True, "channels_last": cuda, "compile": False})
    if compile_too:
        out.append({"variant": "engine_compiled", "batch_size": batch_sizes[-1], "amp": True, "channels_last": cuda,
                    "compile": True})
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny networks at 32 x 32, in-process: seconds on a CPU")
    p.add_argument("--backbones", nargs="+", default=["resnet", "unet"], choices=sorted(BACKBONE_NAMES))
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default)")
    p.add_argument("--image-size", type=int, default=None, help="default 256 (32 with --quick)")
    p.add_argument("--iterations", type=int, default=None, help="timed iterations (default 1 CPU, 50 CUDA, 3 quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed iterations first (default 0 CPU, 10 CUDA, 1 quick)")
    p.add_argument("--engine-batch-sizes", type=int, nargs="+", default=None,
                   help="engine batch sizes (default 1 on CPU, 1 and 8 on CUDA); the baseline always uses 1")
    p.add_argument("--compile", action="store_true", help="also time the engine with torch.compile (slow start)")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="one fresh process per variant (default: on, off with --quick)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's choice)")
    p.add_argument("--output", default="bench_train.json", help="JSON output file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    spec = dict(QUICK if args.quick else FULL)
    if args.image_size:
        spec["image_size"] = args.image_size
    # a full-size CPU iteration takes 19-21 s (ResNet-9) on 2 cores: one timed iteration, no warm-up
    iterations = args.iterations or (3 if args.quick else 50 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 10 if cuda else 0)
    batch_sizes = args.engine_batch_sizes or ([1, 8] if cuda and not args.quick else [1])
    isolate = (not args.quick) if args.isolate is None else args.isolate
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info(device)
    rows = []
    for backbone in args.backbones:
        flops_per_image = count_flops_per_image(spec, backbone)
        for v in variants(device, batch_sizes, args.compile):
            task = {**v, "backbone": backbone, "spec": spec, "device": str(device), "iterations": iterations,
                    "warmup": warmup, "threads": args.threads}
            print(f"{BACKBONE_NAMES[backbone]:<10} {v['variant']:<16} batch {v['batch_size']} ...", flush=True,
                  file=sys.stderr)
            result = run_isolated(measure, task) if isolate else measure(task)
            its = iterations / result["seconds"]
            flops = flops_per_image * v["batch_size"]
            rows.append({"backbone": BACKBONE_NAMES[backbone], "variant": v["variant"], "batch_size": v["batch_size"],
                         "compiled": v["compile"], "iterations": iterations, **result,
                         "iterations_per_s": its, "images_per_s": its * v["batch_size"],
                         "flops_per_image": flops_per_image, "flops_per_iteration": flops,
                         "achieved_tflops": flops * its / 1e12})
    for row in rows:
        base = next(r for r in rows if r["backbone"] == row["backbone"] and r["variant"] == "baseline")
        row["speedup_images_per_s"] = row["images_per_s"] / base["images_per_s"]
        row["speedup_iterations_per_s"] = row["iterations_per_s"] / base["iterations_per_s"]
        row["memory_ratio"] = row["peak_memory_bytes"] / base["peak_memory_bytes"]
        row["peak_memory_mib"] = row["peak_memory_bytes"] / 2**20
        row["gflops_per_iteration"] = row["flops_per_iteration"] / 1e9
    notes = [
        "baseline: plain fp32 PyTorch loop in this script, batch 1, NCHW; engine: ctmri_monai.engines.CycleGANTrainer",
        "same networks, losses, pools and Adam; both read pre-made batches already on the device (loading not timed)",
        "FLOPs: torch.utils.flop_counter (matmul/conv, forward + backward, 2 per multiply-add) of one batch-1 "
        "baseline iteration on the meta device, times the batch size; flops_per_iteration_measured: the same "
        "counter in the first warm-up iteration of the variant on the device (when there is one)",
        "memory: " + ("torch.cuda.max_memory_allocated per variant" if cuda else
                      "peak RSS (getrusage ru_maxrss) of " + ("a fresh process per variant, incl. Python + libraries"
                                                               if isolate else "the whole benchmark process so far")),
    ]
    if not cuda:
        notes.append("CPU: AMP is off by design (bf16 autocast only on CUDA), channels_last and cuDNN flags unused")
    report = {"benchmark": "train", "quick": args.quick, "machine": machine,
              "settings": {**spec, "iterations": iterations, "warmup": warmup, "engine_batch_sizes": batch_sizes,
                           "isolated": isolate, "lambda_cycle": LAMBDA_CYCLE, "lambda_identity": LAMBDA_IDENTITY,
                           "pool_size": POOL_SIZE, "gan_mode": "lsgan"},
              "results": rows, "notes": notes}
    path = write_json(report, args.output)
    print(f"{machine['cpu']} ({machine['cpu_count']} cores), {machine['accelerator'] or 'no GPU'}, torch "
          f"{machine['torch']}, {machine['date']}, load {machine['load_average_1_5_15']}")
    print(format_table(rows, [("backbone", "network"), ("variant", "variant"), ("batch_size", "batch"),
                              ("amp_dtype", "amp"), ("iterations_per_s", "it/s"), ("images_per_s", "img/s"),
                              ("speedup_images_per_s", "x base img/s"), ("peak_memory_mib", "peak MiB"),
                              ("gflops_per_iteration", "GFLOP/it"), ("achieved_tflops", "TFLOP/s")]))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
