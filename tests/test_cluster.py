"""Batch conversion on a Dask cluster (``ctmri convert --workers / --scheduler``), with real Dask processes: the
same outputs as one process, a killed worker costs only time, a bad file fails alone, an unreachable scheduler is a
named error, a worker's model must be the client's, a rerun after a killed client converts only what is missing,
SLURM jobs from the README's jobqueue.yaml convert the batch, and local worker i takes GPU i. Every wait is
bounded; nothing sleeps to synchronise."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cloudpickle
import dask
import distributed  # the dask extra: a test dependency, imported, never skipped
import nibabel as nib
import numpy as np
import pytest
from conftest import REPO, write_tiny_checkpoint

from ctmri_monai.apps.cli import main
from ctmri_monai.convert.cluster.args import ClusterSpec
from ctmri_monai.convert.cluster.connect import open_cluster
from ctmri_monai.convert.cluster.run import run_cluster_batch
from ctmri_monai.convert.cluster.worker import ModelMismatchError, ModelRef, convert_task, worker_device
from ctmri_monai.convert.options import BatchOptions, ModelSource
from ctmri_monai.utils.hashing import file_sha256

VOLUMES = 6
CPU = {"device": "cpu", "disagreement": True}  # what each worker passes ConvertOptions.for_run (maps on)
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _until(condition: Callable[[], object], seconds: float, what: str) -> object:
    """Poll ``condition`` until it is truthy; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint, six phantom CT volumes and their single-process conversion (a child process that
    must not import Dask)."""
    from ctmri_monai.phantoms.render import make_subject

    root = tmp_path_factory.mktemp("cluster")
    inputs = root / "in"
    inputs.mkdir()
    for i in range(VOLUMES):
        s = make_subject(i, seed=0, shape=(32, 32, 8), spacing=(6.0, 6.0, 8.0))
        nib.save(nib.Nifti1Image(s.ct.astype(np.int16), s.affine), inputs / f"ct{i}.nii.gz")
    ckpt = write_tiny_checkpoint(root / "tiny.pt")
    single = root / "single"
    code = ("import sys; from ctmri_monai.apps.cli import main; rc = main(sys.argv[1:]); "
            "assert not {'dask', 'distributed'} & set(sys.modules), 'Dask imported'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, *_convert_args(inputs, ckpt, single)], env=ENV,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"inputs": inputs, "ckpt": ckpt, "single": single, "root": root}


def _convert_args(inputs: Path | list[Path], ckpt: Path, out: Path, *extra: str) -> list[str]:
    paths = [str(p) for p in (inputs if isinstance(inputs, list) else [inputs])]
    return ["convert", *paths, "--direction", "ct2mri", "--checkpoint", str(ckpt), "--output-dir", str(out),
            "--device", "cpu", "--no-progress", "--disagreement", *extra]


def _pixels(path: Path) -> bytes:
    return np.asanyarray(nib.load(path).dataobj).tobytes()


def _assert_same_outputs(out: Path, single: Path) -> None:
    """Every NIfTI of the single-process run exists once in ``out`` with the same pixel bytes; no temporary."""
    names = sorted(p.name for p in single.glob("*.nii.gz"))
    assert sorted(p.name for p in out.glob("*.nii.gz")) == names and len(names) == 2 * VOLUMES  # + maps
    for name in names:
        assert _pixels(out / name) == _pixels(single / name), name
    assert not [p for p in out.rglob("*") if ".partial-" in p.name]


def _address_in(scheduler_file: Path) -> str | None:
    """The address a scheduler wrote to its ``--scheduler-file``, once the file is whole."""
    try:
        return json.loads(scheduler_file.read_text()).get("address")
    except (OSError, ValueError):  # not there yet, or being written
        return None


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_two_local_workers_match_one_process(batch: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    out = batch["root"] / "two"
    assert main(_convert_args(batch["inputs"], batch["ckpt"], out, "--workers", "2")) == 0
    assert "dask: tcp://127.0.0.1:" in capsys.readouterr().err
    _assert_same_outputs(out, batch["single"])
    assert sorted(p.name for p in out.glob("summary*.json")) == ["summary.json"]
    cluster, single = _summary(out), _summary(batch["single"])
    assert all(r["worker"].startswith("tcp://127.0.0.1:") for r in cluster["files"])
    assert len({r["worker"] for r in cluster["files"]}) == 2  # both workers converted
    def same(summary: dict, folder: Path) -> list[dict]:  # timings and the worker aside, output folder as OUT
        records = json.loads(json.dumps(summary["files"]).replace(str(folder), "OUT"))
        for r in records:
            r.pop("seconds"), r.pop("worker", None), r["disagreement"].pop("seconds")
        return records

    assert same(cluster, out) == same(single, batch["single"])
    assert {k: v for k, v in cluster.items() if k not in ("files", "created")} == \
        {k: v for k, v in single.items() if k not in ("files", "created")}


def _hold_the_first_volume(gate: str) -> None:
    """On a worker: the first volume it converts waits inside `translate_volume` (the generator's part), with
    the worker's pid and task noted in ``gate``, until ``gate``/release exists; its later volumes, and a worker
    started in its place, run freely. The real conversion, only held."""
    from distributed import get_worker

    import ctmri_monai.convert.pipeline as pipeline

    real, held = pipeline.translate_volume, []

    def held_once(*args: object, **kwargs: object) -> object:
        if not held:
            held.append(True)
            note = Path(gate) / f".inside-{os.getpid()}"
            note.write_text(str(get_worker().get_current_task()))
            note.rename(Path(gate) / note.name[1:])  # whole when it appears
            deadline = time.monotonic() + 120
            while not (Path(gate) / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return real(*args, **kwargs)

    pipeline.translate_volume = held_once


@contextlib.contextmanager
def _a_worker_killed_mid_volume(gate: Path) -> Iterator[tuple[str, dict]]:
    """Two local workers as ``--workers 2`` starts them, each holding its first volume inside the generator; a
    thread SIGKILLs the first worker to get there (well before that volume's outputs are written) and then lets
    the other go on. Yields (the scheduler's address for the batch, ``killed``: the worker's address and task)."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the tests folder is not on the workers' path
    killed: dict = {}
    with open_cluster(ClusterSpec(workers=2)) as client:
        client.run(_hold_the_first_volume, str(gate))
        addresses = {pid: address for address, pid in client.run(os.getpid).items()}

        def kill_the_first_inside() -> None:
            inside = _until(lambda: sorted(gate.glob("inside-*")), 120, "a worker inside the generator")[0]
            pid = int(inside.name.split("-")[1])
            os.kill(pid, signal.SIGKILL)
            killed.update(address=addresses[pid], keys={inside.read_text()})
            (gate / "release").touch()

        with ThreadPoolExecutor(1) as pool:
            done = pool.submit(kill_the_first_inside)
            yield client.scheduler.address, killed
            done.result(timeout=5)  # it ended before the batch could: its failure is the test's


def _victim(records: list[dict], killed: dict) -> list[dict]:
    return [r for r in records if any(Path(r["output"]).name in str(k) for k in killed["keys"])]


def test_a_worker_killed_mid_volume_costs_only_time(batch: dict[str, Path], tmp_path: Path) -> None:
    out = batch["root"] / "killed"
    with _a_worker_killed_mid_volume(tmp_path) as (address, killed):
        status = run_cluster_batch([batch["inputs"]], out, "ct2mri", ModelSource(checkpoint=batch["ckpt"]),
                                   ClusterSpec(scheduler=address), BatchOptions(progress=False), request=CPU)
    assert status == 0 and killed
    _assert_same_outputs(out, batch["single"])
    records = _summary(out)["files"]
    assert all(r["status"] in ("ok", "flagged") for r in records)
    victim = _victim(records, killed)
    assert len(victim) == 1 and victim[0]["worker"] != killed["address"]  # converted again, elsewhere


def test_a_file_that_kills_every_worker_is_reported_not_retried_for_ever(batch: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    out = batch["root"] / "killer"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            _a_worker_killed_mid_volume(tmp_path) as (address, killed):  # the first death is every allowed one
        status = run_cluster_batch([batch["inputs"]], out, "ct2mri", ModelSource(checkpoint=batch["ckpt"]),
                                   ClusterSpec(scheduler=address), BatchOptions(progress=False), request=CPU)
    assert status == 1 and killed
    records = _summary(out)["files"]
    victim = _victim(records, killed)
    assert len(victim) == 1 and victim[0]["status"] == "failed"
    assert "killed every worker that converted it (1, the last " + killed["address"] in victim[0]["error"]
    assert [r["status"] for r in records].count("failed") == 1, [r["error"] for r in records]
    assert not [p for p in out.rglob("*") if ".partial-" in p.name]


def test_a_corrupt_file_fails_alone_and_is_not_retried(batch: dict[str, Path]) -> None:
    out = batch["root"] / "corrupt"
    bad = batch["root"] / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really a gzip'd NIfTI")
    good = sorted(batch["inputs"].glob("*.nii.gz"))[:3]
    attempts: dict[str, int] = {}

    def count_attempts(record: dict) -> None:
        if record["status"] == "failed":
            name = Path(record["output"]).name
            attempts[name] = distributed.default_client().run_on_scheduler(
                lambda dask_scheduler: sum(name in str(t[0]) and t[2] == "processing"
                                           for t in dask_scheduler.transition_log))

    status = run_cluster_batch([*good[:2], bad, good[2]], out, "ct2mri", ModelSource(checkpoint=batch["ckpt"]),
                               ClusterSpec(workers=2), BatchOptions(progress=False, on_record=count_attempts),
                               request=CPU)
    assert status == 1
    records = _summary(out)["files"]
    assert [r["status"] for r in records].count("failed") == 1 and records[2]["status"] == "failed"
    assert records[2]["error"].startswith(str(bad)) and records[2]["worker"].startswith("tcp://")
    assert attempts == {"bad_ct2mri.nii.gz": 1}  # one task, one run: a file's error is its record
    for record in records[:2] + records[3:]:
        name = Path(record["output"]).name
        assert _pixels(out / name) == _pixels(batch["single"] / name)


def test_an_unreachable_scheduler_is_a_named_error(batch: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as held:  # bound for the whole test and never listening: connections are refused, and
        held.bind(("127.0.0.1", 0))  # no other process can take the port meanwhile
        address = f"tcp://127.0.0.1:{held.getsockname()[1]}"
        t0 = time.monotonic()
        status = main(_convert_args(batch["inputs"], batch["ckpt"], batch["root"] / "nowhere", "--scheduler",
                                    address))
    assert status == 2 and time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert address in err and "cannot reach the Dask scheduler" in err
    assert not (batch["root"] / "nowhere").exists() or not list((batch["root"] / "nowhere").glob("*.nii.gz"))


def test_a_worker_refuses_a_checkpoint_that_is_not_the_clients(batch: dict[str, Path], tmp_path: Path) -> None:
    from ctmri_monai.convert.batch import FileJob

    ckpt = write_tiny_checkpoint(tmp_path / "model.pt")
    other = write_tiny_checkpoint(tmp_path / "other.pt", pixdim=(5.0, 5.0))  # same architecture, other bytes
    assert file_sha256(other) != file_sha256(ckpt)
    src = sorted(batch["inputs"].glob("*.nii.gz"))[0]
    job = FileJob(src, tmp_path / "out" / "x_ct2mri.nii.gz", qa_dir=tmp_path / "out" / "qa")
    (tmp_path / "out").mkdir()

    def ref(sha256: str) -> ModelRef:
        return ModelRef(str(ckpt), sha256, "ct2mri", (("batch_size", 1), ("device", "cpu")))

    with open_cluster(ClusterSpec(workers=1)) as client:
        refused = client.submit(convert_task, ref(file_sha256(other)), job, pure=False)
        with pytest.raises(ModelMismatchError, match="not the same model file") as info:
            refused.result(timeout=120)
        assert str(ckpt) in str(info.value) and file_sha256(other) in str(info.value)
        assert not job.output.exists()
        record, _ = client.submit(convert_task, ref(file_sha256(ckpt)), job, pure=False).result(timeout=120)
    assert record["status"] in ("ok", "flagged") and job.output.exists()  # the control: the client's own bytes


def test_rerun_after_a_killed_client_converts_only_what_is_missing(batch: dict[str, Path]) -> None:
    out, scheduler_file = batch["root"] / "rerun", batch["root"] / "scheduler.json"
    # the scheduler binds a port of its own choosing and writes its address to a file (Dask's way: no port race)
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                               "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)], env=ENV,
                              stderr=subprocess.DEVNULL)]
    try:
        address = _until(lambda: _address_in(scheduler_file), 60, "the scheduler's address in its file")
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                       "--no-dashboard", "--host", "127.0.0.1"], env=ENV, stderr=subprocess.DEVNULL))
        with distributed.Client(address, timeout="60s") as client:
            client.wait_for_workers(1, timeout=60)
            cli = subprocess.Popen([sys.executable, "-m", "ctmri_monai.apps.cli",
                                    *_convert_args(batch["inputs"], batch["ckpt"], out, "--scheduler", address)],
                                   env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _until(lambda: list(out.glob("*_ct2mri.nii.gz")), 120, "the first output")
            cli.kill()
            cli.wait(timeout=30)
            _until(lambda: not client.run_on_scheduler(lambda dask_scheduler: [
                k for k in dask_scheduler.tasks if "ctmri-convert" in str(k)]), 60, "the scheduler to forget the batch")
            _until(lambda: not any(client.run(lambda dask_worker: len(dask_worker.state.executing)).values()),
                   60, "the worker to finish its last task")
            before = {p.name: p.stat().st_mtime_ns for p in out.glob("*_ct2mri.nii.gz")}
            assert 1 <= len(before) < VOLUMES and not (out / "summary.json").exists()
            assert main(_convert_args(batch["inputs"], batch["ckpt"], out, "--scheduler", address)) == 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)
    records = _summary(out)["files"]
    skipped = {Path(r["output"]).name for r in records if r["status"] == "skipped"}
    assert skipped == set(before)  # what existed is not converted again ...
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_ct2mri.nii.gz") if p.name in before} == before
    assert all(r["status"] in ("ok", "flagged") for r in records if Path(r["output"]).name not in before)
    _assert_same_outputs(out, batch["single"])  # ... and the rest is


