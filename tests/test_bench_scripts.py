"""The training and conversion benchmarks run in their quick mode and report every figure (figures not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def _run(script: str, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--quick", "--output", str(out)],
                            capture_output=True, text=True, encoding="utf-8", errors="replace", env=env,
                            cwd=out.parent, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["machine"]
    return data


def test_bench_train_quick(tmp_path: Path) -> None:
    data = _run("bench_train.py", tmp_path / "train.json")
    rows = {(r["backbone"], r["variant"]): r for r in data["results"]}
    assert set(rows) == {(b, v) for b in ("ResNet-9", "U-Net-256") for v in ("baseline", "engine")}
    for row in rows.values():
        assert row["images_per_s"] > 0 and row["peak_memory_bytes"] > 0 and row["flops_per_iteration"] > 0
    # the same math on both sides: the engine's FLOPs per image equal the baseline's
    for backbone in ("ResNet-9", "U-Net-256"):
        assert rows[(backbone, "engine")]["flops_per_image"] == pytest.approx(
            rows[(backbone, "baseline")]["flops_per_image"], rel=0.05)


def test_bench_convert_quick(tmp_path: Path) -> None:
    data = _run("bench_convert.py", tmp_path / "convert.json")
    rows = {r["variant"]: r for r in data["results"]}
    assert set(rows) == {"end_to_end", "forward", "baseline_fp32_b1"}
    assert all(r["slices_per_s"] > 0 for r in rows.values()) and data["flops_per_slice"] > 0
    assert set(rows["end_to_end"]["timings_per_volume_s"]) >= {"load", "preprocess", "inference", "invert", "write"}
    assert rows["forward"]["ratio_vs_forward"] == pytest.approx(1.0)
