"""Paired evaluation on held-out phantom pairs: volumes and 2D slices, one definition."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_spec

from ctmri_monai.data import spec_for_dataset
from ctmri_monai.handlers.paired import (
    evaluate_image_pairs,
    evaluate_volume_pairs,
    held_out_image_pairs,
    held_out_volume_pairs,
)


def blank(x: torch.Tensor) -> torch.Tensor:  # predicts air everywhere
    return torch.full_like(x[:, :1], -1.0)


def identity(x: torch.Tensor) -> torch.Tensor:  # keeps the anatomy, wrong contrast
    return x[:, :1]


def test_held_out_pairs_are_the_phantom_test_subjects(tiny_phantoms: Path) -> None:
    pairs = held_out_volume_pairs(tiny_phantoms)
    test_subjects = json.loads((tiny_phantoms / "phantoms.json").read_text())["test_subjects"]
    assert [ct.name.split(".")[0] for ct, _ in pairs] == test_subjects
    assert all(ct.name == mri.name and mri.parent.name == "mri" for ct, mri in pairs)
    assert held_out_volume_pairs(tiny_phantoms / "trainA") == []
    images = held_out_image_pairs(tiny_phantoms)
    assert images and all(a.name == b.name and a.parent.name == "testA" for a, b in images)


def test_paired_metrics_are_finite_and_rank_generators(tiny_phantoms: Path) -> None:
    spec = make_spec(32, pixdim=(6.0, 6.0))  # a volumes-trained model: CT window [-1000, 1000]
    pairs = held_out_volume_pairs(tiny_phantoms)
    scores = {name: evaluate_volume_pairs(pairs, {"ct2mri": g, "mri2ct": g}, spec, batch_size=8)
              for name, g in (("blank", blank), ("identity", identity))}
    for result in scores.values():
        assert result["n_pairs"] == len(pairs) == 1
        assert all(math.isfinite(v) for k, v in result.items()
                   if not k.startswith(("through_plane_vs_real", "roughness", "structure")))
    assert all(math.isfinite(v) for v in scores["identity"].values())
    # a blank output has no edges, in plane or through it: those figures are undefined (NaN), not 0
    assert all(math.isnan(scores["blank"][f"{k}_ct2mri"]) for k in ("through_plane_vs_real", "roughness", "structure"))
    assert scores["blank"]["dice_ct2mri"] == 0.0 and scores["identity"]["dice_ct2mri"] == 1.0
    # predicting air inside the head is the worst possible synthetic CT: MAE near 1000 HU
    assert scores["blank"]["mae_mri2ct_hu"] > 500
    assert scores["identity"]["mae_mri2ct_hu"] < scores["blank"]["mae_mri2ct_hu"]
    assert scores["identity"]["ssim_ct2mri"] > scores["blank"]["ssim_ct2mri"]


@pytest.mark.parametrize("name", ["blank", "identity"])
def test_volume_and_2d_slices_give_the_same_paired_metrics(tiny_phantoms: Path, name: str) -> None:
    """The converted volume and the same anatomy's 2D test slices, scored on their own grids, agree: the PNGs
    hold the volume's slices through the same window and framing. Differences come from the 8-bit export (half a
    grey level: 0.24 HU in the 120 HU window) and the few top / bottom slices the PNG export skipped."""
    spec = spec_for_dataset(tiny_phantoms, image_size=32)
    g = {"blank": blank, "identity": identity}[name]
    volume = evaluate_volume_pairs(held_out_volume_pairs(tiny_phantoms), {"ct2mri": g, "mri2ct": g}, spec)
    slices = evaluate_image_pairs(held_out_image_pairs(tiny_phantoms), {"ct2mri": g, "mri2ct": g}, spec,
                                  tiny_phantoms)
    for key in ("mae_mri2ct_hu_window", "mae_ct2mri", "ssim_ct2mri", "ssim_mri2ct_window"):
        assert slices[key] == pytest.approx(volume[key], rel=0.05, abs=0.02), key


def test_a_perfect_synthetic_ct_in_a_brain_window_covers_the_whole_head(tiny_phantoms: Path) -> None:
    """Bug: the head masks of paired evaluation were taken on *windowed* CT, where a brain window turns fat and skin
    black, so a perfect synthetic CT had Dice below 1. The masks are now physical (HU), as conversion's are."""
    from ctmri_monai.engines.slices import SliceRun, translate_volume
    from ctmri_monai.handlers.paired import volume_consistency
    from ctmri_monai.io.volume import load_volume
    from ctmri_monai.metrics.paired import dice
    from ctmri_monai.transforms.mask import head_mask

    spec = make_spec(32, pixdim=(6.0, 6.0), window=(-20.0, 100.0))  # level 40, width 120
    ct_path, _ = held_out_volume_pairs(tiny_phantoms)[0]
    image = load_volume(ct_path).image
    perfect = translate_volume(ct_path, image, identity, spec, "ct", "ct", SliceRun(amp=False))  # the real CT back
    out = perfect.output.astype("float32")
    figures = volume_consistency(out, out, out, perfect.frames.inverse.input_head, perfect, "ct")
    assert figures["dice"] == 1.0
    # negative control: the windowed mask of the same perfect output misses the fat and skin
    assert dice(perfect.source_mask, head_mask(perfect.fake_unit)) < 0.95
