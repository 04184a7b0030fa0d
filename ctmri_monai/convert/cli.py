"""``ctmri convert``: the command-line arguments and entry point of batch conversion."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ctmri_monai import DIRECTIONS
from ctmri_monai.convert.batch import run_batch
from ctmri_monai.convert.cluster.args import add_cluster_arguments, cluster_spec
from ctmri_monai.convert.options import BatchOptions, ConvertOptions, ModelSource
from ctmri_monai.engines.runtimes import ENGINES
from ctmri_monai.spec import FRAME_BY, FRAMINGS

CHECKPOINT_HELP = "checkpoint .pt written by training, or a file from `ctmri export` (.onnx, .ts)"

__all__ = ["CHECKPOINT_HELP", "add_contract_arguments", "add_convert_arguments", "add_disagreement_argument",
           "add_engine_arguments", "contract_overrides", "main_convert", "run_options"]


def add_convert_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``ctmri convert``."""
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="NIfTI/.mha/.nrrd files, DICOM series folders, folders of those, or .txt lists")
    parser.add_argument("--direction", choices=sorted(DIRECTIONS),
                        help="required for files; with --dicomweb the default is each series' Modality")
    parser.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    parser.add_argument("--output-dir", help="required for files")
    parser.add_argument("--dicomweb", metavar="URL", default=None,
                        help="a DICOMweb service (or file:///folder): retrieve --study by WADO-RS, store the "
                             "derived series back by STOW-RS")
    parser.add_argument("--study", metavar="UID", default=None, help="StudyInstanceUID to convert (--dicomweb)")
    parser.add_argument("--series", metavar="UID", default=None,
                        help="only this SeriesInstanceUID of --study (--dicomweb; default: every CT and MR series)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="slices per generator call (default: 16 on CUDA, 1 on the CPU)")
    parser.add_argument("--device", default="auto", help="cuda, cuda:1, cpu, or auto (default)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="mixed precision on CUDA (bf16 where supported)")
    parser.add_argument("--overwrite", action="store_true", help="redo inputs whose output exists")
    parser.add_argument("--dicom", action="store_true",
                        help="also write a synthetic DICOM series for DICOM inputs")
    parser.add_argument("--series-uid", default=None, help="SeriesInstanceUID to use in multi-series folders")
    parser.add_argument("--qa-threshold", type=float, default=0.90,
                        help="flag slices with head-mask Dice below")
    parser.add_argument("--max-voxels", type=int, default=None,
                        help="refuse larger volumes (checked from the header; each voxel takes ~4 bytes as float32)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument("--no-mask-background", dest="mask_background", action="store_false",
                        help="keep what the generator writes outside the input's head mask (default: air there)")
    add_engine_arguments(parser)
    add_disagreement_argument(parser)
    add_cluster_arguments(parser)
    return add_contract_arguments(parser)


def add_engine_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--engine`` and ``--threads`` of every command that converts (README, "On a CPU-only server")."""
    parser.add_argument("--engine", choices=ENGINES, default=None,
                        help="what runs the generator: torch (default for checkpoints and .ts), onnxruntime "
                             "(default for .onnx) or openvino, on the CPU; a checkpoint is exported in memory")
    parser.add_argument("--threads", type=int, default=None,
                        help="the engine's intra-op threads (default: the cores available to this process)")
    return parser


def add_disagreement_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--disagreement`` (off by default; ``--no-disagreement`` is accepted) of every command that converts."""
    parser.add_argument("--disagreement", action=argparse.BooleanOptionalAction, default=False,
                        help="also write the disagreement map <stem>_<direction>_disagreement.nii.gz beside each "
                             "output (1 = most suspect) and its figures in the report; off by default: it costs "
                             "extra forward passes per slice and flags real mistakes little better than chance")
    return parser


def add_contract_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The contract overrides (``--ct-window``, ``--framing``, ``--pixdim``) of every command that converts."""
    contract = parser.add_argument_group("contract overrides (each replaces what the checkpoint recorded; logged)")
    contract.add_argument("--ct-window", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                          help="HU range the CT training images were exported with (level 40 / width 120: -20 100)")
    contract.add_argument("--framing", choices=FRAMINGS, default=None,
                          help="how slices are brought to the model's image size")
    contract.add_argument("--frame-by", choices=FRAME_BY, default=None,
                          help="'fit' models: frame volumes by the head at the training head size (default) or, as "
                               "before, by the field of view")
    contract.add_argument("--pixdim", nargs=2, type=float, metavar=("PX", "PY"), default=None,
                          help="in-plane mm of the 'spacing' framing")
    return parser


def contract_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The contract overrides given on the command line (only those set)."""
    given = {k: getattr(args, k, None) for k in ("ct_window", "framing", "pixdim", "frame_by")}
    return {k: v for k, v in given.items() if v is not None}


def run_request(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments of `ConvertOptions.for_run` that a command's flags give (a cluster's workers apply them on
    their own devices)."""
    named = {k: getattr(args, k) for k in ("amp", "qa_threshold", "max_voxels", "mask_background", "series_uid")
             if getattr(args, k, None) is not None}
    return dict(device=args.device, engine=getattr(args, "engine", None), batch_size=args.batch_size,
                threads=getattr(args, "threads", None), disagreement=bool(getattr(args, "disagreement", False)),
                **named)


def run_options(args: argparse.Namespace) -> ConvertOptions:
    """The `ConvertOptions` of a command that converts (``ctmri convert``, ``ctmri serve``), through
    `ConvertOptions.for_run`: device, engine, batch size and mixed precision derived once."""
    return ConvertOptions.for_run(model=args.checkpoint, **run_request(args))


def _dicomweb_client(url: str) -> Any:
    """dicomweb-client's HTTP client, or its serverless file client for ``file://`` URLs."""
    if url.startswith("file://"):
        from dicomweb_client import DICOMfileClient

        return DICOMfileClient(url=url, update_db=True)
    from dicomweb_client import DICOMwebClient

    return DICOMwebClient(url=url)


def main_dicomweb(args: argparse.Namespace) -> int:
    """``ctmri convert --dicomweb URL --study UID [--series UID]``: convert through the service, store back."""
    import json

    from ctmri_monai.convert.dicomweb import convert_dicomweb
    from ctmri_monai.convert.service import ConversionService

    if not args.study:
        print("ctmri convert: error: --dicomweb needs --study UID", file=sys.stderr)
        return 2
    try:
        service = ConversionService.from_checkpoint(args.checkpoint, run_options(args),
                                                    contract_overrides=contract_overrides(args))
        records = convert_dicomweb(_dicomweb_client(args.dicomweb), service, args.study, args.series,
                                   args.direction)
    except (ValueError, OSError, ImportError) as exc:  # ImportError: an engine not installed
        print(f"ctmri convert: error: {exc}", file=sys.stderr)
        return 2
    for record in records:
        print(json.dumps(record, default=str))
    return 1 if any(r["status"] != "ok" for r in records) or not records else 0


def main_convert(args: argparse.Namespace) -> int:
    """Run ``ctmri convert`` from parsed arguments; returns the exit status (2: model not loadable)."""
    if getattr(args, "dicomweb", None):
        return main_dicomweb(args)
    missing = [name for name, value in (("INPUT", args.inputs), ("--direction", args.direction),
                                        ("--output-dir", args.output_dir)) if not value]
    if missing:
        print(f"ctmri convert: error: converting files needs {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        model = ModelSource(checkpoint=args.checkpoint, contract_overrides=contract_overrides(args))
        progress = getattr(args, "progress", True)
        cluster = cluster_spec(args)  # None: this process, and no Dask import
        if cluster is not None:
            from ctmri_monai.convert.cluster.run import run_cluster_batch

            options = BatchOptions(overwrite=args.overwrite, dicom=args.dicom, progress=progress)
            return run_cluster_batch(args.inputs, args.output_dir, args.direction, model, cluster, options,
                                     request=run_request(args))
        options = BatchOptions(convert=run_options(args), overwrite=args.overwrite, dicom=args.dicom,
                               progress=progress)
        return run_batch(args.inputs, args.output_dir, args.direction, model, options)
    except (ValueError, OSError, ImportError) as exc:  # engine, checkpoint, arguments: before any input
        print(f"ctmri convert: error: {exc}", file=sys.stderr)
        return 2
