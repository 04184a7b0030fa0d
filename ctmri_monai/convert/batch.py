"""Batch conversion: many NIfTI / DICOM / .mha / .nrrd inputs with one generator, robust to bad files.

Inputs (`ctmri_monai.convert.inputs`): files, folders of volumes and DICOM series, or ``.txt`` lists. Each
input gives ``<stem>_<direction>.nii.gz`` in the output folder (plus, with ``dicom=True`` and DICOM input, a
``<stem>_<direction>_dicom/`` series; with the disagreement map on, ``<stem>_<direction>_disagreement.nii.gz``),
a QA montage in ``qa/``, and a row in ``summary.json``. Finished outputs
are skipped unless ``overwrite``; a failing file is reported and the batch goes on; the exit status is 1 when any
file failed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ctmri_monai import DIRECTIONS
from ctmri_monai.convert.inputs import collect_inputs, output_names
from ctmri_monai.convert.options import BatchOptions, ModelSource
from ctmri_monai.convert.qa import gap_cell
from ctmri_monai.convert.records import conversion_record, failed_record
from ctmri_monai.convert.service import ConversionService
from ctmri_monai.convert.trust import disagreement_path, flagged_cell
from ctmri_monai.io.atomic import atomic_write_json
from ctmri_monai.io.errors import InputError
from ctmri_monai.io.volume import Volume, load_volume
from ctmri_monai.utils.distributed import process_rank, shard_inputs

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------- reporting


def _previous_records(summary: Path) -> dict[str, dict]:
    try:
        data = json.loads(summary.read_text())
        return {r["output"]: r for r in data.get("files", []) if r.get("output")}
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return {}


def status_counts(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many records are ok, flagged, skipped and failed."""
    return {s: sum(r["status"] == s for r in records) for s in ("ok", "flagged", "skipped", "failed")}


