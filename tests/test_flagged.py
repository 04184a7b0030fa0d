"""Figures from a disagreement map (regions, volume, centroids, worst slices, outlines), AUROC, and the lesion
phantoms."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from ctmri_monai.metrics.flagged import flag_figures, flag_mask, outline_regions, voxel_auroc


def _two_regions() -> tuple[np.ndarray, np.ndarray]:
    dmap = np.zeros((20, 20, 6), np.float32)
    dmap[2:6, 2:6, 1:3] = 0.9  # 32 voxels
    dmap[10:13, 10:13, 4] = 0.6  # 9 voxels
    dmap[15, 15, 5] = 1.0  # one voxel: not a region
    return dmap, np.ones(dmap.shape, bool)


def test_figures_of_known_regions():
    dmap, head = _two_regions()
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    affine[:3, 3] = [-10.0, 20.0, 3.0]
    figures = flag_figures(dmap, head, affine)
    assert figures["region_count"] == 2
    big, small = figures["regions"]
    assert big["voxels"] == 32 and big["volume_mm3"] == 32 * 20.0 and small["voxels"] == 9
    assert big["centroid_voxel"] == [3.5, 3.5, 1.5]
    assert big["centroid_patient"] == [-10.0 + 2 * 3.5, 20.0 + 2 * 3.5, 3.0 + 5 * 1.5]
    assert figures["flagged_share"] == pytest.approx(41 / head.size, abs=1e-5)
    assert [w["slice"] for w in figures["worst_slices"]] == [1, 2, 4]
    json.dumps(figures)  # JSON-ready


def test_flag_mask_closes_rings_and_respects_the_head():
    ring = np.zeros((12, 12, 1), np.float32)
    ring[3:9, 3:9] = 0.8
    ring[4:8, 4:8] = 0.1  # the interior of an erased structure: its edges enclose it
    assert flag_mask(ring)[5, 5, 0]
    head = np.zeros(ring.shape, bool)
    assert not flag_mask(ring, head).any()
    assert not flag_mask(ring * 0.5).any()  # below the threshold


def test_outline_draws_the_boundary_only():
    image = np.full((10, 10), 100, np.uint8)
    mask = np.zeros((10, 10), bool)
    mask[3:7, 3:7] = True
    rgb = outline_regions(image, mask)
    red = np.all(rgb == (255, 0, 0), axis=-1)
    assert red[3, 3] and red[3, 5] and not red[4, 4] and not red[0, 0]
    assert red.sum() == 12 and (rgb[~red] == 100).all()
    assert outline_regions(image, mask, zoom=3).shape == (30, 30, 3)
    with pytest.raises(ValueError, match="differ"):
        outline_regions(image, mask[:5])


def test_auroc_equals_the_pairwise_count():
    """The rank formula equals the probability, counted over all pairs, that a true voxel outscores a false one
    (ties half); a perfect score gives 1, a reversed one 0."""
    rng = np.random.default_rng(0)
    score = np.round(rng.uniform(size=60), 1)  # ties on purpose
    truth = rng.uniform(size=60) < 0.3
    pairs = [(a > b) + 0.5 * (a == b) for a, b in itertools.product(score[truth], score[~truth])]
    assert voxel_auroc(score, truth) == pytest.approx(np.mean(pairs))
    assert voxel_auroc(truth.astype(float), truth) == 1.0 and voxel_auroc(-truth.astype(float), truth) == 0.0
    assert np.isnan(voxel_auroc(score, np.zeros(60, bool)))


def test_lesion_phantoms_split_the_domains(tmp_path):
    """CT domain: bleeds only; MRI domain: masses only; held-out subjects paired outside the volumes layout."""
    from ctmri_monai.apps.cli import main

    assert main(["make-phantoms", "--output-dir", str(tmp_path), "--subjects", "6", "--lesions"]) == 0
    details = json.loads((tmp_path / "phantoms.json").read_text())["subject_details"]
    for name, d in details.items():
        kinds = {"ct": ("volumes/ct",), "mri": ("volumes/mri",), "both": ("heldout/ct", "heldout/mri")}[d["domain"]]
        for folder in kinds:
            assert (tmp_path / folder / f"{name}.nii.gz").is_file()
        if d["domain"] == "ct":
            assert d["lesion"] == "bleed" and not (tmp_path / "volumes/mri" / f"{name}.nii.gz").exists()
        if d["domain"] == "mri":
            assert d["lesion"] == "mass" and not (tmp_path / "volumes/ct" / f"{name}.nii.gz").exists()
    assert {d["lesion"] for d in details.values() if d["domain"] == "both"} == {"bleed", "mass"}


def _ring_map() -> tuple[np.ndarray, np.ndarray]:
    """An axially stored (X, Y, Z) map: the rim of an erased structure in two axial slices (its interior is filled
    in the axial plane only) and a solid blob in three others; voxels of 1 x 1.2 x 5 mm."""
    dmap = np.zeros((16, 14, 10), np.float32)
    dmap[3:11, 3:10, 3:5] = 0.9
    dmap[5:9, 5:8, 3:5] = 0.1  # the interior: flagged only when its axial slices' holes are filled
    dmap[12:15, 10:13, 6:9] = 0.7
    affine = np.diag([1.0, 1.2, 5.0, 1.0])
    affine[:3, 3] = [-8.0, 4.0, 30.0]
    return dmap, affine


@pytest.mark.parametrize("order", [(2, 1, 0), (1, 2, 0), (0, 2, 1)], ids=["sagittal", "sagittal-rows-ap", "coronal"])
def test_figures_follow_the_axial_axis_of_the_affine(order):
    """The same map stored sagittally or coronally (array axes permuted, the affine's columns with them) gives the
    figures of the axial storage: the rim's interior is filled in axial planes and the worst slices are axial."""
    dmap, affine = _ring_map()
    axial = flag_figures(dmap, np.ones(dmap.shape, bool), affine)
    assert axial["region_count"] == 2 and axial["regions"][0]["voxels"] == 8 * 7 * 2  # the rim, filled
    assert [w["slice"] for w in axial["worst_slices"]] == [3, 4, 6]
    stored = np.transpose(dmap, order)
    permuted = affine.copy()
    permuted[:3, :3] = affine[:3, :3][:, list(order)]
    other = flag_figures(stored, np.ones(stored.shape, bool), permuted)
    for region in axial["regions"]:  # voxel centroids in the stored array's own axis order
        region["centroid_voxel"] = [region["centroid_voxel"][a] for a in order]
    assert other == axial
    # negative control: the same array with the axial storage's affine fills the wrong planes
    assert flag_figures(stored, np.ones(stored.shape, bool), affine) != axial