SBATCH = """#!/usr/bin/env bash
# Stand-in for SLURM's sbatch (no SLURM here): keep the job script (dask-jobqueue deletes it on return), run it
# as a local process in its own session and answer as sbatch does; the session's id is the job's id.
set -e
script="$JOBS/job-$(date +%s%N).sh"
cp "$1" "$script"
setsid bash "$script" > "$script.log" 2>&1 < /dev/null &
echo "Submitted batch job $!"
"""
SCANCEL = """#!/usr/bin/env bash
# Stand-in for SLURM's scancel: end each job's whole session.
for id in "$@"; do kill -TERM -- "-$id" 2>/dev/null || true; done
"""


def _readme_jobqueue_yaml() -> dict:
    """The README's complete ``jobqueue.yaml`` for SLURM, as a user copies it."""
    import re

    import yaml

    text = (REPO / "README.md").read_text()
    return yaml.safe_load(re.search(r"```yaml\n(jobqueue:\n  slurm:.*?)```", text, re.S).group(1))


def test_slurm_jobs_from_the_readmes_jobqueue_yaml_convert_the_batch(batch: dict[str, Path], tmp_path: Path) -> None:
    """``--cluster slurm --jobs 2`` with the README's jobqueue.yaml in Dask's configuration: dask-jobqueue writes
    the job scripts (one GPU, 8 CPUs, one thread each) and submits them with ``sbatch``; SLURM is not on this
    machine, so a stand-in sbatch runs each script as a local process: the workers are real Dask workers."""
    config = _readme_jobqueue_yaml()
    slurm = config["jobqueue"]["slurm"]
    # this machine has no modules and no /shared: only the prologue and the scratch folder are the test's own
    slurm.update({"job-script-prologue": [], "local-directory": str(tmp_path / "scratch"),
                  "scheduler-options": {"host": "127.0.0.1"}})
    (tmp_path / "dask").mkdir()
    (tmp_path / "dask" / "jobqueue.yaml").write_text(json.dumps(config))  # JSON is YAML
    bin_dir, jobs = tmp_path / "bin", tmp_path / "jobs"
    bin_dir.mkdir(), jobs.mkdir()
    for name, text in (("sbatch", SBATCH), ("scancel", SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(ENV, PATH=f"{bin_dir}{os.pathsep}{ENV['PATH']}", DASK_CONFIG=str(tmp_path / "dask"), JOBS=str(jobs))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "ctmri_monai.apps.cli",
                           *_convert_args(batch["inputs"], batch["ckpt"], out, "--cluster", "slurm", "--jobs", "2")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    scripts = sorted(jobs.glob("job-*.sh"))
    assert len(scripts) == 2  # --jobs 2: two sbatch submissions
    for script in scripts:
        text = script.read_text()
        assert "#SBATCH --gres=gpu:1" in text and "#SBATCH --cpus-per-task=8" in text and "#SBATCH -p gpu" in text
        assert "distributed.cli.dask_worker tcp://127.0.0.1:" in text and "--nthreads 1" in text
    _assert_same_outputs(out, batch["single"])
    records = _summary(out)["files"]
    assert all(r["status"] in ("ok", "flagged") and r["worker"].startswith("tcp://127.0.0.1:") for r in records)
    jobs_alive = [s for s in scripts if subprocess.run(["pgrep", "-f", str(s)], capture_output=True).returncode == 0]
    _until(lambda: not [s for s in jobs_alive if subprocess.run(["pgrep", "-f", str(s)],
                                                                capture_output=True).returncode == 0],
           20, "the jobs to end after scancel")  # well inside the workers' own --death-timeout 60


def test_with_n_gpus_local_worker_i_takes_gpu_i() -> None:
    """`--workers N` on a machine with N GPUs: LocalCluster names its workers 0..N-1, and worker i is given
    cuda:i (the GPU count is passed in: this machine has none); an explicit device, the CPU, one GPU (the worker
    resolves auto itself) and a batch job's worker (SLURM's CUDA_VISIBLE_DEVICES gives it its GPU) keep theirs."""
    with open_cluster(ClusterSpec(workers=2)) as client:
        names = client.run(lambda dask_worker: dask_worker.name)
        devices = client.run(lambda dask_worker: worker_device("auto", dask_worker.name, 2))
    assert sorted(names.values()) == [0, 1]
    assert sorted(devices.values()) == ["cuda:0", "cuda:1"]
    assert [worker_device("cuda", i, 3) for i in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    assert worker_device("cuda:1", 0, 2) == "cuda:1" and worker_device("cpu", 1, 2) == "cpu"
    assert worker_device("auto", 1, 1) == "auto" and worker_device("auto", "SLURMCluster-0", 4) == "auto"
