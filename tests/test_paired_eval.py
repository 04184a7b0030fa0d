"""Paired evaluation on held-out phantom volume pairs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ctmri_monai.checkpoint import ModelSpec
from ctmri_monai.paired_eval import evaluate_volume_pairs, held_out_volume_pairs


def test_held_out_pairs_are_the_phantom_test_subjects(tiny_phantoms: Path) -> None:
    pairs = held_out_volume_pairs(tiny_phantoms)
    test_subjects = json.loads((tiny_phantoms / "phantoms.json").read_text())["test_subjects"]
    assert [ct.name.split(".")[0] for ct, _ in pairs] == test_subjects
    assert all(ct.name == mri.name and mri.parent.name == "mri" for ct, mri in pairs)
    assert held_out_volume_pairs(tiny_phantoms / "trainA") == []


def test_paired_metrics_are_finite_and_rank_generators(tiny_phantoms: Path) -> None:
    spec = ModelSpec(image_size=32, pixdim=(6.0, 6.0)).state_dict()
    pairs = held_out_volume_pairs(tiny_phantoms)

    def blank(x: torch.Tensor) -> torch.Tensor:  # predicts air everywhere
        return torch.full_like(x, -1.0)

    def identity(x: torch.Tensor) -> torch.Tensor:  # keeps the anatomy, wrong contrast
        return x

    scores = {name: evaluate_volume_pairs(pairs, {"ct2mri": g, "mri2ct": g}, spec, batch_size=8)
              for name, g in (("blank", blank), ("identity", identity))}
    for result in scores.values():
        assert result["n_pairs"] == len(pairs) == 1
        assert all(math.isfinite(v) for v in result.values())
    # predicting air inside the head is the worst possible synthetic CT: MAE near 1000 HU
    assert scores["blank"]["mae_mri2ct_hu"] > 500
    assert scores["identity"]["mae_mri2ct_hu"] < scores["blank"]["mae_mri2ct_hu"]
    assert scores["identity"]["ssim_ct2mri"] > scores["blank"]["ssim_ct2mri"]
