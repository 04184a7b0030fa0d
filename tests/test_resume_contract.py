"""Resume keeps the contract (issue 18): a resumed run whose configuration gives another data contract than its
checkpoint is refused, naming the fields and both values; ``resume_contract_override`` goes on, logged."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES, make_spec, run_bundle_cli
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

from ctmri_monai.handlers.checkpoint import ResumeHandler, contract_differences
from ctmri_monai.io.checkpoint_file import atomic_torch_save, load_checkpoint
from ctmri_monai.io.errors import ContractError


def _checkpoint(folder: Path, window: tuple[float, float]) -> Path:
    path = folder / "checkpoint_epoch=1.pt"
    atomic_torch_save({"model_spec": make_spec(window=window).state_dict(),
                       "trainer": {"epoch_length": 2, "iteration": 2, "max_epochs": 3}}, path)
    return path


def test_loading_the_contract_replaces_the_configuration_s_after_the_fact(tmp_path: Path) -> None:
    """The premise (the behaviour before the fix): MONAI's CheckpointLoader overwrites the configuration's
    ModelSpec object in place, after the transforms were built from it; the checkpoints that follow then record
    a window the transforms do not use."""
    path = _checkpoint(tmp_path, (-100.0, 200.0))
    spec = make_spec(window=(-1000.0, 1000.0))
    CheckpointLoader(str(path), {"model_spec": spec})(Engine(lambda e, b: None))
    assert spec.ct.window == (-100.0, 200.0)


def test_resume_handler_refuses_another_contract_and_names_the_fields(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, (-100.0, 200.0))
    spec = make_spec(window=(-1000.0, 1000.0), image_size=48)
    engine = Engine(lambda e, b: None)
    with pytest.raises(ContractError) as err:
        ResumeHandler(str(tmp_path), {"model_spec": spec, "trainer": engine})(engine)
    message = str(err.value)
    assert message.startswith(f"{path}: cannot resume")
    assert "ct.window: [-100.0, 200.0] in the checkpoint, [-1000.0, 1000.0] in the configuration" in message
    assert "geometry.image_size: 32 in the checkpoint, 48 in the configuration" in message
    assert "resume_contract_override" in message
    assert spec.ct.window == (-1000.0, 1000.0)  # untouched


def test_contract_differences_ignore_bookkeeping_only() -> None:
    a, b = make_spec(), make_spec()
    b.notes.append("a note")
    b.mri.declared = False
    assert contract_differences(a.state_dict(), b) == {}
    b.geometry.context_slices = 1
    b.network.in_channels = 3
    assert set(contract_differences(a.state_dict(), b)) == {"geometry.context_slices", "network.in_channels"}


def test_override_resumes_the_weights_and_keeps_the_configuration_s_contract(tmp_path: Path, caplog) -> None:
    _checkpoint(tmp_path, (-100.0, 200.0))
    spec = make_spec(window=(-1000.0, 1000.0))
    engine = Engine(lambda e, b: None)
    handler = ResumeHandler(str(tmp_path), {"model_spec": spec, "trainer": engine}, contract_override=True)
    with caplog.at_level("WARNING"):
        handler(engine)
    assert handler.loaded_from is not None and engine.state.epoch == 1
    assert spec.ct.window == (-1000.0, 1000.0) and "changed contract" in spec.notes[-1]
    assert "resume_contract_override" in caplog.text and "ct.window" in caplog.text


def test_bundle_resume_with_another_ct_window_is_refused_and_the_same_config_goes_on(tiny_phantoms: Path,
                                                                                   tmp_path: Path) -> None:
    """One tiny epoch on phantom volumes; resuming with another CT window fails naming it (and trains nothing);
    the same configuration resumes and trains epoch 2; the override resumes too and records the new window."""
    out = tmp_path / "run"
    args = dict(TINY_OVERRIDES, dataset_dir=tiny_phantoms, layout="volumes", slices_per_volume=4, val_interval=1,
                n_epochs_decay=0, batch_size=4)  # one training subject (one validates, one is the test subject)
    first = run_bundle_cli(["train"], output_dir=out, n_epochs=1, ct_window="[-1000,1000]", **args)
    assert first.returncode == 0, first.stderr[-3000:]
    final = out / "checkpoints" / "final.pt"
    assert load_checkpoint(final)["model_spec"]["ct"]["window"] == [-1000.0, 1000.0]

    changed = run_bundle_cli(["train"], output_dir=out, n_epochs=2, ct_window="[-200,300]", **args)
    log = changed.stdout + changed.stderr
    assert changed.returncode != 0
    assert ("ct.window: [-1000.0, 1000.0] in the checkpoint, [-200.0, 300.0] in the configuration" in log), log[-3000:]
    epoch_length = load_checkpoint(final)["trainer"]["epoch_length"]
    assert "Epoch: 2/2" not in log and load_checkpoint(final)["trainer"]["iteration"] == epoch_length

    same = run_bundle_cli(["train"], output_dir=out, n_epochs=2, ct_window="[-1000,1000]", **args)
    log = same.stdout + same.stderr
    assert same.returncode == 0 and "resumed from" in log and "Epoch: 2/2" in log, log[-3000:]
    assert load_checkpoint(final)["trainer"]["iteration"] == 2 * epoch_length

    override = run_bundle_cli(["train"], output_dir=out, n_epochs=3, ct_window="[-200,300]",
                              resume_contract_override=True, **args)
    log = override.stdout + override.stderr
    assert override.returncode == 0 and "Epoch: 3/3" in log and "resume_contract_override" in log, log[-3000:]
    recorded = load_checkpoint(final)["model_spec"]
    assert recorded["ct"]["window"] == [-200.0, 300.0] and "changed contract" in recorded["notes"][-1]
