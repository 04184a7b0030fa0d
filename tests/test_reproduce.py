"""Issue 7: the paper's table on a tiny Kaggle layout, the time budget on a tiny bundle run, the preprocessing grid."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ctmri_monai.apps.bundle_paths import parse_override, run_bundle
from ctmri_monai.apps.preview import preview_grid
from ctmri_monai.apps.reproduce import (
    ReproduceConfig,
    evaluate_overrides,
    main,
    reproduce,
    train_overrides,
    training_throughput,
    unet_num_downs,
)
from ctmri_monai.engines.schedule import LinearDecayRule
from ctmri_monai.io.checkpoint_file import load_checkpoint
from ctmri_monai.metrics.feature_cache import RealFeatureCache

# Tiny networks; 6 training images per domain with val_fraction 0.34 leave 2 for validation (FID needs 2).
TINY = {"image_size": 32, "ngf": 4, "ndf": 4, "n_blocks": 1, "batch_size": 2, "num_workers": 0,
        "fid_features": "random", "val_fraction": 0.34, "kid_subset_size": 4, "eval_batch_size": 8}
# Start-up of an in-process train call before the trainer's STARTED event (config parsing, data listing, networks):
# measured 3-4 s on the 2-core test machine; the bound leaves room for a loaded machine.
MAX_STARTUP_SECONDS = 15.0
# Work after the budget's last iteration (final validation, final checkpoint, sample grid): ~0.2 s at this size.
MAX_TEARDOWN_SECONDS = 5.0


def _write_kaggle_layout(root: Path, n_train: int = 6, n_test: int = 4, seed: int = 0) -> Path:
    """trainA/testA: 48 x 48 gray CT-like PNGs; trainB/testB: RGB MRI-like JPEGs of odd sizes."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("test", n_test)):
        ct_dir, mri_dir = root / f"{split}A", root / f"{split}B"
        ct_dir.mkdir(parents=True)
        mri_dir.mkdir(parents=True)
        for i in range(count):
            yy, xx = np.mgrid[:48, :48]
            head = ((yy - 24) ** 2 / 20.0**2 + (xx - 24) ** 2 / (16.0 + i) ** 2) < 1
            ct = np.where(head, 90 + rng.integers(0, 40, (48, 48)), 0).astype(np.uint8)
            Image.fromarray(ct).save(ct_dir / f"ct{i}.png")
            h, w = 37 + 6 * i, 53 - 4 * i
            yy, xx = np.mgrid[:h, :w]
            brain = ((yy - h / 2) ** 2 / (0.4 * h) ** 2 + (xx - w / 2) ** 2 / (0.4 * w) ** 2) < 1
            gray = np.where(brain, 120 + rng.integers(0, 60, (h, w)), 5)
            rgb = np.stack([gray, gray, np.clip(gray + 10, 0, 255)], axis=-1).astype(np.uint8)
            Image.fromarray(rgb, "RGB").save(mri_dir / f"mri{i}.jpg")
    return root


@pytest.fixture(scope="module")
def kaggle_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_kaggle_layout(tmp_path_factory.mktemp("kaggle"))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny convolutions are faster on one thread than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _filled(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_filled(v) for v in value.values())
    return value not in (None, "")


def test_unet_levels_follow_the_image_size() -> None:
    assert [unet_num_downs(s) for s in (256, 512, 128, 64, 32, 96)] == [8, 8, 7, 6, 5, 5]
    with pytest.raises(ValueError):
        unet_num_downs(33)
    assert parse_override("n_blocks=1") == ("n_blocks", 1)
    assert parse_override("size_policy=crop") == ("size_policy", "crop")


