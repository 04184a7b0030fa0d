"""Reproduce the paper's table: ResNet-9 and U-Net CycleGANs trained with one time budget each, FID/KID both ways.

Everything runs through the MONAI Bundle (``train.yaml``, then ``train.yaml`` + ``evaluate.yaml``); this module
only chooses the overrides, reads what the runs wrote (results, checkpoints, TensorBoard timestamps) and writes
``OUT/table.md``, ``OUT/results.json`` and ``OUT/samples_<backbone>.png`` beside the per-backbone runs
``OUT/<backbone>/``. Every run shares one cache of the real images' FID features, ``OUT/fid_cache``: the feature
network runs on the real validation / test images once in the whole reproduction (and not again when it is
repeated into the same OUT).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ctmri_monai.apps.bundle_paths import bundle_root, parse_override, run_bundle

logger = logging.getLogger(__name__)

PAPER_EPOCHS = 200
PAPER_IMAGE_SIZE = 256
PAPER_NGF = 64
# Kim, Kwon, Choi, "CycleGAN-Based Bidirectional Conversion of Brain CT and MRI Scans": Table of FID and params.
PAPER: dict[str, dict[str, Any]] = {
    "resnet": {"label": "ResNet-9", "fid_ct2mri": 58.32, "fid_mri2ct": 71.41, "params_m": 11.4},
    "unet": {"label": "U-Net-256", "fid_ct2mri": 95.19, "fid_mri2ct": 90.47, "params_m": 54.4},
}
BACKBONES = tuple(PAPER)
# Keys that evaluate.yaml takes from the checkpoint's model_spec: never passed to the evaluation run.
CHECKPOINT_KEYS = frozenset({"backbone", "ngf", "n_blocks", "num_downs", "image_size", "size_policy", "ct_window",
                             "mri_percentiles", "pixdim", "context_slices", "layout"})
# Keys that only make sense for training: not passed to the evaluation run either.
TRAIN_ONLY_KEYS = frozenset({"budget_minutes", "resume", "batch_size", "ndf", "n_blocks", "num_downs", "n_epochs",
                             "n_epochs_decay", "lr", "lambda_structure"})
#: Folder (in OUT) of the real images' FID features that every training and evaluation run shares.
FID_CACHE = "fid_cache"


@dataclass
class ReproduceConfig:
    """What ``reproduce`` runs; ``overrides`` are extra bundle ``key=value`` overrides for every run."""

    dataset_dir: str
    output_dir: str
    budget_minutes: float = 12.0
    image_size: int = PAPER_IMAGE_SIZE
    ngf: int = PAPER_NGF
    device: str | None = None
    batch_size: int = 1
    backbones: Sequence[str] = BACKBONES
    fid_features: str = "inception"
    num_workers: int = 2
    threads: int | None = None
    overwrite: bool = False
    dataset_card: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


def unet_num_downs(image_size: int) -> int:
    """U-Net levels: the largest n <= 8 with ``image_size`` divisible by 2**n (8 at 256, 7 at 128, 5 at 32)."""
    n = 0
    while n < 8 and image_size % 2 ** (n + 1) == 0:
        n += 1
    if n < 1:
        raise ValueError(f"image size {image_size} is odd: a U-Net needs it divisible by 2 at least once")
    return n


def device_override(device: str | None) -> dict[str, str]:
    """The bundle's ``device`` entry for a device name ("cpu", "cuda", "cuda:1"), or nothing for the default."""
    if not device:
        return {}
    import torch

    return {"device": f"$torch.device('{torch.device(device)}')"}


def device_description(device: str) -> str:
    """A readable name of the device a run used, e.g. "cuda:0 (NVIDIA H100 80GB HBM3)" or "cpu (2 cores)"."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(dev)})"
    if dev.type == "cpu":
        return f"cpu ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    return device


def paper_card(dataset_dir: str | os.PathLike, card: str | os.PathLike | None = None) -> str | None:
    """The dataset card to train with: ``card`` when given; none when ``dataset_dir`` has its own dataset.json;
    else the card the project ships for the paper's Kaggle set (CT PNGs exported with level 40 / width 120)."""
    if card is not None or (Path(dataset_dir) / "dataset.json").is_file():
        return None if card is None else str(card)
    shipped = bundle_root() / "datasets" / "ct-to-mri-cgan" / "dataset.json"
    logger.info("%s has no dataset.json: using the paper data's card %s", dataset_dir, shipped)
    return str(shipped)


def fid_cache_dir(cfg: ReproduceConfig) -> str:
    """The FID feature cache every run of the reproduction shares (the bundle's ``fid_cache_dir``)."""
    return str(Path(cfg.output_dir) / FID_CACHE)


