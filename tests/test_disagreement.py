"""The disagreement map, proven on planted errors in phantom conversions (CPU, 64 x 64 x 16 heads, seconds).

The model that "converts well" is the tissue oracle fitted on each phantom's own pair (`phantoms.oracle`): the
best per-pixel translation of that subject, deterministic, trained in milliseconds, a true function of its input.
Each planted mistake is repeated by the forward generator under flips and shifts (`ConsistentMistake`), as a
trained network repeats its own, so the stability signal cannot find it by comparing with a clean re-run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ctmri_monai.engines.disagreement import disagreement_map, disagreement_signals
from ctmri_monai.metrics.flagged import flag_mask, region_dice, voxel_auroc
from ctmri_monai.phantoms import make_subject
from ctmri_monai.phantoms.oracle import HIDDEN_QUANTUM, HiddenCopy, TissueOracle, hide, oracle_conversion
from ctmri_monai.phantoms.plant import ConsistentMistake, plant_cases
from ctmri_monai.phantoms.trust import clean_share, planted_scores
from ctmri_monai.transforms.mask import head_mask

SHAPE, SPACING = (64, 64, 16), (3.0, 3.0, 8.0)
AUROC_GOAL, DICE_GOAL, CLEAN_GOAL = 0.9, 0.5, 0.01


@pytest.fixture(scope="module")
def bleed():
    """Subject 1 holds a bleed."""
    return make_subject(1, 0, SHAPE, SPACING)


@pytest.fixture(scope="module")
def other():
    """Subject 7 holds a mass: a different head."""
    return make_subject(7, 0, SHAPE, SPACING)


def test_oracle_converts_well(bleed):
    """The oracle's synthetic MRI is far closer to the true counterpart than the best constant is."""
    x, y, true, _, _ = oracle_conversion(bleed, "ct2mri")
    head = head_mask(x)
    mae = np.abs(y - true)[head].mean()
    constant = np.abs(np.median(true[head]) - true)[head].mean()
    assert mae < 0.4 * constant


def test_hidden_copy_reads_the_input_back():
    """Steganography: the visible output moves by under one grey step, and the backward side recovers the input;
    without the hidden payload it does not."""
    rng = np.random.default_rng(0)
    visible = rng.uniform(-1, 1, (8, 8, 3)).astype(np.float32)
    secret = rng.uniform(-1, 1, (8, 8, 3)).astype(np.float32)
    hidden = hide(visible, secret)
    assert np.abs(hidden - visible).max() <= HIDDEN_QUANTUM
    read = HiddenCopy()(torch.from_numpy(hidden).permute(2, 0, 1)[:, None])[:, 0].permute(1, 2, 0).numpy()
    assert np.abs(read - secret).max() < 1e-4
    plain = HiddenCopy()(torch.from_numpy(visible).permute(2, 0, 1)[:, None])[:, 0].permute(1, 2, 0).numpy()
    assert np.abs(plain - secret).max() > 0.5


class CountingSlices(torch.nn.Module):
    """A generator that counts the slices it converts."""

    def __init__(self, base) -> None:
        super().__init__()
        self.base, self.slices = base, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.slices += int(x.shape[0])
        return self.base(x)


def test_map_api_on_frames(bleed):
    """float32 in [0, 1] on the frames, zero outside the head, from the forward generator alone with two extra
    passes per slice (counted), the two signals kept; a 2.5D generator (context 1) runs the same road."""
    x, y, _, forward, _ = oracle_conversion(bleed, "ct2mri")
    head = head_mask(x)
    counting = CountingSlices(forward)
    result = disagreement_map(x, y, counting, "ct2mri", head=head, context=1, batch_size=5, amp=False)
    assert result.map.dtype == np.float32 and result.map.shape == x.shape
    assert 0.0 <= result.map.min() and result.map.max() <= 1.0 and not result.map[~head].any()
    assert result.passes == 2 and counting.slices == 2 * x.shape[2]
    assert set(result.signals) == set(result.scales) == {"structure", "stability"}
    alone = disagreement_map(x, y, None, "ct2mri", head=head)  # no generator at all: the structure signal alone
    assert alone.passes == 0 and set(alone.signals) == {"structure"}
    np.testing.assert_array_equal(alone.signals["structure"], result.signals["structure"])
    with pytest.raises(ValueError, match="direction"):
        disagreement_map(x, y, None, "ct2pet")
    with pytest.raises(ValueError, match="moves"):
        disagreement_signals(x, y, forward, moves=("rotate",))


def test_stability_sees_an_inconsistent_mistake_not_a_consistent_one(bleed):
    """The flip / shift signal flags a mistake the generator does not repeat, and is blind (zero) to one it does:
    why the planted proofs repeat their mistakes."""
    x, y, _, forward, _ = oracle_conversion(bleed, "ct2mri")
    planted, region = plant_cases(y, bleed.labels)["hallucination"]
    head = head_mask(x)
    once, _ = disagreement_signals(x, planted, forward, amp=False)
    assert voxel_auroc(once["stability"], region, head) > 0.99
    repeated, _ = disagreement_signals(x, planted, ConsistentMistake(forward, x, planted - y), amp=False)
    assert not repeated["stability"].any()


@pytest.mark.parametrize("direction", ["ct2mri", "mri2ct"])
def test_clean_conversions_flag_little(bleed, other, direction):
    """On the oracle's unplanted conversions at most 1 % of the head is flagged."""
    for phantom in (bleed, other):
        assert clean_share(phantom, direction) <= CLEAN_GOAL


