"""Load: a batch of many volumes converts with flat memory (scripts/load_convert.py, in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

N = 40
IMAGE_SIZE = 128  # every file goes through 128 x 128 x 16 float32 tensors: 1 MiB each
# With glibc's mmap threshold pinned, RSS after a file is live memory (measured growth: ~0.1 MB over 20 files).
# A leak of any one volume-sized tensor per file (>= 1 MiB) would add >= 20 MiB over the 20 files of the
# second half, and even the 72 KiB int16 input kept per file adds 1.4 MiB: 8 MB is far above the noise and far
# below what a volume-sized leak gives.
MAX_GROWTH_MB = 8.0
MAX_SLOPE_MB_PER_FILE = 0.3


def test_many_volumes_convert_with_flat_memory(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               MALLOC_MMAP_THRESHOLD_="131072")
    figures_file = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "load_convert.py"), "--n", str(N), "--image-size", str(IMAGE_SIZE),
         "--output-dir", str(tmp_path / "work"), "--json", str(figures_file)],
        capture_output=True, text=True, encoding="utf-8", errors="replace", env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = json.loads(figures_file.read_text())
    assert figures["ok"] == N and figures["failed"] == 0 and len(figures["rss_samples_mb"]) == N
    assert len(list((tmp_path / "work" / "outputs").glob("*.nii.gz"))) == N
    half = figures["rss_samples_mb"][N // 2:]
    assert max(half) - half[0] < MAX_GROWTH_MB, figures["rss_samples_mb"]
    assert figures["second_half_growth_mb"] < MAX_GROWTH_MB
    assert figures["second_half_slope_mb_per_file"] < MAX_SLOPE_MB_PER_FILE, figures["rss_samples_mb"]
