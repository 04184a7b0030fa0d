"""scripts/bench_all.sh in its quick mode: every benchmark runs and reports every figure; the figures are checked
for what must hold whatever the machine (ranges, sums, ratios), not for their speed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", BENCH_QUICK="1", PYTHON=sys.executable)
    result = subprocess.run(["bash", str(REPO / "scripts" / "bench_all.sh"), str(out)], capture_output=True,
                            text=True, encoding="utf-8", errors="replace", env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "== bench_train" in result.stdout and "img/s" in result.stdout and "| images per set |" in result.stdout
    return out


def test_bench_train_quick(bench_out: Path) -> None:
    data = json.loads((bench_out / "bench_train.json").read_text())
    assert data["quick"] is True and data["machine"]
    rows = {(r["backbone"], r["variant"]): r for r in data["results"]}
    assert set(rows) == {(b, v) for b in ("ResNet-9", "U-Net-256") for v in ("baseline", "engine")}
    for row in rows.values():
        assert row["images_per_s"] > 0 and row["peak_memory_bytes"] > 0 and row["flops_per_iteration"] > 0
    for backbone in ("ResNet-9", "U-Net-256"):  # the same math on both sides
        assert rows[(backbone, "engine")]["flops_per_image"] == pytest.approx(
            rows[(backbone, "baseline")]["flops_per_image"], rel=0.05)


def test_bench_convert_quick(bench_out: Path) -> None:
    data = json.loads((bench_out / "bench_convert.json").read_text())
    rows = {r["variant"]: r for r in data["results"]}
    assert set(rows) == {"end_to_end", "end_to_end_map", "forward", "baseline_fp32_b1"}
    assert "disagreement" in rows["end_to_end_map"]["timings_per_volume_s"]  # the map was made, and only there
    assert "disagreement" not in rows["end_to_end"]["timings_per_volume_s"]
    assert all(r["slices_per_s"] > 0 for r in rows.values()) and data["flops_per_slice"] > 0
    assert set(rows["end_to_end"]["timings_per_volume_s"]) >= {"load", "preprocess", "inference", "invert", "write"}
    ratio = rows["end_to_end"]["slices_per_s"] / rows["forward"]["slices_per_s"]
    assert rows["end_to_end"]["ratio_vs_forward"] == pytest.approx(ratio)  # the table's ratios use the right rows


def test_bench_fid_quick(bench_out: Path) -> None:
    row = json.loads((bench_out / "bench_fid.json").read_text())
    assert row["images_per_set"] == 8 and row["images_per_second"] > 0
    # the table's "one direction" column is the sum of its parts (each rounded to 0.01 s or finer)
    parts = row["feature_seconds"] + row["frechet_seconds"] + row["kid_seconds"]
    assert row["direction_seconds"] == pytest.approx(parts, abs=0.02)
    # two independent random sets: a distance of 0 would mean one set was compared with itself
    assert row["fid"] > 1e-6 and math.isfinite(row["kid"])


def test_large_volume_quick(bench_out: Path) -> None:
    figures = json.loads((bench_out / "large_volume.json").read_text())
    assert figures["ok"] == 2 and figures["failed"] == 0 and figures["rss_peak_mb"] > 0
    assert not (bench_out / "large_volume_work").exists()


def test_bench_peak_quick(bench_out: Path) -> None:
    data = json.loads((bench_out / "bench_peak.json").read_text())
    assert data["size"] == 256 and all(r["tflops"] > 0 for r in data["results"])


def test_bench_quality_quick(tmp_path: Path) -> None:
    """The four variants train, convert and score through the bundle; every figure of the table is reported."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_quality.py"), "--quick", "--output-dir",
                             str(tmp_path)], capture_output=True, text=True, encoding="utf-8", errors="replace",
                            env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    data = json.loads((tmp_path / "bench_quality.json").read_text())
    rows = {r["variant"]: r for r in data["results"]}
    assert set(rows) == {"2D", "2.5D (k = 1)", "2D + structure", "2.5D + structure"}
    for row in rows.values():
        assert row["iterations"] > 0 and row["n_pairs"] == 1
        assert 0 < row["volume_mae_mri2ct_hu"] < 4024, row  # HU over [-1024, 3000]: an error, never exact
        for key, (lo, hi) in {"volume_ssim_ct2mri": (-1, 1), "volume_through_plane_vs_real_ct2mri": (-1, 1),
                              "volume_structure_mri2ct": (0, 1), "volume_dice_ct2mri": (0, 1)}.items():
            assert isinstance(row[key], float) and (math.isnan(row[key]) or lo <= row[key] <= hi), (key, row[key])
    assert "| 2.5D + structure |" in (tmp_path / "bench_quality.md").read_text()


def test_bench_trust_quick(tmp_path: Path) -> None:
    """The planted table and both trained variants run; every held-out subject is scored both ways."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_trust.py"), "--quick", "--output-dir",
                             str(tmp_path)], capture_output=True, text=True, encoding="utf-8", errors="replace",
                            env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    data = json.loads((tmp_path / "bench_trust.json").read_text())
    assert "ct2mri | hallucination | honest | structure" in data["planted"]
    assert set(data["trained"]) == {"default (structure loss)", "paper (--lambda_structure 0)"}
    for rows in data["trained"].values():
        assert {(r["subject"], r["direction"]) for r in rows} == {(s, d) for s in ("subj004", "subj005")
                                                                  for d in ("ct2mri", "mri2ct")}
        assert all(0.0 <= r["auroc"]["map"] <= 1.0 and r["lesion_voxels"] > 0 for r in rows)


def test_bench_convert_engines_quick(tmp_path: Path) -> None:
    """--engines: every engine, thread count and batch size measured in both variants; ratios against torch."""
    from test_export_engines import require_engine

    require_engine("onnxruntime")
    require_engine("openvino")
    out = tmp_path / "engines.json"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_convert.py"), "--engines", "--quick",
                             "--rounds", "1", "--output", str(out)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    data = json.loads(out.read_text())
    keys = {(r["engine"], r["variant"], r["threads"], r["batch_size"]) for r in data["results"]}
    assert keys == {(e, v, t, b) for e in ("torch", "onnxruntime", "openvino") for v in ("end_to_end", "forward")
                    for t in (1, 2) for b in (1, 4)}
    assert all(r["slices_per_s"] > 0 for r in data["results"])
    for row in data["results"]:
        if row["engine"] == "torch":
            assert row["ratio_vs_torch"] == 1.0
    assert data["best_end_to_end"]["engine"] != "torch" and "best end to end" in result.stdout


def test_bench_convert_workers_quick(tmp_path: Path) -> None:
    """--workers: one process and Dask local workers on the same batch; a worker's overhead from its own files."""
    out = tmp_path / "workers.json"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_convert.py"), "--workers", "1,2",
                             "--files", "8", "--slices", "8", "--output", str(out)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"single process", "dask 1 worker(s)", "dask 2 worker(s)"}
    assert rows["dask 1 worker(s)"]["x_1_worker"] == 1.0
    for row in rows.values():
        assert row["files"] == 8 and row["files_per_min"] > 0 and row["convert_s_per_file"] > 0
        # the time between one worker's finished files holds its conversions: the overhead is never below what
        # the records' rounding (1 ms) leaves; the earlier whole-batch formula went negative with 2 workers
        assert row["overhead_s_per_file"] > -0.002, row
        assert row["overhead_pct"] == pytest.approx(100 * row["overhead_s_per_file"] / row["convert_s_per_file"])