def _card_override(cfg: ReproduceConfig) -> dict[str, Any]:
    card = paper_card(cfg.dataset_dir, cfg.dataset_card)
    return {} if card is None else {"dataset_card": card}


def train_overrides(cfg: ReproduceConfig, backbone: str) -> dict[str, Any]:
    """Bundle overrides of the training run of ``backbone`` (user overrides win)."""
    out = Path(cfg.output_dir) / backbone
    overrides: dict[str, Any] = {
        "dataset_dir": str(cfg.dataset_dir), "output_dir": str(out), "backbone": backbone,
        "budget_minutes": cfg.budget_minutes, "resume": False, "image_size": cfg.image_size, "ngf": cfg.ngf,
        "ndf": cfg.ngf, "batch_size": cfg.batch_size, "fid_features": cfg.fid_features,
        "num_workers": cfg.num_workers, "fid_cache_dir": fid_cache_dir(cfg), **device_override(cfg.device),
        **_card_override(cfg), "lambda_structure": 0.0,  # the paper's method (the bundle adds a structure loss)
    }
    if backbone == "unet":
        overrides["num_downs"] = unet_num_downs(cfg.image_size)
    return overrides | dict(cfg.overrides)


def evaluate_overrides(cfg: ReproduceConfig, backbone: str, checkpoint: Path) -> dict[str, Any]:
    """Bundle overrides of the evaluation run (architecture and image size come from the checkpoint)."""
    user = {k: v for k, v in cfg.overrides.items() if k not in CHECKPOINT_KEYS | TRAIN_ONLY_KEYS}
    return {"dataset_dir": str(cfg.dataset_dir), "output_dir": str(Path(cfg.output_dir) / backbone),
            "checkpoint": str(checkpoint), "fid_features": cfg.fid_features, "num_workers": cfg.num_workers,
            "fid_cache_dir": fid_cache_dir(cfg), **device_override(cfg.device), **_card_override(cfg)} | user


def training_throughput(tensorboard_dir: Path, tag: str = "loss_G") -> tuple[int, float] | None:
    """(iterations, seconds) between the first and the last logged training iteration, from TensorBoard events.

    Excludes bundle start-up and the work after the last iteration (final validation, checkpoint); None when
    the events are missing.
    """
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    if not tensorboard_dir.is_dir():
        return None
    acc = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return None
    events = acc.Scalars(tag)
    if len(events) < 2 or events[-1].wall_time <= events[0].wall_time:
        return None
    return events[-1].step - events[0].step, events[-1].wall_time - events[0].wall_time


def checkpoint_summary(path: Path) -> dict[str, Any]:
    """Epochs and iterations done, planned epochs, and the generators' LR factor at the last iteration."""
    from ctmri_monai.io.checkpoint_file import load_checkpoint
    from ctmri_monai.spec import ModelSpec

    data = load_checkpoint(path)
    trainer, network = data.get("trainer", {}), ModelSpec.from_state(data.get("model_spec")).network
    iterations, epoch_length = int(trainer.get("iteration", 0)), int(trainer.get("epoch_length") or 1)
    summary: dict[str, Any] = {
        "iterations": iterations, "epoch_length": epoch_length, "epochs": round(iterations / epoch_length, 2),
        "planned_epochs": int(trainer.get("max_epochs", 0)),
        "n_blocks": network.n_blocks, "num_downs": network.num_downs,
    }
    sched = data.get("g_scheduler", {})
    rule = (sched.get("lr_lambdas") or [None])[0]
    if isinstance(rule, Mapping) and "constant_iters" in rule:
        from ctmri_monai.engines.schedule import LinearDecayRule

        planned = int(rule["constant_iters"]) + int(rule["decay_iters"])
        summary["planned_iterations"] = planned
        summary["lr_factor_last_iteration"] = LinearDecayRule(rule["constant_iters"], rule["decay_iters"])(
            max(0, iterations - 1))
    return summary


