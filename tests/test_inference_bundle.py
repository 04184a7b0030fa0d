"""inference.yaml: MONAI's inference properties, a bundle run on volumes, verify_net_in_out and ckpt_export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import CONFIGS, REPO, run_bundle_cli, write_tiny_checkpoint
from monai.bundle import ConfigWorkflow

from ctmri_monai.networks.loading import load_generator


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def _bundle_tool(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True,
                          encoding="utf-8", errors="replace",
                          timeout=300, env=env, cwd=REPO)


def test_inference_config_has_every_required_property(checkpoint: Path, tiny_phantoms: Path) -> None:
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "inference.yaml"), meta_file=str(CONFIGS / "metadata.json"),
                              logging_file=str(CONFIGS / "logging.conf"), workflow_type="inference",
                              input=str(tiny_phantoms / "volumes" / "ct"), checkpoint=str(checkpoint))
    workflow.initialize()
    assert not workflow.check_properties()


def test_bundle_run_converts_volumes_onto_their_grid(checkpoint: Path, tiny_phantoms: Path, tmp_path: Path) -> None:
    source = tiny_phantoms / "volumes" / "ct"
    result = run_bundle_cli(["inference"], input=source, output_dir=tmp_path, direction="ct2mri",
                            checkpoint=checkpoint, batch_size=4)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["counts"]["failed"] == 0
    for src in sorted(source.glob("*.nii.gz")):
        out = nib.load(tmp_path / src.name.replace(".nii.gz", "_ct2mri.nii.gz"))
        ref = nib.load(src)
        assert out.shape == ref.shape
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
        assert out.header["descrip"].tobytes().decode().startswith("SYNTHETIC")


def test_verify_net_in_out(checkpoint: Path) -> None:
    result = _bundle_tool("verify_net_in_out", "network_def", "--meta_file", str(CONFIGS / "metadata.json"),
                          "--config_file", str(CONFIGS / "inference.yaml"), "--checkpoint", str(checkpoint),
                          "--device", "cpu")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


def test_ckpt_export_gives_the_same_generator(checkpoint: Path, tmp_path: Path) -> None:
    exported = tmp_path / "generator.ts"
    result = _bundle_tool("ckpt_export", "network_def", "--filepath", str(exported), "--ckpt_file", str(checkpoint),
                          "--key_in_ckpt", "generator_mri2ct", "--meta_file", str(CONFIGS / "metadata.json"),
                          "--config_file", str(CONFIGS / "inference.yaml"), "--checkpoint", str(checkpoint))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    scripted = torch.jit.load(str(exported))
    reference, _ = load_generator(checkpoint, "mri2ct")
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    torch.testing.assert_close(scripted(x), reference(x))