def format_table(records: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text summary table: status, shape, seconds, Dice min/mean, domain gap, the disagreement map's
    flagged share of head voxels, file and error."""
    header = f"{'status':<8} {'shape':<16} {'sec':>7} {'dice min':>8} {'mean':>6} {'gap':>13} {'flagged':>7}  file"
    lines = [header, "-" * len(header)]
    for r in records:
        qa = r.get("qa") or {}
        shape = "x".join(str(s) for s in r["shape"]) if r.get("shape") else "-"
        sec = f"{r['seconds']:.1f}" if r.get("seconds") is not None else "-"
        dmin = f"{qa['dice_min']:.3f}" if qa.get("dice_min") is not None else "-"
        dmean = f"{qa['dice_mean']:.3f}" if qa.get("dice_mean") is not None else "-"
        line = (f"{r['status']:<8} {shape:<16} {sec:>7} {dmin:>8} {dmean:>6} {gap_cell(qa.get('gap')):>13} "
                f"{flagged_cell(r.get('disagreement')):>7}  {r['file']}")
        if r.get("error"):
            line += f"\n{'':<8} error: {r['error']}"
        lines.append(line)
    counts = status_counts(records)
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def _progress(total: int, enabled: bool, **kwargs: Any) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, file=sys.stderr, dynamic_ncols=True, **kwargs)


# -------------------------------------------------------------------------------------------------- batch


class _ReadAhead:
    """Loads ``paths`` in order with `load_volume`, one file ahead in a background thread."""

    def __init__(self, paths: Sequence[Path], series_uid: str | None, max_voxels: int | None,
                 enabled: bool = True) -> None:
        self.paths, self.position = list(paths), 0
        self.kwargs = {"series_uid": series_uid, "max_voxels": max_voxels}
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="ctmri-read") if enabled else None
        self.pending: Future | None = None
        self._submit()

    def _submit(self) -> None:
        if self.pool is not None and self.position < len(self.paths):
            self.pending = self.pool.submit(load_volume, self.paths[self.position], **self.kwargs)

    def next(self, path: Path) -> Any:
        """The volume of ``path`` (the next in order); raises what `load_volume` raised for it."""
        if self.position >= len(self.paths) or self.paths[self.position] != path:
            raise RuntimeError(f"read-ahead out of order at {path}")
        future, self.pending = self.pending, None
        self.position += 1
        self._submit()  # start reading the following file before this one is converted
        return future.result() if future is not None else load_volume(path, **self.kwargs)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def run_batch(inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike, direction: str,
              model: ModelSource | ConversionService, options: BatchOptions | None = None) -> int:
    """Convert every input with the generator of ``direction`` ("ct2mri" | "mri2ct"); returns the exit status
    (1 when any input failed, else 0).

    ``model``: a `ModelSource` (a checkpoint or a generator with its contract; the `ConversionService` is built
    once, before anything is written, so a bad model leaves no output folder) or a ready `ConversionService`.
    ``options`` (`BatchOptions`): how the batch runs; its ``convert`` (`ConvertOptions.for_run`) converts each
    volume, and must be None with a ready service, which has its own. Writes ``output_dir/summary.json`` and
    prints a table to ``options.stream``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {tuple(DIRECTIONS)}")
    opts = options or BatchOptions()
    if isinstance(model, ConversionService):
        if opts.convert is not None:
            raise ValueError("BatchOptions.convert does not apply to a ready ConversionService: it converts with "
                             "its own options (build it with them)")
        service = model
    elif isinstance(model, ModelSource):
        service = ConversionService.from_source(model, direction, opts.convert)
    else:
        raise TypeError(f"model must be a ModelSource or a ConversionService, not {type(model).__name__}")
    return convert_batch(service, inputs, output_dir, direction, opts)


@dataclass(frozen=True)
class FileJob:
    """One input of a batch: what is read (``path``), where its NIfTI (``output``), DICOM series (``dicom_dir``)
    and QA montage folder (``qa_dir``) go, or why it cannot be converted (``problem``, from `collect_inputs`)."""

    path: Path
    output: Path
    dicom_dir: Path | None = None
    qa_dir: Path | None = None
    problem: str | None = None


def convert_one(service: ConversionService, job: FileJob, direction: str, *,
                read: Callable[[], Volume] | None = None, progress: Any = None) -> dict[str, Any]:
    """Convert one input with ``service`` and return its summary record (`conversion_record`, or
    `failed_record` naming the file: any error of this file is its record, never raised). ``read``: gives the
    loaded input (e.g. read ahead), else the file is read here; ``progress``: advanced per slice. The batch of
    one process and a worker of a cluster run this same function."""
    head = {"file": str(job.path), "output": str(job.output)}
    if job.problem is not None:
        return {**head, **failed_record(str(job.path), problem=job.problem)}
    t0 = time.perf_counter()
    try:
        volume = read() if read is not None else None
        result = service.convert_file(job.path, job.output, direction, dicom_output_dir=job.dicom_dir,
                                      qa_dir=job.qa_dir, progress=progress, volume=volume)
        del volume
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
        return {**head, **failed_record(str(job.path), exc, seconds=round(time.perf_counter() - t0, 3))}
    return {**head, **conversion_record(result, dicom_output=result["dicom_output"],
                                        dicom_series_uid=result["dicom_series_uid"])}


def skipped_record(job: FileJob, previous: Mapping[str, Any]) -> dict[str, Any]:
    """The record of an input whose outputs exist: what the ``previous`` record of that output said."""
    record: dict[str, Any] = {"file": str(job.path), "output": str(job.output), "status": "skipped",
                              "shape": previous.get("shape"), "seconds": None, "qa": previous.get("qa"),
                              "error": None, "note": "output exists (use overwrite to redo)"}
    if previous.get("disagreement") is not None:
        record["disagreement"] = previous["disagreement"]
    return record


@dataclass
class BatchPlan:
    """A batch laid out before anything is converted: every input's `FileJob` (this rank's share), which of them
    need converting (``todo``: the others are finished), the summary file and the records it held."""

    jobs: list[FileJob]
    todo: set[int]
    summary_path: Path
    previous: dict[str, dict]
    rank: int = 0
    world_size: int = 1


def _finished(job: FileJob, maps: bool, direction: str) -> bool:
    """Whether ``job``'s outputs all exist (its map too when the batch writes maps)."""
    return (job.output.exists() and (job.dicom_dir is None or job.dicom_dir.exists())
            and (not maps or disagreement_path(job.output, direction).exists()))


def plan_batch(service: ConversionService, inputs: Sequence[str | os.PathLike], out_dir: Path, direction: str,
               opts: BatchOptions) -> BatchPlan:
    """The jobs of ``inputs`` into ``out_dir`` (created here; `InputError` when it cannot be), this rank's share
    and which are still to do (all with ``opts.overwrite``)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a file where a parent folder should be
        raise InputError(out_dir, f"cannot create the output folder ({type(exc).__name__}: "
                                       f"{exc.strerror or exc}: {exc.filename})") from exc
    items = collect_inputs(inputs, exclude=[out_dir])
    names = output_names([p for p, _ in items], direction)  # from the full list: the same names on every rank
    env_rank, env_world = process_rank()
    rank = env_rank if opts.rank is None else int(opts.rank)
    world_size = env_world if opts.world_size is None else int(opts.world_size)
    summary_path = out_dir / "summary.json"
    if world_size > 1:
        items, names = shard_inputs(items, rank, world_size), shard_inputs(names, rank, world_size)
        summary_path = out_dir / f"summary_rank{rank}.json"
    jobs = [FileJob(path, out_dir / f"{name}.nii.gz", out_dir / f"{name}_dicom" if opts.dicom and path.is_dir()
                    else None, out_dir / "qa", problem) for (path, problem), name in zip(items, names, strict=True)]
    maps = service.writes_map(direction)  # then an output without its map is not finished
    todo = {i for i, job in enumerate(jobs)
            if job.problem is None and (opts.overwrite or not _finished(job, maps, direction))}
    return BatchPlan(jobs, todo, summary_path, _previous_records(summary_path), rank, world_size)


def write_summary(plan: BatchPlan, records: Sequence[Mapping[str, Any]], service: ConversionService,
                  direction: str, stream: Any) -> int:
    """Write ``plan.summary_path`` (atomically) with ``records`` in input order, print the table to ``stream``;
    returns the exit status (1 when any input failed)."""
    info = service.info
    summary = {
        "direction": direction,
        "model": {"file": info.get("file"), "sha256": info.get("sha256"),
                  **{k: info[k] for k in ("engine", "source_sha256") if info.get(k)}},  # engines, exports only
        "device": str(service.options.device),
        "rank": plan.rank,
        "world_size": plan.world_size,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "counts": status_counts(records),
        "files": list(records),
    }
    atomic_write_json(plan.summary_path, summary)
    print(format_table(records), file=stream)
    print(f"summary: {plan.summary_path}", file=stream)
    return 1 if summary["counts"]["failed"] else 0


def convert_batch(service: ConversionService, inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                  direction: str, opts: BatchOptions) -> int:
    """`run_batch` with its model loaded: convert ``inputs`` with ``service`` in this process, one `convert_one`
    per input (the next one read ahead); returns the exit status."""
    service.model(direction)  # refused before anything is written when the model has no such generator
    plan = plan_batch(service, inputs, Path(output_dir), direction, opts)
    reader = _ReadAhead([plan.jobs[i].path for i in sorted(plan.todo)], service.options.series_uid,
                        service.options.max_voxels, enabled=opts.read_ahead)
    files_bar = _progress(len(plan.jobs), opts.progress, desc="volumes", unit="vol", position=0)
    records: list[dict[str, Any]] = []
    for i, job in enumerate(plan.jobs):
        if job.problem is None and i not in plan.todo:  # finished earlier
            record = skipped_record(job, plan.previous.get(str(job.output), {}))
        else:
            slices_bar = _progress(0, opts.progress, desc=job.path.name[:30], unit="slice", position=1,
                                   leave=False)
            record = convert_one(service, job, direction, read=None if job.problem else partial(reader.next, job.path),
                                 progress=slices_bar)
            if slices_bar is not None:
                slices_bar.close()
        if record["status"] == "failed":
            msg = f"FAILED {record['error']}"
            (files_bar.write(msg) if files_bar is not None else print(msg, file=sys.stderr))
        records.append(record)
        if opts.on_record is not None:
            opts.on_record(record)
        if files_bar is not None:
            files_bar.update(1)
    reader.close()
    if files_bar is not None:
        files_bar.close()
    return write_summary(plan, records, service, direction, opts.stream or sys.stdout)


class BatchConverter:
    """`run_batch` as an object for MONAI bundle configs (e.g. the inference ``evaluator``): the arguments are
    stored at construction and ``run()`` converts and returns the exit status. ``inputs`` may be one path."""

    def __init__(self, inputs: str | os.PathLike | Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                 direction: str, model: ModelSource | ConversionService, options: BatchOptions | None = None) -> None:
        self.inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        self.output_dir, self.direction, self.model, self.options = output_dir, direction, model, options
        self.status: int | None = None

    def run(self) -> int:
        self.status = run_batch(self.inputs, self.output_dir, self.direction, self.model, self.options)
        return self.status

    __call__ = run
