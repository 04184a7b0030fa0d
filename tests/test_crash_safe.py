"""Crash-safe training through the bundle: SIGKILL in the middle of an epoch, run the same command again, and the
run resumes from the newest complete checkpoint and finishes; unsafe checkpoints stop the resume loudly."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import torch
from conftest import REPO, TINY_OVERRIDES, bundle_cmd, run_bundle_cli

from ctmri_monai.io.checkpoint_file import load_checkpoint

N_EPOCHS, N_EPOCHS_DECAY, N_SAVED = 2, 2, 2
MAX_EPOCHS = N_EPOCHS + N_EPOCHS_DECAY
# batch 2: about ten iterations per epoch on the phantoms, so there is a "middle of an epoch" to kill in
OVERRIDES = {**TINY_OVERRIDES, "batch_size": 2, "n_epochs": N_EPOCHS, "n_epochs_decay": N_EPOCHS_DECAY,
             "save_interval": 1, "n_saved": N_SAVED, "val_interval": 100, "sample_interval": 100}
ITER_LINE = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+)")


def _child_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")


def _kill_mid_epoch(cmd: list[str], ckpt_dir: Path, rng: random.Random, timeout: float = 60.0) -> tuple[int, str, str]:
    """Run ``cmd``; once a checkpoint exists, SIGKILL it right after iteration k (random, not the last) of the
    next epoch is logged. Returns (pid, log, moment)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                            errors="replace", env=_child_env(), cwd=REPO)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines, moment, kill_at = [], "", None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            m = ITER_LINE.search(line)
            if not m or not list(ckpt_dir.glob("checkpoint_epoch=*.pt")):
                continue
            epoch, it, length = int(m.group(1)), int(m.group(3)), int(m.group(4))
            saved = max(int(p.stem.split("=")[1]) for p in ckpt_dir.glob("checkpoint_epoch=*.pt"))
            if epoch <= saved:
                continue
            kill_at = kill_at or rng.randint(1, max(1, length - 1))
            if it >= kill_at:
                time.sleep(rng.uniform(0.0, 0.05))  # somewhere inside the next iteration
                moment = f"epoch {epoch}, after iteration {it}/{length}"
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        watchdog.cancel()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"not killed mid-epoch (rc {proc.returncode}):\n" + "".join(lines)
    return proc.pid, "".join(lines), moment


def test_sigkill_mid_epoch_then_resume_finishes(tiny_phantoms: Path, tmp_path: Path) -> None:
    out, rng = tmp_path / "run", random.Random(time.time_ns())
    ckpt_dir = out / "checkpoints"
    cmd = bundle_cmd(["train"], dataset_dir=tiny_phantoms, output_dir=out, **OVERRIDES)
    pid, first_log, moment = _kill_mid_epoch(cmd, ckpt_dir, rng)
    saved = sorted(int(p.stem.split("=")[1]) for p in ckpt_dir.glob("checkpoint_epoch=*.pt"))
    assert saved and not (ckpt_dir / "final.pt").exists(), moment
    for path in ckpt_dir.glob("*.pt"):  # atomic saves: what exists is complete
        load_checkpoint(path)
    # what a kill in the middle of torch.save leaves: a temporary file of the dead process
    stale = ckpt_dir / f".checkpoint_epoch={saved[-1] + 1}.partial-{pid}-0a1b2c3d.pt"
    stale.write_bytes((ckpt_dir / f"checkpoint_epoch={saved[-1]}.pt").read_bytes()[:1000])

    second = run_bundle_cli(["train"], timeout=120, dataset_dir=tiny_phantoms, output_dir=out, **OVERRIDES)
    log = second.stdout + second.stderr
    assert second.returncode == 0, f"killed at {moment}\n{log[-3000:]}"
    assert f"resumed from {ckpt_dir / f'checkpoint_epoch={saved[-1]}.pt'}" in log, moment
    epochs_run = sorted({int(m.group(1)) for m in ITER_LINE.finditer(log)})
    assert epochs_run == list(range(saved[-1] + 1, MAX_EPOCHS + 1)), (moment, epochs_run)

    final = load_checkpoint(ckpt_dir / "final.pt")
    epoch_length = final["trainer"]["epoch_length"]
    assert epoch_length >= 5 and final["trainer"]["max_epochs"] == MAX_EPOCHS
    assert final["trainer"]["iteration"] == MAX_EPOCHS * epoch_length
    for path in ckpt_dir.iterdir():
        assert not path.name.startswith(".") and ".partial" not in path.name, f"left behind: {path.name}"
        data = load_checkpoint(path)  # none truncated
        assert isinstance(data["generator_ct2mri"]["model.1.weight"], torch.Tensor)
    kept = sorted(p.name for p in ckpt_dir.glob("checkpoint_epoch=*.pt"))
    assert kept == [f"checkpoint_epoch={e}.pt" for e in range(MAX_EPOCHS - N_SAVED + 1, MAX_EPOCHS + 1)], kept


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_refuses_an_unsafe_checkpoint_and_trains_nothing(tiny_phantoms: Path, tmp_path: Path) -> None:
    """A pickle with code in the run folder stops the run loudly; it does not silently train from scratch."""
    out, marker = tmp_path / "run", tmp_path / "payload_ran"
    (out / "checkpoints").mkdir(parents=True)
    evil = out / "checkpoints" / "checkpoint_epoch=1.pt"
    torch.save({"generator_ct2mri": _Payload(marker), "trainer": {"epoch": 1, "iteration": 5}}, evil)
    result = run_bundle_cli(["train"], timeout=120, dataset_dir=tiny_phantoms, output_dir=out, **OVERRIDES)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{evil}: refused to load" in log and "UnsafeCheckpointError" in log
    assert not marker.exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint_epoch=1.pt"]  # no final.pt
    assert not ITER_LINE.search(log)
