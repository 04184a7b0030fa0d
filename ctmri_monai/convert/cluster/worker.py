"""What runs on a Dask worker: the model cache (one load per worker process, keyed by the checkpoint's SHA-256)
and the task that converts one input file with the same `convert_one` as a single process."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ctmri_monai.convert.batch import FileJob, convert_one
from ctmri_monai.convert.options import ConvertOptions
from ctmri_monai.convert.service import ConversionService
from ctmri_monai.convert.trust import disagreement_path
from ctmri_monai.io.atomic import temporaries_for
from ctmri_monai.io.errors import CtmriError

__all__ = ["ModelMismatchError", "ModelRef", "convert_task", "remove_temporaries", "worker_device",
           "worker_service"]


class ModelMismatchError(CtmriError):
    """The model file a worker reads is not the one the client hashed (same path, other bytes)."""


@dataclass(frozen=True)
class ModelRef:
    """The model as the client saw it: its ``path`` on the shared file system, its ``sha256``, the direction,
    the ``request`` (`ConvertOptions.for_run`'s arguments as sorted (name, value) pairs; device "auto" is resolved
    on each worker) and the contract ``overrides`` the same way."""

    path: str
    sha256: str
    direction: str
    request: tuple[tuple[str, Any], ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()

    def cache_key(self) -> tuple:
        """The model's identity on a worker: the bytes (SHA-256) and how they are run, not the path."""
        return self.sha256, self.direction, self.request, self.overrides


_SERVICES: dict[tuple, ConversionService] = {}
_LOCK = threading.Lock()


def worker_device(requested: Any, worker_name: Any, cuda_count: int) -> str:
    """The device of a worker: with ``auto`` / ``cuda`` and several GPUs, local worker ``i`` (LocalCluster names
    its workers 0..N-1) takes GPU ``i mod count``; otherwise the request as given."""
    if str(requested) in ("auto", "cuda") and cuda_count > 1 and isinstance(worker_name, int):
        return f"cuda:{worker_name % cuda_count}"
    return str(requested)


def worker_service(ref: ModelRef, worker_name: Any = None) -> ConversionService:
    """The service of ``ref`` in this process: built on first use, then cached by `ModelRef.cache_key`. The file
    read must hash to the client's ``ref.sha256``, else `ModelMismatchError` naming the file and both hashes."""
    import torch

    key = ref.cache_key()
    with _LOCK:
        if key not in _SERVICES:
            request = dict(ref.request)
            if request.get("threads") is None:  # Dask's nanny sets OMP_NUM_THREADS; a forkserver child imported
                torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS") or 1)))  # torch before
            request["device"] = worker_device(request.get("device", "auto"), worker_name, torch.cuda.device_count())
            options = ConvertOptions.for_run(**request, model=ref.path)
            service = ConversionService.from_checkpoint(ref.path, options, contract_overrides=dict(ref.overrides),
                                                        directions=[ref.direction])
            if service.info.get("sha256") != ref.sha256:
                raise ModelMismatchError(ref.path, f"SHA-256 {service.info.get('sha256')} on this worker, "
                                                   f"{ref.sha256} on the client: not the same model file")
            _SERVICES[key] = service
        return _SERVICES[key]


def remove_temporaries(job: FileJob, direction: str) -> list[str]:
    """Delete the temporary files a killed writer left for ``job``'s outputs (NIfTI, map, DICOM series, QA
    montage); returns their names. Only the task that owns these outputs calls it."""
    targets = [job.output, disagreement_path(job.output, direction)]
    targets += [job.dicom_dir] if job.dicom_dir is not None else []
    targets += [job.qa_dir / f"{job.output.name[:-len('.nii.gz')]}_qa.png"] if job.qa_dir is not None else []
    removed = []
    for tmp in (t for target in targets for t in temporaries_for(target)):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        removed.append(tmp.name)
    return removed


def convert_task(ref: ModelRef, job: FileJob) -> tuple[dict[str, Any], str]:
    """One Dask task: convert ``job`` with this worker's cached model; returns (its summary record with the
    ``worker`` that converted it, the worker's device). A file's own error is its record; a model that is not
    the client's raises `ModelMismatchError`."""
    from distributed import get_worker

    worker = get_worker()
    remove_temporaries(job, ref.direction)  # what a worker killed on this file before left behind
    service = worker_service(ref, worker.name)
    record = convert_one(service, job, ref.direction)
    return {**record, "worker": worker.address}, str(service.options.device)


def overrides_key(overrides: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """Contract overrides as sorted, hashable (name, value) pairs (lists become tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (overrides or {}).items()))
