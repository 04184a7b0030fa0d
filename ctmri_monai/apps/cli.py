"""The ``ctmri`` console command: the common jobs without writing bundle overrides."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ctmri_monai import DIRECTIONS
from ctmri_monai.apps.reproduce import add_reproduce_arguments, main_reproduce
from ctmri_monai.convert.cli import add_convert_arguments, main_convert
from ctmri_monai.node.cli import add_jobs_arguments, add_serve_arguments, main_jobs, main_serve
from ctmri_monai.utils.quiet import quiet_known_warnings


def _make_phantoms(args: argparse.Namespace) -> int:
    from ctmri_monai.phantoms import make_phantoms

    report = make_phantoms(args.output_dir, subjects=args.subjects, seed=args.seed, lesions=args.lesions)
    print(f"phantoms written to {args.output_dir}: {report}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from ctmri_monai.apps.bundle_paths import parse_override, run_bundle

    try:
        overrides = dict(parse_override(o) for o in args.set)
    except ValueError as exc:
        raise SystemExit(f"ctmri train: error: {exc}") from exc
    overrides.update(dataset_dir=args.dataset_dir, output_dir=args.output_dir)
    run_bundle("train", **overrides)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ctmri_monai.apps.demo import run_demo

    return run_demo(args.output_dir, minutes=args.minutes, subjects=args.subjects)


def _export(args: argparse.Namespace) -> int:
    from ctmri_monai.networks.export import export_generator

    try:
        contract = export_generator(args.checkpoint, args.direction, args.format, args.output)
    except (ValueError, OSError) as exc:
        print(f"ctmri export: error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {args.direction} generator of {args.checkpoint} ({contract['source_sha256'][:12]}) as "
          f"{args.format} to {args.output}, with its contract")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctmri", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="phantoms -> short training -> FID -> volume conversion with QA, on CPU")
    p.add_argument("--output-dir", default="demo_output")
    p.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    p.add_argument("--subjects", type=int, default=8)
    p.set_defaults(func=_demo)

    p = sub.add_parser("make-phantoms", help="write synthetic paired CT/MRI head phantoms (NIfTI, DICOM, PNG)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--subjects", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lesions", action="store_true",
                   help="CT domain with bleeds only, MRI domain with masses only (as in the paper's data); "
                        "held-out subjects stay paired (heldout/ct, heldout/mri)")
    p.set_defaults(func=_make_phantoms)

    p = sub.add_parser("train", help="train CycleGAN with bundle/configs/train.yaml")
    p.add_argument("--dataset-dir", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="bundle override, e.g. --set ngf=16 --set image_size=128 (repeatable)")
    p.set_defaults(func=_train)

    p = sub.add_parser("export", help="write one generator as ONNX or TorchScript with its contract inside")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint .pt written by training")
    p.add_argument("--direction", required=True, choices=sorted(DIRECTIONS))
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    p.add_argument("--output", required=True, help="the file to write (.onnx or .ts)")
    p.set_defaults(func=_export)

    # commands whose arguments live beside their entry point: (name, help, add its arguments, run it)
    for name, text, add_arguments, run in (
        ("reproduce", "train ResNet-9 and U-Net with one time budget each; the paper's FID table",
         add_reproduce_arguments, main_reproduce),
        ("convert", "convert NIfTI / DICOM volumes slice-wise with a trained generator", add_convert_arguments,
         main_convert),
        ("serve", "a DICOM node: receive series by C-STORE, convert, send the results on", add_serve_arguments,
         main_serve),
        ("jobs", "the journal of a node's spool folder", add_jobs_arguments, main_jobs),
    ):
        p = sub.add_parser(name, help=text)
        add_arguments(p)
        p.set_defaults(func=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    quiet_known_warnings()
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
