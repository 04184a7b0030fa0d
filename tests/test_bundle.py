"""The MONAI Bundle end to end: train.yaml through `python -m monai.bundle run`, resume, evaluate.yaml."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import CONFIGS, TINY_OVERRIDES, run_bundle_cli
from monai.bundle import ConfigWorkflow

from ctmri_monai.engines.schedule import LinearDecayRule
from ctmri_monai.io.checkpoint_file import load_checkpoint


def test_train_config_has_every_required_property(tiny_phantoms: Path) -> None:
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.yaml"), meta_file=str(CONFIGS / "metadata.json"),
                              logging_file=str(CONFIGS / "logging.conf"), workflow_type="train",
                              dataset_dir=str(tiny_phantoms))
    workflow.initialize()
    assert not workflow.check_properties()
    for network_id in ("generator_ct2mri", "generator_mri2ct", "discriminator_ct", "discriminator_mri"):
        assert workflow.parser.get(network_id) is not None


@pytest.fixture(scope="module")
def trained(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs of a four-epoch schedule, stopped by max_epochs as if the run had been killed, then resumed."""
    out = tmp_path_factory.mktemp("train")
    first = run_bundle_cli(["train"], dataset_dir=tiny_phantoms, output_dir=out, n_epochs=2, n_epochs_decay=2,
                           val_interval=2, **TINY_OVERRIDES, **{"train#trainer#max_epochs": 2})
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (out / "checkpoints" / "checkpoint_epoch=2.pt").is_file()
    (out / "first_run.log").write_text(first.stdout + first.stderr)
    second = run_bundle_cli(["train"], dataset_dir=tiny_phantoms, output_dir=out, n_epochs=2, n_epochs_decay=2,
                            val_interval=2, cache_rate=1.0, **TINY_OVERRIDES)  # decoded images cached
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    (out / "second_run.log").write_text(second.stdout + second.stderr)
    return out


def test_training_writes_checkpoints_grids_and_logs(trained: Path) -> None:
    ckpts = trained / "checkpoints"
    final = load_checkpoint(ckpts / "final.pt")
    for key in ("generator_ct2mri", "generator_mri2ct", "discriminator_ct", "discriminator_mri", "g_optimizer",
                "d_optimizer", "g_scheduler", "d_scheduler", "pool_ct", "pool_mri", "model_spec", "trainer"):
        assert key in final, key
    assert final["trainer"]["iteration"] == 4 * final["trainer"]["epoch_length"]
    spec = final["model_spec"]
    assert spec["network"]["ngf"] == 4 and spec["geometry"]["image_size"] == 32 and spec["layout"] == "images"
    assert spec["ct"]["window"] == [-20.0, 100.0]  # the phantoms' card: their PNGs' export window
    assert (ckpts / "best.pt").is_file()
    assert (trained / "samples" / "samples_latest.png").is_file()
    assert list((trained / "tensorboard").iterdir())
    log = (trained / "first_run.log").read_text()
    assert "loss_G" in log and "fid_mean" in log


def test_resume_continues_at_next_epoch_with_same_learning_rate(trained: Path) -> None:
    log = (trained / "second_run.log").read_text()
    assert "resumed from" in log and "checkpoint_epoch=2.pt" in log
    epochs_run = {int(m) for m in re.findall(r"Epoch: (\d+)/4", log)}
    assert epochs_run == {3, 4}, f"the resumed run trained epochs {sorted(epochs_run)}"
    ckpt2 = load_checkpoint(trained / "checkpoints" / "checkpoint_epoch=3.pt")
    sched = ckpt2["g_scheduler"]
    steps = sched["last_epoch"]
    rule = sched["lr_lambdas"][0]
    assert rule["constant_iters"] == rule["decay_iters"] > 0  # 2 + 2 epochs: the 1:1 split
    expected = 2e-4 * LinearDecayRule(rule["constant_iters"], rule["decay_iters"])(steps)
    assert 0 < expected < 2e-4, "epoch 3 lies in the decay half of the schedule"
    assert ckpt2["g_optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected)
    final = load_checkpoint(trained / "checkpoints" / "final.pt")
    assert final["g_optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_evaluate_writes_table_with_every_field(trained: Path, tiny_phantoms: Path) -> None:
    result = run_bundle_cli(["train", "evaluate"], dataset_dir=tiny_phantoms, output_dir=trained,
                            checkpoint=trained / "checkpoints" / "best.pt", fid_features="random", num_workers=0,
                            kid_subset_size=8)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    row = json.loads((trained / "evaluation" / "results.json").read_text())
    for field in ("backbone", "fid_ct2mri", "fid_mri2ct", "kid_ct2mri", "kid_mri2ct", "params_m", "n_test_ct",
                  "n_test_mri", "seconds"):
        assert row.get(field) not in (None, ""), field
    assert row["fid_ct2mri"] >= 0 and row["n_test_ct"] > 0 and row["params_m"] > 0
    from ctmri_monai.data import effective_split

    assert row["split"] == effective_split(tiny_phantoms, "test")  # says which images were really used
    # the phantoms are paired volumes: held-out pairs are scored too
    assert row["volume_n_pairs"] == 1 and row["slices_n_pairs"] > 1
    for field in ("volume_mae_mri2ct_hu", "volume_psnr_mri2ct", "volume_ssim_mri2ct", "volume_mae_ct2mri",
                  "volume_psnr_ct2mri", "volume_ssim_ct2mri", "volume_mae_mri2ct_hu_window",
                  "slices_mae_mri2ct_hu_window", "slices_ssim_ct2mri"):
        assert isinstance(row[field], float), field
    assert "HU window [-20, 100]" in row["contract"]
    table = (trained / "evaluation" / "results.md").read_text()
    assert "fid_ct2mri" in table and "nan" not in table.lower()
    translated = list((trained / "evaluation" / "translated" / "ct2mri").glob("*.png"))
    assert len(translated) == row["n_test_ct"]


@pytest.mark.parametrize("case", ["missing", "empty", "not_images"])
def test_bad_dataset_folder_gives_one_clear_error(tmp_path: Path, case: str) -> None:
    dataset = tmp_path / "dataset"
    if case != "missing":
        for sub in ("trainA", "trainB"):
            (dataset / sub).mkdir(parents=True)
            if case == "not_images":
                (dataset / sub / "notes.txt").write_text("hello")
    result = run_bundle_cli(["train"], timeout=120, dataset_dir=dataset, output_dir=tmp_path / "out",
                            **TINY_OVERRIDES)
    assert result.returncode != 0
    message = (result.stdout + result.stderr).splitlines()
    errors = [line for line in message if "InputError" in line or "FileNotFoundError" in line]
    assert errors, (result.stdout + result.stderr)[-2000:]
    assert str(dataset) in errors[-1]
