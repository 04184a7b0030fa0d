"""The client's side of a cluster batch: plan as a single process does, submit one task per file still to do,
show progress as files finish, and write the one ``summary.json`` in input order."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ctmri_monai import DIRECTIONS
from ctmri_monai.convert.batch import (
    BatchPlan,
    FileJob,
    _progress,
    convert_one,
    plan_batch,
    skipped_record,
    write_summary,
)
from ctmri_monai.convert.cluster.args import ClusterSpec
from ctmri_monai.convert.cluster.connect import dashboard_address, open_cluster
from ctmri_monai.convert.cluster.worker import ModelRef, convert_task, overrides_key, remove_temporaries
from ctmri_monai.convert.options import BatchOptions, ConvertOptions, ModelSource
from ctmri_monai.convert.records import failed_record
from ctmri_monai.convert.service import ConversionService

__all__ = ["client_service", "run_cluster_batch"]


def client_service(model: ModelSource, direction: str, request: Mapping[str, Any]) -> ConversionService:
    """The model read once on the client, on the CPU: refuses a bad checkpoint or contract before anything is
    submitted, and gives the summary its model fields and the batch whether maps are written."""
    options = ConvertOptions.for_run(**{**request, "device": "cpu", "batch_size": 1}, model=model.checkpoint)
    return ConversionService.from_checkpoint(model.checkpoint, options, contract_overrides=model.contract_overrides,
                                             directions=[direction])


def run_cluster_batch(inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike, direction: str,
                      model: ModelSource, cluster: ClusterSpec, options: BatchOptions | None = None, *,
                      request: Mapping[str, Any] | None = None) -> int:
    """`run_batch` on a Dask cluster: one task per input file (`convert_task`), the model loaded once per worker
    from ``model.checkpoint`` on the shared file system; returns the exit status (1 when any input failed). Paths
    are made absolute, as the workers may run elsewhere. ``request``: the arguments of `ConvertOptions.for_run`
    (device, engine, batch_size, ...), which each worker applies on its own device; ``options.convert`` must be
    None for that reason."""
    opts = options or BatchOptions()
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {tuple(DIRECTIONS)}")
    if model.checkpoint is None or model.load_model is not None:
        raise ValueError("a cluster batch reads its model by path on every worker: give ModelSource(checkpoint=)")
    if opts.convert is not None:
        raise ValueError("BatchOptions.convert does not apply to a cluster batch: each worker derives its options "
                         "from request= (ConvertOptions.for_run's arguments) on its own device")
    request = dict(request or {"device": "auto"})
    service = client_service(model, direction, request)
    plan = plan_batch(service, [Path(p).absolute() for p in inputs], Path(output_dir).absolute(), direction, opts)
    ref = ModelRef(str(Path(model.checkpoint).absolute()), service.info["sha256"], direction,
                   overrides_key(request), overrides_key(model.contract_overrides))
    with open_cluster(cluster) as client:
        records, devices = _convert_on(client, ref, plan, service, opts)
    for job in plan.jobs:  # every task is over: what killed writers left is stale
        remove_temporaries(job, direction)
    service.options = service.options.replace(device=", ".join(sorted(devices)) or str(request.get("device")))
    return write_summary(plan, records, service, direction, opts.stream or sys.stdout)


def _submit(client: Any, ref: ModelRef, plan: BatchPlan, service: ConversionService) -> tuple[list, dict]:
    """The records known without a worker (refused inputs, finished outputs) and the futures of the rest, sent
    to the scheduler at once: it sees the whole group and queues the tasks that have no free worker thread
    instead of placing them behind a running file, where a worker's death would count against them too."""
    records: list[dict[str, Any] | None] = [None] * len(plan.jobs)
    todo: list[int] = []
    for i, job in enumerate(plan.jobs):
        if job.problem is not None:
            records[i] = convert_one(service, job, ref.direction)
        elif i not in plan.todo:
            records[i] = skipped_record(job, plan.previous.get(str(job.output), {}))
        else:
            todo.append(i)
    token = uuid.uuid4().hex[:8]  # the keys name the files on the dashboard
    keys = [f"ctmri-convert-{plan.jobs[i].output.name}-{token}" for i in todo]
    futures = client.map(convert_task, [ref] * len(todo), [plan.jobs[i] for i in todo], key=keys, pure=False)
    return records, dict(zip(futures, todo, strict=True))


def _convert_on(client: Any, ref: ModelRef, plan: BatchPlan, service: ConversionService,
                opts: BatchOptions) -> tuple[list[dict[str, Any]], set[str]]:
    """Run the batch's tasks on ``client``'s cluster; (records in input order, the workers' devices)."""
    from distributed import as_completed

    records, futures = _submit(client, ref, plan, service)
    dashboard = dashboard_address(client)
    print(f"dask: {client.scheduler.address}, {len(futures)} of {len(plan.jobs)} files to convert"
          + (f", dashboard {dashboard}" if dashboard else ""), file=sys.stderr)
    bar = _progress(len(futures), opts.progress, desc="volumes", unit="vol")
    devices: set[str] = set()
    done, failed, t0 = 0, 0, time.perf_counter()
    for future in as_completed(futures):
        i = futures[future]
        records[i], device = _outcome(future, plan.jobs[i])
        devices.update([device] if device else [])
        done += 1
        if records[i]["status"] == "failed":
            failed += 1
            msg = f"FAILED {records[i]['error']}"
            (bar.write(msg) if bar is not None else print(msg, file=sys.stderr))
        if opts.on_record is not None:
            opts.on_record(records[i])
        if bar is not None:
            bar.set_postfix(failed=failed, files_per_min=f"{60 * done / (time.perf_counter() - t0):.1f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    return records, devices


def _outcome(future: Any, job: FileJob) -> tuple[dict[str, Any], str | None]:
    """A finished task's (record, device); a task that raised or killed its workers as a failed record."""
    if future.status == "finished":
        return future.result()
    from distributed.scheduler import KilledWorker

    exc = future.exception()
    head = {"file": str(job.path), "output": str(job.output)}
    if isinstance(exc, KilledWorker):
        last = getattr(exc.last_worker, "address", exc.last_worker)
        problem = (f"killed every worker that converted it ({exc.allowed_failures + 1}, the last {last}); not "
                   f"retried further (distributed.scheduler.allowed-failures = {exc.allowed_failures})")
        return {**head, **failed_record(str(job.path), problem=problem)}, None
    return {**head, **failed_record(str(job.path), exc)}, None