def test_planted_hallucination_is_found(bleed, other):
    """A blob of CSF-like tissue in the white matter of a synthetic MRI: voxel AUROC >= 0.9 and flagged-region
    Dice >= 0.5, with an honest output and one that hides its input (Chu et al. 2017)."""
    for phantom in (bleed, other):
        for hidden in (False, True):
            auroc, dice = planted_scores(phantom, "ct2mri", hidden, ("map",))["hallucination"]["map"]
            assert auroc >= AUROC_GOAL and dice >= DICE_GOAL, (phantom.name, hidden, auroc, dice)


def test_a_hidden_copy_does_not_move_the_map(bleed):
    """Chu et al.'s trap on a planted deletion: an output that hides its input below one grey level (what fools a
    cycle through the backward generator) leaves the map's ranking where it was."""
    honest = planted_scores(bleed, "ct2mri", False, ("map",))["deletion"]
    hidden = planted_scores(bleed, "ct2mri", True, ("map",))["deletion"]
    assert hidden["map"][0] == pytest.approx(honest["map"][0], abs=0.01)
    assert hidden["map"][0] > 0.75


def test_negative_controls_fail_the_checks(bleed, other):
    """A map of noise, or the map of a different head, does not pass the hallucination checks the real map
    passes."""
    x, y, _, forward, _ = oracle_conversion(bleed, "ct2mri")
    head = head_mask(x)
    planted, region = plant_cases(y, bleed.labels)["hallucination"]
    real = disagreement_map(x, planted, ConsistentMistake(forward, x, planted - y), "ct2mri", head=head,
                            amp=False).map
    assert voxel_auroc(real, region, head) >= AUROC_GOAL and region_dice(real, region, head) >= DICE_GOAL
    noise = np.random.default_rng(0).uniform(0, 1, x.shape).astype(np.float32)
    assert voxel_auroc(noise, region, head) < AUROC_GOAL and region_dice(noise, region, head) < DICE_GOAL
    ox, oy, _, oforward, _ = oracle_conversion(other, "ct2mri")
    oplanted, _ = plant_cases(oy, other.labels)["hallucination"]
    wrong = disagreement_map(ox, oplanted, ConsistentMistake(oforward, ox, oplanted - oy), "ct2mri",
                             head=head_mask(ox), amp=False).map
    assert region_dice(wrong, region, head) < DICE_GOAL
    assert not flag_mask(wrong, head)[region].mean() >= 0.5


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="measured miss (benchmarks.md, 'Disagreement map'): the phantoms' own CT / "
                   "MRI edge differences along the skull reach the level of these plants, so the flagged region "
                   "does not reach Dice 0.5 (AUROC 0.79-0.91)")
@pytest.mark.parametrize("direction, kind", [("ct2mri", "deletion"), ("ct2mri", "misplacement"),
                                             ("mri2ct", "hallucination"), ("mri2ct", "deletion"),
                                             ("mri2ct", "misplacement")])
def test_planted_goal_not_yet_met(bleed, direction, kind):
    """The issue's goal for the other kinds and directions: strict xfail, so meeting it turns this red."""
    auroc, dice = planted_scores(bleed, direction, False, ("map",))[kind]["map"]
    assert auroc >= AUROC_GOAL and dice >= DICE_GOAL


@pytest.mark.parametrize("framing", ["spacing", "fit_by_head"])
def test_map_comes_back_on_the_input_grid(tmp_path, framing):
    """The translation's own inverse brings a frame-space array back as `translate_volume` brings its output: the
    raw output frames brought back equal the written synthetic MRI inside the head (a non-square, rotated-axes
    volume), also for a "fit" model that frames volumes by the head; a flipped array does not. The conversion's map
    (`volume_disagreement`) lies on the input's grid, zero outside the input's head."""
    from conftest import make_spec

    from ctmri_monai.convert.trust import volume_disagreement
    from ctmri_monai.engines.slices import SliceRun, translate_volume
    from ctmri_monai.io.volume import load_volume
    from ctmri_monai.phantoms.oracle import unit_volumes
    from ctmri_monai.phantoms.write import _write_nifti
    from ctmri_monai.spec import TrainingReference

    # head framing applies to square pixels; the "spacing" case keeps a non-square one
    phantom = make_subject(2, 0, (40, 36, 8), (4.0, 5.0, 8.0) if framing == "spacing" else (5.0, 5.0, 8.0))
    path = tmp_path / "ct.nii.gz"
    _write_nifti(path, phantom.ct, phantom.affine)
    units = unit_volumes(phantom, (-1000.0, 1000.0))
    forward = TissueOracle().fit(units["ct"], units["mri"])
    image = load_volume(path).image
    spec = (make_spec(image_size=48, pixdim=(4.0, 4.0)) if framing == "spacing" else
            make_spec(image_size=48, pixdim=None, framing="fit", training={"ct": TrainingReference(head_extent_px=20)}))
    tr = translate_volume(path, image, forward, spec, "ct", "mri", SliceRun(amp=False))
    inverse = tr.frames.inverse
    back = inverse.to_input(tr.fake_unit)
    assert back.shape == phantom.ct.shape and back.dtype == np.float32
    # away from the head's edge, where the written output blends with the background
    inside = ndimage.binary_erosion(tr.output > -1.0, np.ones((5, 5, 1), bool))
    assert inside.mean() > 0.1
    assert np.abs(back[inside] - np.clip(tr.output[inside], -1, 1)).max() < 1e-4
    flipped = inverse.to_input(tr.fake_unit[:, ::-1].copy())
    assert np.abs(flipped[inside] - tr.output[inside]).max() > 0.5
    trust = volume_disagreement(tr, forward, spec, "ct2mri", {"amp": False})
    assert trust.grid.shape == phantom.ct.shape and 0.0 <= trust.grid.min() and trust.grid.max() <= 1.0
    assert not trust.grid[~np.asarray(inverse.input_head, bool)].any()
    assert trust.figures["passes"] == 2
