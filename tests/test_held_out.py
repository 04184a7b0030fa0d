"""Held out means held out (issue 18): the volumes the paired evaluation scores come from the same list and the same
function (`split_files`) as the training files, so no subject used in training is scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_spec
from test_convert import head_hu, save_nifti

from ctmri_monai.data import build_unpaired_dataset
from ctmri_monai.handlers import paired
from ctmri_monai.handlers.paired import PairedMetricsHandler

SEEDS = range(6)


def _trained_and_scored(root: Path, seed: int, val_fraction: float, monkeypatch: pytest.MonkeyPatch
                        ) -> tuple[set[str], set[str], list[tuple[Path, Path]]]:
    """(CT files, MRI files) of the training dataset the bundle builds, and the pairs the paired-metrics handler
    of an evaluation scores with the same seed and fraction."""
    spec = make_spec(32, pixdim=(6.0, 6.0))
    train = build_unpaired_dataset(root, spec, "train", val_fraction=val_fraction, seed=seed, slices_per_volume=1)
    scored: list[tuple[Path, Path]] = []
    monkeypatch.setattr(paired, "evaluate_volume_pairs",
                        lambda pairs, *a, **k: scored.extend(pairs) or {})
    PairedMetricsHandler(root, spec, {}, val_fraction=val_fraction, seed=seed).compute()
    return {str(p) for p in train.ct.files}, {str(p) for p in train.mri.files}, scored


def test_phantom_test_subjects_are_scored_and_never_trained(tiny_phantoms: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the fix, training on phantom volumes drew from every subject (seed 1 trained subj002, the one test
    subject, which was then scored)."""
    test_subjects = json.loads((tiny_phantoms / "phantoms.json").read_text())["test_subjects"]
    for seed in SEEDS:
        ct, mri, scored = _trained_and_scored(tiny_phantoms, seed, 0.1, monkeypatch)
        assert [p.name.split(".")[0] for p, _ in scored] == test_subjects
        assert not ({str(p) for p, _ in scored} & ct) and not ({str(p) for _, p in scored} & mri), seed


def test_a_plain_volumes_folder_scores_only_subjects_neither_domain_trained_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight paired subjects plus one CT without its MRI (the two lists differ, as in real folders): for every
    seed, each scored subject's CT and MRI are both outside the training files, and some seeds do score."""
    for domain in ("ct", "mri"):
        (tmp_path / "volumes" / domain).mkdir(parents=True)
        names = [f"s{i}" for i in range(8)] + (["extra"] if domain == "ct" else [])
        for i, name in enumerate(names):
            save_nifti(tmp_path / "volumes" / domain / f"{name}.nii.gz",
                       head_hu((20, 18, 4), seed=i) + 1000 * (domain == "mri"), np.eye(4))
    n_scored = 0
    for seed in SEEDS:
        ct, mri, scored = _trained_and_scored(tmp_path, seed, 0.3, monkeypatch)
        assert not ({str(p) for p, _ in scored} & ct) and not ({str(p) for _, p in scored} & mri), seed
        assert all(p.name == q.name for p, q in scored)
        n_scored += len(scored)
    assert n_scored > 0
    assert PairedMetricsHandler(tmp_path, make_spec(), {}, val_fraction=0.0).compute() == {}  # nothing held out
