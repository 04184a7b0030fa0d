"""``ctmri serve`` (the DICOM node) and ``ctmri jobs`` (its journal): arguments and entry points."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import signal
import sys
import threading
from typing import Any

from ctmri_monai import DIRECTIONS
from ctmri_monai.convert.cli import (
    CHECKPOINT_HELP,
    add_contract_arguments,
    add_disagreement_argument,
    add_engine_arguments,
    contract_overrides,
    run_options,
)

__all__ = ["add_jobs_arguments", "add_serve_arguments", "format_jobs", "main_jobs", "main_serve"]


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``ctmri serve``."""
    parser.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    parser.add_argument("--spool", required=True, help="folder for received instances, results and the journal")
    parser.add_argument("--aet", default="CTMRI", help="the node's AE title (default CTMRI)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=11112)
    parser.add_argument("--allow-aet", action="append", default=[], metavar="AET",
                        help="calling AE title allowed to connect (repeatable); required unless --host is loopback")
    parser.add_argument("--destination", default=None, metavar="AET@HOST:PORT",
                        help="where derived series are sent by C-STORE (e.g. ORTHANC@127.0.0.1:4242)")
    parser.add_argument("--idle-seconds", type=float, default=30.0,
                        help="a series is complete this long after its last instance (or at association release)")
    parser.add_argument("--direction", choices=sorted(DIRECTIONS), default=None,
                        help="force one direction (default: from each series' Modality, CT->MR, MR->CT)")
    parser.add_argument("--device", default="auto", help="cuda, cuda:1, cpu, or auto (default)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per generator call")
    parser.add_argument("--retry-seconds", type=float, default=2.0,
                        help="first delay before a failed delivery is retried (doubles up to --max-retry-seconds)")
    parser.add_argument("--max-retry-seconds", type=float, default=300.0)
    parser.add_argument("--senders", type=int, default=4,
                        help="derived series delivered side by side (default 4; a PACS stores them in parallel)")
    add_engine_arguments(parser)
    add_disagreement_argument(parser)
    return add_contract_arguments(parser)


def add_jobs_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``ctmri jobs``."""
    parser.add_argument("spool", help="the spool folder of a node")
    parser.add_argument("--json", action="store_true", help="machine-readable rows")
    return parser


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main_serve(args: argparse.Namespace) -> int:
    """Run the node until SIGTERM / SIGINT; then finish the conversion under way and exit 0."""
    from ctmri_monai.convert import ConversionService
    from ctmri_monai.node.sender import Destination
    from ctmri_monai.node.server import Node, NodeConfig
    from ctmri_monai.node.spool import Spool

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its debug dumps would show patient fields
    from pynetdicom import _config as netconfig

    netconfig.LOG_REQUEST_IDENTIFIERS = netconfig.LOG_RESPONSE_IDENTIFIERS = False  # no query identifiers either
    if not args.allow_aet and not _is_loopback(args.host):
        print("ctmri serve: error: listening beyond this machine needs --allow-aet (the callers allowed)",
              file=sys.stderr)
        return 2
    try:
        destination = Destination.parse(args.destination) if args.destination else None
        service = ConversionService.from_checkpoint(args.checkpoint, run_options(args),
                                                    contract_overrides=contract_overrides(args))
    except (ValueError, OSError, ImportError) as exc:  # ImportError: an engine not installed
        print(f"ctmri serve: error: {exc}", file=sys.stderr)
        return 2
    config = NodeConfig(aet=args.aet, host=args.host, port=args.port, allow_aet=tuple(args.allow_aet),
                        destination=destination, idle_seconds=args.idle_seconds, direction=args.direction,
                        retry_seconds=args.retry_seconds, max_retry_seconds=args.max_retry_seconds,
                        senders=args.senders)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    node = Node(service, Spool(args.spool), config).start()
    print(f"ctmri serve: {config.aet} listening on {config.host}:{node.port}", flush=True)
    while not done.wait(0.5):
        pass
    node.stop()
    return 0


def format_jobs(rows: list[dict[str, Any]]) -> str:
    """The journal as a plain-text table."""
    from ctmri_monai.convert.trust import flagged_cell

    header = f"{'status':<10} {'mod':<4} {'inst':>4} {'dir':<7} {'sec':>6} {'flagged':>7}  series -> output  reason"
    lines = [header, "-" * len(header)]
    for r in rows:
        sec = (r["converted_at"] or 0) - (r["completed_at"] or 0) if r["converted_at"] else None
        lines.append(f"{r['status']:<10} {r['modality'] or '-':<4} {r['instances']:>4} {r['direction'] or '-':<7} "
                     f"{'-' if sec is None else f'{sec:.1f}':>6} {flagged_cell(r.get('disagreement')):>7}  "
                     f"{r['series_uid']} -> "
                     f"{r['output_series_uid'] or '-'}  {r['reason'] or ''}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no series")
    return "\n".join(lines)


def main_jobs(args: argparse.Namespace) -> int:
    """Print a spool's journal (``--json``: one JSON list of rows)."""
    from pathlib import Path

    from ctmri_monai.node.journal import Journal

    path = Path(args.spool) / "journal.sqlite"
    if not path.exists():
        print(f"ctmri jobs: error: {path}: no journal (not a node's spool folder)", file=sys.stderr)
        return 2
    journal = Journal(path)
    rows = journal.rows()
    journal.close()
    print(json.dumps(rows, indent=1) if args.json else format_jobs(rows))
    return 0