def _spy_on_the_feature_cache(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[bool]]:
    """(keys written, whether each look-up found the features) of every RealFeatureCache in this process."""
    saved: list[str] = []
    found: list[bool] = []
    save, lookup = RealFeatureCache.save, RealFeatureCache.lookup

    def spy_save(self: RealFeatureCache, key: str, *args: object, **kwargs: object) -> Path | None:
        saved.append(key)
        return save(self, key, *args, **kwargs)

    def spy_lookup(self: RealFeatureCache, *args: object, **kwargs: object) -> tuple:
        result = lookup(self, *args, **kwargs)
        found.append(result[1] is not None)
        return result

    monkeypatch.setattr(RealFeatureCache, "save", spy_save)
    monkeypatch.setattr(RealFeatureCache, "lookup", spy_lookup)
    return saved, found


def test_reproduce_writes_the_table_with_every_field(kaggle_tiny: Path, tmp_path: Path, one_thread: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    written, found = _spy_on_the_feature_cache(monkeypatch)
    extra = [f"--set={k}={v}" for k, v in TINY.items() if k not in ("image_size", "ngf", "batch_size",
                                                                     "num_workers", "fid_features", "ndf")]
    argv = ["--dataset-dir", str(kaggle_tiny), "--output-dir", str(out), "--budget-minutes", "0.25",
            "--image-size", "32", "--ngf", "4", "--device", "cpu", "--batch-size", "2", "--fid-features", "random",
            "--num-workers", "0", "--threads", "1", *extra]
    assert main(argv) == 0

    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["overrides"]["n_blocks"] == 1 and saved["config"]["device"] == "cpu"
    assert [r["backbone"] for r in saved["rows"]] == ["resnet", "unet"]
    for row in saved["rows"]:
        for key in ("fid_ct2mri", "fid_mri2ct", "kid_ct2mri", "kid_mri2ct", "params_m", "epochs", "minutes",
                    "images_per_s", "device", "image_size", "ngf", "paper", "samples"):
            assert key in row, key
        empty = [k for k, v in row.items() if not _filled(v)]
        assert not empty, f"{row['backbone']}: empty fields {empty}"
        assert row["epochs"] > 0 and row["images_per_s"] > 0 and row["minutes"] <= 0.25 + 0.25
        assert row["eval_split"] == "testA/testB" and row["n_test_ct"] == 4 and row["n_test_mri"] == 4
        assert (out / row["samples"]).is_file()
        assert row["device"].startswith("cpu")
    resnet, unet = saved["rows"]
    assert resnet["label"] == "ResNet-1" and resnet["paper"]["fid_ct2mri"] == 58.32
    assert unet["depth"] == "num_downs 5" and unet["label"] == "U-Net-32" and unet["paper"]["params_m"] == 54.4
    assert saved["reduced"] and any("image size 32" in r for r in saved["reduced_reasons"])

    table = (out / "table.md").read_text()
    assert "58.32" in table and "95.19" in table and "Reduced run" in table
    assert "nan" not in table.lower() and "None" not in table
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 3 and all("|  |" not in line for line in lines)

    # The real images' features: computed once per real set (validation and test split, both directions) in the
    # whole reproduction, then read from OUT/fid_cache by the other backbone's validations and evaluation.
    assert len(written) == len(set(written)) == 4, written
    assert sorted(p.name for p in (out / "fid_cache").iterdir()) == sorted(f"real-{k}.pt" for k in written)
    assert found.count(True) >= 4 and found.count(False) == 4

    with pytest.raises(FileExistsError, match="--overwrite"):  # never mixes a new run into an old one
        reproduce(ReproduceConfig(dataset_dir=str(kaggle_tiny), output_dir=str(out), backbones=("resnet",)))


def test_every_run_of_the_reproduction_shares_one_fid_cache(tmp_path: Path) -> None:
    cfg = ReproduceConfig(dataset_dir=str(tmp_path), output_dir=str(tmp_path / "out"))
    cache = str(tmp_path / "out" / "fid_cache")
    assert {train_overrides(cfg, b)["fid_cache_dir"] for b in ("resnet", "unet")} == {cache}
    assert evaluate_overrides(cfg, "unet", tmp_path / "final.pt")["fid_cache_dir"] == cache
    mine = ReproduceConfig(dataset_dir=str(tmp_path), output_dir=str(tmp_path), overrides={"fid_cache_dir": "/c"})
    assert train_overrides(mine, "resnet")["fid_cache_dir"] == evaluate_overrides(mine, "resnet", tmp_path)[
        "fid_cache_dir"] == "/c"  # a user override wins


def test_budget_run_ends_within_the_minute_with_the_lr_at_zero(kaggle_tiny: Path, tmp_path: Path,
                                                                 one_thread: None) -> None:
    out = tmp_path / "run"
    start_wall, start = time.time(), time.perf_counter()
    run_bundle("train", dataset_dir=str(kaggle_tiny), output_dir=str(out), budget_minutes=1.0, resume=False,
               device="cpu", **TINY)
    seconds = time.perf_counter() - start

    timed = training_throughput(out / "tensorboard")
    assert timed is not None
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    first_iteration_at = events.Scalars("loss_G")[0].wall_time - start_wall
    startup = first_iteration_at  # includes the first iteration, so it over-estimates the start-up a little
    print(f"budget run: {seconds:.1f} s in all, {startup:.1f} s to the first iteration")
    assert startup < MAX_STARTUP_SECONDS, f"start-up took {startup:.1f} s"
    assert seconds < 60.0 + startup + MAX_TEARDOWN_SECONDS, f"{seconds:.1f} s for a 1-minute budget"
    assert seconds > 30.0, f"only {seconds:.1f} s of a 1-minute budget used"

    ckpts = out / "checkpoints"
    assert (ckpts / "final.pt").is_file() and (ckpts / "best.pt").is_file()
    final = load_checkpoint(ckpts / "final.pt")
    done = final["trainer"]["iteration"]
    sched = final["g_scheduler"]
    rule_state = sched["lr_lambdas"][0]
    rule = LinearDecayRule(rule_state["constant_iters"], rule_state["decay_iters"])
    assert sched["last_epoch"] == done  # one scheduler step per iteration
    assert rule.constant_iters + rule.decay_iters == done, "the run did not end where the schedule planned"
    assert rule(done - 1) == 0.0 and rule(done - 2) > 0.0  # the last iteration ran at zero, the one before not
    assert rule.constant_iters < done  # re-plans during the decay continue it linearly, so only this holds
    assert final["g_optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert final["d_optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert (final["trainer"]["max_epochs"] - 1) * final["trainer"]["epoch_length"] < done  # planned in iterations


def test_preview_grid_shows_sixteen_images_per_domain(kaggle_tiny: Path) -> None:
    grid = preview_grid(kaggle_tiny, image_size=32, per_domain=16, val_fraction=0.34)
    assert grid.dtype == np.uint8 and grid.ndim == 2
    # 4 training images per domain here: one row of 4 tiles in each block (16 when the folder has that many)
    assert grid.shape == (32, 2 * (4 * 32 + 3 * 2) + 8)
    ct_block, mri_block = grid[:, :134], grid[:, 142:]
    assert ct_block[:, :32].min() == 0 and mri_block.max() > 100  # background at -1 -> 0, tissue bright


def test_reproduction_trains_the_papers_method_without_the_structure_loss(tmp_path: Path) -> None:
    """The bundle adds a structure loss by default; the paper's table is reproduced without it, unless asked."""
    from ctmri_monai.apps.reproduce import ReproduceConfig, train_overrides

    cfg = ReproduceConfig(dataset_dir=str(tmp_path), output_dir=str(tmp_path / "out"))
    assert train_overrides(cfg, "resnet")["lambda_structure"] == 0.0
    mine = ReproduceConfig(dataset_dir=str(tmp_path), output_dir=str(tmp_path / "out"),
                           overrides={"lambda_structure": 1.0})
    assert train_overrides(mine, "unet")["lambda_structure"] == 1.0
