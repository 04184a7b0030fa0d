"""Reach or start the Dask cluster a batch runs on: a scheduler's address, local workers, or batch jobs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from ctmri_monai.convert.cluster.args import JOBQUEUE_CLUSTERS, ClusterSpec
from ctmri_monai.io.errors import CtmriError

__all__ = ["ClusterError", "dashboard_address", "open_cluster", "preload_worker_imports", "require_dask"]

logger = logging.getLogger(__name__)


class ClusterError(CtmriError):
    """A cluster that cannot be reached or started: names the address (or the cluster) and the problem."""


def require_dask(package: str = "distributed") -> Any:
    """Import ``package`` or raise ImportError with the install command."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ImportError(f"{package} is not installed: pip install 'ctmri-monai[dask]'") from exc


@contextlib.contextmanager
def open_cluster(spec: ClusterSpec) -> Iterator[Any]:
    """A ``distributed.Client`` on the cluster ``spec`` describes; a cluster started here is closed at the end.
    An unreachable scheduler is a `ClusterError` naming its address after ``spec.connect_timeout`` seconds."""
    distributed = require_dask()
    if spec.scheduler:
        try:
            client = distributed.Client(spec.scheduler, timeout=f"{spec.connect_timeout}s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(spec.scheduler, f"cannot reach the Dask scheduler within {spec.connect_timeout:g} s "
                                               f"({type(exc).__name__}: {exc})") from exc
        with client:
            yield client
        return
    with _start_cluster(spec) as cluster, distributed.Client(cluster) as client:
        yield client


@contextlib.contextmanager
def _start_cluster(spec: ClusterSpec) -> Iterator[Any]:
    """A LocalCluster of ``spec.workers`` processes, or a dask-jobqueue cluster scaled to ``spec.jobs`` jobs."""
    if spec.workers:
        distributed = require_dask()
        import dask

        preload_worker_imports()
        # one task per worker thread, none queued behind it: a worker's death then counts only against the files
        # it was converting (allowed-failures), not against those merely waiting on it; and glibc's default
        # malloc trimming: the nanny's MALLOC_TRIM_THRESHOLD_=65536 made each file ~40 % slower (benchmarks.md)
        environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        with dask.config.set({"distributed.scheduler.worker-saturation": 1.0,
                              "distributed.nanny.pre-spawn-environ": environ}):
            cluster = distributed.LocalCluster(n_workers=spec.workers, threads_per_worker=spec.threads_per_worker,
                                               processes=True)
    else:
        jobqueue = require_dask("dask_jobqueue")
        try:
            cluster = getattr(jobqueue, JOBQUEUE_CLUSTERS[spec.cluster])()  # configured by jobqueue.yaml
        except ValueError as exc:  # e.g. cores / memory missing from the configuration
            raise ClusterError(f"--cluster {spec.cluster}", f"{exc} (set it in ~/.config/dask/jobqueue.yaml)") \
                from exc
        logger.info("job script:\n%s", cluster.job_script())
        cluster.scale(jobs=spec.jobs)
    with cluster:
        yield cluster


def preload_worker_imports() -> None:
    """Start local workers from a fork server that has imported the conversion stack (torch, MONAI) once: a
    worker then starts, or restarts after it was killed, in about a second instead of re-importing everything."""
    import dask
    from distributed.utils import get_mp_context

    dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
    get_mp_context().set_forkserver_preload(["distributed", "ctmri_monai.convert.cluster.worker"])


def dashboard_address(client: Any) -> str | None:
    """The scheduler's dashboard address, when it runs one (it needs bokeh)."""
    try:
        services = client.scheduler_info().get("services", {})
    except (OSError, TimeoutError):
        return None
    return client.dashboard_link if "dashboard" in services else None
