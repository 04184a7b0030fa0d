"""The Dask flags of ``ctmri convert`` and the cluster they describe; nothing here imports Dask."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

__all__ = ["JOBQUEUE_CLUSTERS", "ClusterSpec", "add_cluster_arguments", "cluster_spec"]

#: ``--cluster`` names and their dask-jobqueue classes (configured by Dask's ``jobqueue.yaml``).
JOBQUEUE_CLUSTERS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster",
                     "htcondor": "HTCondorCluster", "oar": "OARCluster", "moab": "MoabCluster"}


@dataclass(frozen=True)
class ClusterSpec:
    """Where the tasks run: a running scheduler's ``scheduler`` address, ``workers`` local worker processes of
    ``threads_per_worker`` threads, or ``cluster`` (a `JOBQUEUE_CLUSTERS` name) with ``jobs`` batch jobs.
    ``connect_timeout``: seconds to reach a scheduler before the named error."""

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    cluster: str | None = None
    jobs: int = 1
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        given = [name for name, value in (("--scheduler", self.scheduler), ("--workers", self.workers),
                                          ("--cluster", self.cluster)) if value]
        if len(given) != 1:
            got = ", ".join(given) or "none"
            raise ValueError(f"give exactly one of --scheduler, --workers and --cluster (got {got})")
        if self.cluster is not None and self.cluster not in JOBQUEUE_CLUSTERS:
            raise ValueError(f"--cluster {self.cluster!r}: expected one of {', '.join(JOBQUEUE_CLUSTERS)}")
        for name, value in (("--workers", self.workers), ("--worker-threads", self.threads_per_worker),
                            ("--jobs", self.jobs)):
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


def add_cluster_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--scheduler``, ``--workers``, ``--worker-threads``, ``--cluster``, ``--jobs`` (README, "On a cluster")."""
    group = parser.add_argument_group("Dask cluster (pip install 'ctmri-monai[dask]'; one task per input file)")
    group.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="a running Dask scheduler, e.g. tcp://host:8786 (`dask scheduler`, `dask worker`)")
    group.add_argument("--workers", type=int, metavar="N", default=None,
                       help="start N local worker processes (one GPU each when N GPUs are visible)")
    group.add_argument("--worker-threads", type=int, metavar="T", default=1,
                       help="tasks at a time per local worker (default 1)")
    group.add_argument("--cluster", choices=sorted(JOBQUEUE_CLUSTERS), default=None,
                       help="start workers as batch jobs with dask-jobqueue, configured by Dask's jobqueue.yaml")
    group.add_argument("--jobs", type=int, metavar="K", default=1, help="batch jobs to submit with --cluster")
    group.add_argument("--connect-timeout", type=float, metavar="SEC", default=5.0,
                       help="seconds to reach --scheduler before giving up (default 5)")
    return parser


def cluster_spec(args: argparse.Namespace) -> ClusterSpec | None:
    """The cluster the parsed flags ask for, or None (convert in this process)."""
    if not any(getattr(args, name, None) for name in ("scheduler", "workers", "cluster")):
        return None
    return ClusterSpec(args.scheduler, args.workers, args.worker_threads, args.cluster, args.jobs,
                       args.connect_timeout)
