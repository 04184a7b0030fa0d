"""Tests of ctmri_monai.metrics.consistency: through-plane consistency and structure figures of volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from ctmri_monai.metrics.consistency import (
    CONSISTENCY_DIRECTIONS,
    consistency_metrics,
    ngf_alignment,
    z_edge_correlation,
    z_gradient_correlation,
    z_roughness_ratio,
)
from ctmri_monai.phantoms import make_subject


def _unit(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0) * 2.0 - 1.0


def flicker(volume: np.ndarray, shift: int = 1) -> np.ndarray:
    """The same volume with every other axial slice shifted by ``shift`` px: what slice-wise translation risks."""
    out = volume.copy()
    out[:, :, 1::2] = np.roll(volume[:, :, 1::2], shift, axis=0)
    return out


@pytest.fixture(scope="module")
def head() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(CT, MRI, head mask) of one phantom, (64, 64, 24); CT (brain window) and MRI in [-1, 1]."""
    p = make_subject(0, shape=(64, 64, 24), spacing=(3.0, 3.0, 4.0))
    ct = _unit(p.ct.astype(np.float64), -20.0, 100.0)
    mri = _unit(p.mri.astype(np.float64), 0.0, float(np.percentile(p.mri, 99.5)))
    return ct, mri, p.labels > 0


def test_identical_volumes_score_best_on_any_scale(head: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    ct, mri, mask = head
    best = {"z_gradient_corr": 1.0, "z_edge_corr": 1.0, "z_roughness_ratio": 1.0, "ngf_alignment": 1.0}
    assert set(CONSISTENCY_DIRECTIONS) == set(best)
    assert consistency_metrics(mri, mri, mask, reference=mri) == pytest.approx(best, abs=1e-9)
    # Each volume on its own scale (HU-like here): correlations and ratios of one volume are affine-invariant.
    hu = 1000.0 * mri + 40.0
    assert consistency_metrics(hu, mri, mask, reference=mri) == pytest.approx(best, abs=1e-9)
    assert z_edge_correlation(-hu, mri, mask) == pytest.approx(1.0)
    assert ngf_alignment(-hu, mri, mask) == pytest.approx(1.0)
    assert math.isnan(consistency_metrics(mri, mri, mask)["z_gradient_corr"])  # no reference


def test_through_plane_figures_separate_flicker(head: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Consistent outputs (the real volume, the real volume plus noise) beat the flickering one: against the paired
    reference, and without it against the CT input (another modality)."""
    ct, mri, mask = head
    flick = flicker(mri)
    noisy = mri + 0.05 * np.random.default_rng(0).standard_normal(mri.shape)
    assert z_gradient_correlation(noisy, mri, mask) > 0.9
    assert z_gradient_correlation(flick, mri, mask) < 0.7
    assert z_edge_correlation(mri, ct, mask) > z_edge_correlation(flick, ct, mask) + 0.2
    assert z_edge_correlation(flick, mri, mask) < 0.6
    assert abs(z_roughness_ratio(mri, ct, mask) - 1.0) < 0.1
    assert z_roughness_ratio(flick, ct, mask) > 1.2
    assert z_roughness_ratio(flick, mri, mask) > 1.2
    assert z_roughness_ratio(gaussian_filter(mri, (0, 0, 1.0)), mri, mask) < 0.8  # smoothed along z: below 1


def test_structure_figure_drops_for_flip_blur_and_flicker(head: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    ct, mri, mask = head
    flipped, blurred, flick = mri[::-1].copy(), gaussian_filter(mri, (2.0, 2.0, 0.0)), flicker(mri)
    for bad in (flipped, blurred):
        assert ngf_alignment(bad, mri, mask) < 0.8
    assert ngf_alignment(flick, mri, mask) < 0.95
    real = ngf_alignment(mri, ct, mask)  # the MRI of the CT input's anatomy
    assert 0.0 < real < 1.0
    for bad in (flipped, blurred):
        assert ngf_alignment(bad, ct, mask) < real - 0.05
    assert ngf_alignment(flick, ct, mask) < real


def test_empty_mask_gives_nan(head: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    ct, mri, mask = head
    empty = np.zeros_like(mask)
    assert all(math.isnan(v) for v in consistency_metrics(mri, ct, empty, reference=mri).values())
    one_slice = empty.copy()
    one_slice[:, :, 12] = mask[:, :, 12]  # no voxel pair along z
    assert math.isnan(z_gradient_correlation(mri, mri, one_slice))
    assert math.isnan(z_edge_correlation(mri, ct, one_slice))
    assert math.isnan(z_roughness_ratio(mri, ct, one_slice))
    assert ngf_alignment(mri, mri, one_slice) == pytest.approx(1.0)
    flat = np.zeros_like(mri)
    assert math.isnan(z_gradient_correlation(flat, mri, mask))  # no z-variation: undefined


def test_inputs_mask_and_slices(head: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    ct, mri, mask = head
    outside = mri.copy()
    outside[~mask] = np.nan  # only voxels inside the mask are read
    assert z_edge_correlation(outside, ct, mask) == pytest.approx(z_edge_correlation(mri, ct, mask))
    assert ngf_alignment(torch.from_numpy(mri), ct, torch.from_numpy(mask)) == pytest.approx(
        ngf_alignment(mri, ct, mask))
    z = 12
    assert ngf_alignment(mri[:, :, z], ct[:, :, z], mask[:, :, z]) == pytest.approx(
        ngf_alignment(mri[:, :, z:z + 1], ct[:, :, z:z + 1], mask[:, :, z:z + 1]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        z_edge_correlation(outside, ct, None)
    with pytest.raises(ValueError, match="shapes differ"):
        z_gradient_correlation(mri[:, :, :10], mri, mask)
    with pytest.raises(ValueError, match="mask shape"):
        ngf_alignment(mri, ct, mask[:, :, :10])
    with pytest.raises(ValueError, match="dimensions"):
        z_roughness_ratio(mri[:, :, 0], ct[:, :, 0], mask[:, :, 0])
