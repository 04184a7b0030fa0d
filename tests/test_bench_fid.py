"""The FID benchmark's quick mode runs and reports every figure (the figures themselves are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_bench_fid_quick(tmp_path: Path) -> None:
    out = tmp_path / "fid.json"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_fid.py"), "--quick", "--json", str(out)],
                            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(out.read_text())
    for key in ("feature_seconds", "images_per_second", "frechet_seconds", "kid_seconds", "direction_seconds"):
        assert row[key] >= 0, key
    assert row["images_per_set"] == 8 and row["fid"] >= 0
    assert "| images per set |" in result.stdout
