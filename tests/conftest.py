"""Shared fixtures: tiny phantom data sets and the bundle command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"

# The smallest configuration that still exercises every part of the bundle.
TINY_OVERRIDES = {
    "image_size": 32, "ngf": 4, "ndf": 4, "n_blocks": 1, "num_downs": 5, "batch_size": 8, "num_workers": 0,
    "fid_features": "random", "kid_subset_size": 8, "eval_batch_size": 16, "pixdim": "[6.0,6.0]",
    "progress_bar": False, "log_interval": 1,
}


@pytest.fixture(scope="session")
def tiny_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 32 x 32 x 12 phantom heads: PNG slices, NIfTI volumes and a CT DICOM series each."""
    from ctmri_monai.phantoms import make_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    make_phantoms(out, subjects=3, shape=(32, 32, 12), spacing=(6.0, 6.0, 8.0), seed=0)
    return out


def bundle_cmd(configs: list[str], **overrides: object) -> list[str]:
    """``python -m monai.bundle run`` on bundle configs with ``--key value`` overrides."""
    files = [str(CONFIGS / f"{c}.yaml") for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]",
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf")]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def run_bundle_cli(configs: list[str], timeout: float = 300, **overrides: object) -> subprocess.CompletedProcess:
    """Run the bundle in a child process with one thread (tiny ops are slower with more on 2 cores)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(bundle_cmd(configs, **overrides), capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=timeout,
                          env=env, cwd=REPO)


def make_spec(image_size: int = 32, pixdim: tuple[float, float] | None = (1.0, 1.0),
              window: tuple[float, float] | None = (-1000.0, 1000.0), framing: str = "spacing", **kwargs: object):
    """A volumes-layout contract for tests: HU ``window``, in-plane ``pixdim`` mm, ``image_size`` frames."""
    from ctmri_monai.spec import CTIntensity, ModelSpec, NetworkSpec, SliceGeometry

    network = NetworkSpec(backbone="resnet", ngf=4, n_blocks=1, num_downs=5)
    return ModelSpec(network=network, ct=CTIntensity(window=window),
                     geometry=SliceGeometry(image_size=image_size, framing=framing, pixdim=pixdim), **kwargs)


def write_tiny_checkpoint(path: Path, image_size: int = 32, pixdim: tuple[float, float] = (6.0, 6.0)) -> Path:
    """A checkpoint of two tiny untrained ResNet generators with its model_spec, as training writes it."""
    import torch

    from ctmri_monai.io.checkpoint_file import atomic_torch_save
    from ctmri_monai.networks import define_generator

    torch.manual_seed(0)
    spec = make_spec(image_size, pixdim)
    data = {f"generator_{d}": define_generator(**spec.generator_kwargs()).state_dict() for d in ("ct2mri", "mri2ct")}
    atomic_torch_save(data | {"model_spec": spec.state_dict()}, path)
    return path


def fail_dicom_write_at(monkeypatch: pytest.MonkeyPatch, call: int = 3) -> list:
    """Make the ``call``-th DICOM file write leave a partial file and fail with a full disk (ENOSPC); returns the
    list of file names written (or tried)."""
    import errno

    import pydicom

    real_save_as = pydicom.dataset.Dataset.save_as
    calls: list = []

    def save_as(self: pydicom.dataset.Dataset, filename: object, *args: object, **kwargs: object) -> None:
        calls.append(filename)
        if len(calls) == call:
            Path(str(filename)).write_bytes(b"\x00" * 64)  # a partial slice
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        real_save_as(self, filename, *args, **kwargs)

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", save_as)
    return calls
