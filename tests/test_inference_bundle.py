"""inference.yaml: a bundle run on volumes. (Its property check, verify_net_in_out and ckpt_export: test_zoo.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import run_bundle_cli, write_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def test_bundle_run_converts_volumes_onto_their_grid(checkpoint: Path, tiny_phantoms: Path, tmp_path: Path) -> None:
    source = tiny_phantoms / "volumes" / "ct"
    result = run_bundle_cli(["inference"], input=source, output_dir=tmp_path, direction="ct2mri",
                            checkpoint=checkpoint, batch_size=4, disagreement=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["counts"]["failed"] == 0
    for src in sorted(source.glob("*.nii.gz")):
        out = nib.load(tmp_path / src.name.replace(".nii.gz", "_ct2mri.nii.gz"))
        ref = nib.load(src)
        assert out.shape == ref.shape
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
        assert out.header["descrip"].tobytes().decode().startswith("SYNTHETIC")
        dmap = nib.load(tmp_path / src.name.replace(".nii.gz", "_ct2mri_disagreement.nii.gz"))  # asked for
        assert dmap.shape == ref.shape and dmap.get_data_dtype() == np.float32
        np.testing.assert_allclose(dmap.affine, ref.affine, atol=1e-5)
    assert all(r["disagreement"]["passes"] == 2 for r in summary["files"])  # two extra forwards, no backward
    off = tmp_path / "off"
    result = run_bundle_cli(["inference"], input=source, output_dir=off, direction="ct2mri",
                            checkpoint=checkpoint, batch_size=4)  # the default: no map
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert list(off.glob("*_ct2mri.nii.gz")) and not list(off.glob("*disagreement*"))


def test_bundle_run_on_an_engine(checkpoint: Path, tiny_phantoms: Path, tmp_path: Path) -> None:
    """engine: onnxruntime runs both generators exported in memory: the same outputs as torch within the
    tolerance derived in test_export_engines (4 x torch's own fp32 error, a few 1e-6 on this scale; 1e-5 here),
    the map still made, the engine recorded in the summary."""
    from test_export_engines import require_engine

    require_engine("onnxruntime")
    source = tiny_phantoms / "volumes" / "ct"
    outputs = {}
    for engine in ("torch", "onnxruntime"):
        out = tmp_path / engine
        result = run_bundle_cli(["inference"], input=source, output_dir=out, direction="ct2mri",
                                checkpoint=checkpoint, batch_size=4, engine=engine, threads=1,
                                disagreement=True)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["model"]["engine"] == engine and summary["counts"]["failed"] == 0
        assert all(r["disagreement"]["passes"] == 2 for r in summary["files"])
        outputs[engine] = {p.name: np.asarray(nib.load(p).dataobj, np.float64) for p in out.glob("*_ct2mri.nii.gz")}
    assert outputs["torch"] and outputs["torch"].keys() == outputs["onnxruntime"].keys()
    for name, ref in outputs["torch"].items():
        assert np.abs(outputs["onnxruntime"][name] - ref).max() <= 1e-5, name