def _prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{run_dir} is not empty: choose another --output-dir or pass --overwrite")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def run_backbone(cfg: ReproduceConfig, backbone: str) -> dict[str, Any]:
    """Train ``backbone`` within the budget, evaluate it, and return its row of the table."""
    if backbone not in PAPER:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {BACKBONES}")
    out, run_dir = Path(cfg.output_dir), Path(cfg.output_dir) / backbone
    _prepare_run_dir(run_dir, cfg.overwrite)
    overrides = train_overrides(cfg, backbone)
    logger.info("training %s for %.2f min into %s", backbone, cfg.budget_minutes, run_dir)
    start = time.perf_counter()
    run_bundle("train", **overrides)
    train_seconds = time.perf_counter() - start

    ckpt_dir = run_dir / "checkpoints"
    final = ckpt_dir / "final.pt"
    checkpoint = ckpt_dir / "best.pt" if (ckpt_dir / "best.pt").is_file() else final
    logger.info("evaluating %s (%s)", backbone, checkpoint.name)
    run_bundle(["train", "evaluate"], **evaluate_overrides(cfg, backbone, checkpoint))
    result = json.loads((run_dir / "evaluation" / "results.json").read_text())

    summary = checkpoint_summary(final)
    batch_size = int(overrides["batch_size"])
    timed = training_throughput(run_dir / "tensorboard")
    iterations, seconds = timed if timed else (summary["iterations"], train_seconds)
    samples = run_dir / "samples" / "samples_latest.png"
    row: dict[str, Any] = {
        "backbone": backbone, "label": _label(backbone, summary),
        "fid_ct2mri": result["fid_ct2mri"], "fid_mri2ct": result["fid_mri2ct"],
        "kid_ct2mri": result["kid_ct2mri"], "kid_mri2ct": result["kid_mri2ct"], "params_m": result["params_m"],
        "epochs": summary["epochs"], "planned_epochs": summary["planned_epochs"],
        "iterations": summary["iterations"], "minutes": round(train_seconds / 60, 2),
        "budget_minutes": cfg.budget_minutes, "images_per_s": round(iterations * batch_size / seconds, 2),
        "throughput_basis": "tensorboard iteration timestamps" if timed else "train call wall clock",
        "device": device_description(result.get("device") or cfg.device or "cpu"),
        "image_size": int(overrides["image_size"]), "ngf": int(overrides["ngf"]), "ndf": int(overrides["ndf"]),
        "batch_size": batch_size, "depth": _depth(backbone, summary),
        "lr_factor_last_iteration": summary.get("lr_factor_last_iteration"),
        "checkpoint": str(checkpoint), "eval_split": _eval_split(cfg.dataset_dir),
        "n_test_ct": result["n_test_ct"], "n_test_mri": result["n_test_mri"],
        "fid_features": cfg.fid_features, "paper": dict(PAPER[backbone], epochs=PAPER_EPOCHS),
    }
    if samples.is_file():
        shutil.copyfile(samples, out / f"samples_{backbone}.png")
        row["samples"] = f"samples_{backbone}.png"
    return row


def _depth(backbone: str, summary: Mapping[str, Any]) -> str:
    return f"{summary['n_blocks']} blocks" if backbone == "resnet" else f"num_downs {summary['num_downs']}"


def _label(backbone: str, summary: Mapping[str, Any]) -> str:
    """The reference's names: ResNet-<blocks>, U-Net-<2**num_downs> (U-Net-256 = 8 levels)."""
    return f"ResNet-{summary['n_blocks']}" if backbone == "resnet" else f"U-Net-{2 ** int(summary['num_downs'])}"


def _eval_split(dataset_dir: str | Path) -> str:
    from ctmri_monai.data import effective_split

    return "testA/testB" if effective_split(dataset_dir, "test") == "test" else "the validation split of trainA/trainB"


