"""Checkpoints: safe loading, clear errors, atomic saving, generator loading, newest-checkpoint discovery."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from ctmri_monai.handlers.checkpoint import latest_checkpoint
from ctmri_monai.io.checkpoint_file import CheckpointError, atomic_torch_save, load_checkpoint
from ctmri_monai.networks import define_generator
from ctmri_monai.networks.loading import load_generator, load_generator_weights
from ctmri_monai.spec import ModelSpec, NetworkSpec


def _write_checkpoint(path: Path, backbone: str = "resnet", ngf: int = 4, epoch: int = 1) -> dict:
    spec = ModelSpec(network=NetworkSpec(backbone=backbone, ngf=ngf, n_blocks=1, num_downs=5))
    nets = {d: define_generator(**spec.generator_kwargs()) for d in ("ct2mri", "mri2ct")}
    data = {f"generator_{d}": n.state_dict() for d, n in nets.items()}
    data |= {"model_spec": spec.state_dict(), "trainer": {"epoch": epoch, "iteration": epoch * 10}}
    atomic_torch_save(data, path)
    return nets


def test_load_generator_round_trip(tmp_path: Path) -> None:
    nets = _write_checkpoint(tmp_path / "c.pt")
    net, info = load_generator(tmp_path / "c.pt", "mri2ct")
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(net(x), nets["mri2ct"].eval()(x))
    assert info["model_spec"]["network"]["ngf"] == 4 and info["spec"].network.ngf == 4
    assert len(info["sha256"]) == 64 and not net.training


def test_refuses_pickled_objects(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    path = tmp_path / "evil.pt"
    torch.save({"generator_ct2mri": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_corrupt_or_truncated(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.pt"
    if content is None:  # truncated real checkpoint
        _write_checkpoint(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_wrong_backbone_or_missing_entry(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    _write_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not fit the requested UnetGenerator; the checkpoint was trained as "
                       "backbone=resnet"):
        load_generator_weights(define_generator("unet", ngf=4, num_downs=5), path, "ct2mri")
    torch.save({"model_spec": ModelSpec().state_dict()}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="has no 'generator_ct2mri'"):
        load_generator(tmp_path / "empty.pt", "ct2mri")
    with pytest.raises(CheckpointError, match="not found"):
        load_generator(tmp_path / "missing.pt", "ct2mri")


def test_atomic_save_leaves_no_temporary_on_failure(tmp_path: Path) -> None:
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_torch_save({"x": lambda: 0}, tmp_path / "c.pt")
    assert list(tmp_path.iterdir()) == []


def test_latest_checkpoint_skips_truncated(tmp_path: Path) -> None:
    _write_checkpoint(tmp_path / "checkpoint_epoch=1.pt", epoch=1)
    _write_checkpoint(tmp_path / "checkpoint_epoch=2.pt", epoch=2)
    newest = tmp_path / "checkpoint_epoch=3.pt"
    _write_checkpoint(newest, epoch=3)
    assert latest_checkpoint(tmp_path) == newest
    newest.write_bytes(newest.read_bytes()[:100])
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch=2.pt"
    assert latest_checkpoint(tmp_path / "nowhere") is None