def reduced_reasons(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why these runs are not the paper's configuration (empty when they are)."""
    reasons: list[str] = []
    for row in rows:
        label = row["label"]
        if row["image_size"] < PAPER_IMAGE_SIZE:
            reasons.append(f"{label}: image size {row['image_size']} (paper {PAPER_IMAGE_SIZE})")
        if row["ngf"] < PAPER_NGF:
            reasons.append(f"{label}: ngf {row['ngf']} (paper {PAPER_NGF})")
        if row["backbone"] == "resnet" and row["depth"] != "9 blocks":
            reasons.append(f"{label}: {row['depth']} (paper 9)")
        if row["backbone"] == "unet" and row["depth"] != "num_downs 8":
            reasons.append(f"{label}: {row['depth']} (paper U-Net-256: num_downs 8)")
        if row["epochs"] < PAPER_EPOCHS:
            reasons.append(f"{label}: {row['epochs']:g} epochs in a {row['budget_minutes']:g} min budget "
                           f"(paper {PAPER_EPOCHS})")
    if rows and rows[0]["fid_features"] != "inception":
        reasons.append(f"FID/KID on '{rows[0]['fid_features']}' features: not comparable to published FID")
    return reasons


def _fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


TABLE_COLUMNS = ("backbone", "FID CT->MRI", "paper", "FID MRI->CT", "paper", "params (M)", "paper",
                 "KID CT->MRI", "KID MRI->CT", "epochs (paper 200)", "minutes", "images/s", "device",
                 "image size", "ngf", "depth")


def table_row(row: Mapping[str, Any]) -> list[str]:
    paper = row["paper"]
    return [row["label"], _fmt(row["fid_ct2mri"]), _fmt(paper["fid_ct2mri"]), _fmt(row["fid_mri2ct"]),
            _fmt(paper["fid_mri2ct"]), _fmt(row["params_m"]), _fmt(paper["params_m"], 1),
            _fmt(row["kid_ct2mri"], 4), _fmt(row["kid_mri2ct"], 4), f"{row['epochs']:g}", _fmt(row["minutes"]),
            _fmt(row["images_per_s"], 1), row["device"], str(row["image_size"]), str(row["ngf"]), row["depth"]]


def markdown_report(report: Mapping[str, Any]) -> str:
    """``table.md``: the paper's table with our numbers beside the published ones."""
    rows = report["rows"]
    lines = ["# CycleGAN brain CT <-> MRI: reproduction of Kim, Kwon, Choi", "",
             f"Dataset: `{report['dataset_dir']}`, evaluated on {rows[0]['eval_split']} "
             f"({rows[0]['n_test_ct']} CT, {rows[0]['n_test_mri']} MRI images). FID/KID features: "
             f"{report['fid_features']}. Date: {report['date']}.", "",
             "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(table_row(r)) + " |" for r in rows]
    lines.append("")
    if report["reduced"]:
        lines += ["**Reduced run** (not the paper's configuration; the published numbers are not expected):", ""]
        lines += [f"- {reason}" for reason in report["reduced_reasons"]]
    else:
        lines.append("Full configuration: 256 x 256, ngf 64, at least 200 epochs.")
    lines += ["", "Params: one generator, 1-channel images (the paper's counts are for 3-channel images). Minutes: "
              "wall clock of the training call (the budget counts from its first iteration); images/s over the "
              "training iterations. Epochs: iterations done / iterations per epoch.", ""]
    lines += [f"![{r['label']} samples]({r['samples']})" for r in rows if r.get("samples")]
    return "\n".join(lines) + "\n"


def reproduce(cfg: ReproduceConfig) -> dict[str, Any]:
    """Train and evaluate every backbone of ``cfg``; write ``table.md`` and ``results.json``; return the report."""
    from ctmri_monai.io.atomic import atomic_write_json, atomic_write_text

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    rows = [run_backbone(cfg, b) for b in cfg.backbones]
    reasons = reduced_reasons(rows)
    report = {"paper": "Kim, Kwon, Choi: CycleGAN-Based Bidirectional Conversion of Brain CT and MRI Scans",
              "date": time.strftime("%Y-%m-%d %H:%M %Z"), "dataset_dir": str(cfg.dataset_dir),
              "fid_features": cfg.fid_features, "config": asdict(cfg) | {"device": cfg.device or "auto"},
              "reduced": bool(reasons),
              "reduced_reasons": reasons, "rows": rows}
    atomic_write_json(out / "results.json", report)
    atomic_write_text(out / "table.md", markdown_report(report))
    return report


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options of ``reproduce_paper.py`` (also usable as a ``ctmri`` sub-command)."""
    parser.add_argument("--dataset-dir", required=True, help="trainA/ trainB/ [testA/ testB/] of 2D images")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--budget-minutes", type=float, default=12.0, help="training budget per backbone")
    parser.add_argument("--image-size", type=int, default=PAPER_IMAGE_SIZE)
    parser.add_argument("--ngf", type=int, default=PAPER_NGF, help="generator (and discriminator) width")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES))
    parser.add_argument("--fid-features", choices=("inception", "random"), default="inception")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is much faster than 2 on a busy 2-core machine)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing OUT/<backbone> runs")
    parser.add_argument("--dataset-card", default=None,
                        help="dataset.json for the images (default: DIR/dataset.json, else the card shipped for the "
                             "paper's Kaggle set)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="extra bundle override for every run, e.g. --set n_blocks=6 (repeatable)")


def main_reproduce(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(o) for o in args.overrides)
    cfg = ReproduceConfig(dataset_dir=args.dataset_dir, output_dir=args.output_dir,
                          budget_minutes=args.budget_minutes, image_size=args.image_size, ngf=args.ngf,
                          device=args.device, batch_size=args.batch_size, backbones=tuple(args.backbones),
                          fid_features=args.fid_features, num_workers=args.num_workers, threads=args.threads,
                          overwrite=args.overwrite, dataset_card=args.dataset_card,
                          overrides=overrides)
    reproduce(cfg)
    print((Path(cfg.output_dir) / "table.md").read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_reproduce_arguments(parser)
    return main_reproduce(parser.parse_args(argv))
