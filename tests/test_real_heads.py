"""Real heads reach the generator as its training images did (issue 17): the head mask from the input's own units,
head-scale framing, MRI standardisation onto the training landmarks, and the domain gap of every conversion.

Tolerances: the conversion / 2D-road agreement reuses tests/test_contract.py's derivation; an identity generator has
gain 1, so the two roads differ by the PNG's 8-bit rounding (1/255 in [-1, 1]) times two. Head sizes are compared
within 5 % (the issue's figure); intensities within 2x the training halves' distance (the issue's figure).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ctmri_monai.convert.batch import format_table, run_batch
from ctmri_monai.convert.options import BatchOptions, ConvertOptions, ModelSource
from ctmri_monai.data import spec_for_dataset
from ctmri_monai.engines.slices import translate_volume
from ctmri_monai.phantoms import ct_to_png, make_phantoms, make_subject, mri_to_png, radiological_slice
from ctmri_monai.spec import OLD_CONTRACT_NOTE, ModelSpec, window_from_level_width
from ctmri_monai.transforms import image_pipeline
from ctmri_monai.transforms.gap import in_head_quantiles, quantile_distance
from ctmri_monai.transforms.intensity import ct_to_unit, eight_bit_to_unit, mri_range
from ctmri_monai.transforms.mask import head_mask, image_head_mask, mask_extent, physical_head_mask
from ctmri_monai.transforms.pipelines import volume_pipeline

S = 32
QUANTUM = 1.0 / 255.0
MISS_LIMIT = 0.005  # at most 0.5 % of true head voxels outside the mask
BRAIN_WINDOW = window_from_level_width(40, 120)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x[:, :1].clone()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four phantom heads, 64 x 64 x 16 at 3 mm; a second card without pixel sizes or MRI normalisation, like the
    paper's data ("fit" framing, MRI normalisation unknown)."""
    out = tmp_path_factory.mktemp("real_heads")
    make_phantoms(out, subjects=4, shape=(64, 64, 16), spacing=(3.0, 3.0, 8.0), seed=2, write_dicom=False)
    card = json.loads((out / "dataset.json").read_text())
    card["ct"]["pixel_spacing_mm"] = card["mri"]["pixel_spacing_mm"] = card["mri"]["normalisation"] = None
    (out / "fit_card.json").write_text(json.dumps(card))
    return out


@pytest.fixture(scope="module")
def fit_spec(phantoms: Path) -> ModelSpec:
    return spec_for_dataset(phantoms, dataset_card=phantoms / "fit_card.json", image_size=S,
                            network={"ngf": 4, "n_blocks": 1})


def _test_volume(phantoms: Path, domain: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    name = json.loads((phantoms / "phantoms.json").read_text())["test_subjects"][0]
    img = nib.load(phantoms / "volumes" / domain / f"{name}.nii.gz")
    labels = np.asarray(nib.load(phantoms / "volumes" / "labels" / f"{name}.nii.gz").dataobj)
    return np.asarray(img.dataobj, np.float32), img.affine, labels


def _meta(array: np.ndarray, affine: np.ndarray) -> MetaTensor:
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array, np.float32)[None]), affine=torch.as_tensor(affine))


def _frames(array: np.ndarray, affine: np.ndarray, domain: str, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    d = volume_pipeline(spec, domain, head_key="head")({"image": _meta(array, affine)})
    return d["image"].as_tensor()[0].numpy(), np.asarray(d["head"])[0] > 0


def _per_slice_extent(mask: np.ndarray) -> float:
    """Median over the slices that hold a head (a tenth of the widest section or more) of each slice's longer
    bounding-box side: the head size a slice of the volume shows, as each training image shows one."""
    area = mask.sum(axis=(0, 1))
    return float(np.median([mask_extent(mask[:, :, k])[0] for k in np.flatnonzero(area >= 0.1 * area.max())]))


def _taper(volume: np.ndarray, top: float) -> np.ndarray:
    """The volume with each axial slice's content shrunk about the centre, from 1 at the first slice to ``top``
    at the last (a cranial taper, as real heads narrow to the vertex)."""
    from scipy.ndimage import affine_transform

    centre = (np.asarray(volume.shape[:2], np.float64) - 1) / 2.0
    out = np.empty_like(volume)
    for k in range(volume.shape[2]):
        f = 1.0 - (1.0 - top) * k / max(volume.shape[2] - 1, 1)
        out[:, :, k] = affine_transform(volume[:, :, k], np.eye(2) / f, centre - centre / f, order=1,
                                        cval=float(volume.min()))
    return out


def _missed(truth: np.ndarray, mask: np.ndarray) -> float:
    return float((truth & ~mask).sum() / truth.sum())


# ------------------------------------------------------------------------------------------------ 1. the mask
def test_the_head_mask_keeps_every_tissue_in_volumes_and_2d_images_of_both_domains():
    for index in range(3):
        subject = make_subject(index, seed=5, shape=(64, 64, 20), spacing=(3.0, 3.0, 6.0))
        head = subject.labels > 0
        lo, hi = mri_range(subject.mri, (0.5, 99.5))
        pngs = {"ct": ct_to_png(subject.ct), "mri": mri_to_png(subject.mri, lo, hi)}
        for domain, volume in (("ct", subject.ct), ("mri", subject.mri)):
            assert _missed(head, physical_head_mask(volume, domain)) <= MISS_LIMIT
            assert float((physical_head_mask(volume, domain) & ~head).sum() / head.sum()) <= 0.02  # not all image
            images = image_head_mask(eight_bit_to_unit(pngs[domain]).numpy())  # 2D 8-bit images, slice by slice
            assert _missed(head, images) <= MISS_LIMIT, (index, domain)
        # Negative control: the mask of the brain-window network input loses the scalp (fat is black there).
        assert _missed(head, head_mask(ct_to_unit(subject.ct, BRAIN_WINDOW).numpy())) > 10 * MISS_LIMIT


def _two_d_road(phantoms: Path, spec: ModelSpec, name: str, z: int, folder: str) -> np.ndarray:
    pixel = json.loads((phantoms / "dataset.json").read_text())["ct"]["pixel_spacing_mm"]
    pipeline = image_pipeline(spec, source_pixdim=(pixel, pixel))
    x = pipeline({"image": str(phantoms / folder / f"{name}_z{z:03d}.png")})["image"]
    y = MetaTensor(identity(x.as_tensor()[None])[0], meta=dict(x.meta), applied_operations=list(x.applied_operations))
    return pipeline.inverse({"image": y})["image"].as_tensor()[0].numpy()


@pytest.mark.parametrize("direction", ["ct2mri", "mri2ct"])
def test_identity_conversion_agrees_with_the_2d_road_inside_the_whole_head_mask_on_and_off(phantoms, direction):
    spec = spec_for_dataset(phantoms, image_size=S, network={"ngf": 4, "n_blocks": 1})  # the card's pixel size
    source, target = direction.split("2")
    volume, affine, labels = _test_volume(phantoms, source)
    name = json.loads((phantoms / "phantoms.json").read_text())["test_subjects"][0]
    slices = json.loads((phantoms / "phantoms.json").read_text())["subject_details"][name]["png_slices"]
    folder = "testA" if source == "ct" else "testB"
    road = {z: _two_d_road(phantoms, spec, name, z, folder) for z in slices}
    truth = {z: radiological_slice(labels, z) > 0 for z in slices}
    scale = 1.0 if direction == "ct2mri" else (spec.ct.window[1] - spec.ct.window[0]) / 2.0
    tolerance = 2.0 * QUANTUM * scale + (0.5 if direction == "mri2ct" else 0.0)

    def unit(out: np.ndarray, z: int) -> np.ndarray:
        s = radiological_slice(out, z).astype(np.float32)
        return s if direction == "ct2mri" else (s - spec.ct.window[0]) / scale - 1.0  # HU -> [-1, 1]

    def worst(out: np.ndarray) -> float:
        return max(float(np.abs(unit(out, z) - road[z])[truth[z]].max()) for z in slices) * scale

    results = {}
    for masked in (True, False):
        t = translate_volume("test", _meta(volume, affine), identity, spec, source, target, mask_background=masked)
        results[masked] = t.output
        assert worst(t.output) <= tolerance, (masked, worst(t.output), tolerance)
    # Negative control: the same conversion with background written outside the windowed input's mask.
    windowed = head_mask(ct_to_unit(volume, spec.ct.window).numpy()) if source == "ct" else None
    if windowed is not None:
        erased = results[False].copy()
        erased[~windowed] = -1.0 if target == "mri" else -1000
        assert worst(erased) > 10 * tolerance


# ------------------------------------------------------------------------------------------ 2. head framing
@pytest.mark.parametrize("domain", ["ct", "mri"])
def test_volumes_of_any_field_of_view_are_framed_at_the_training_head_size(phantoms, fit_spec, domain):
    volume, affine, _ = _test_volume(phantoms, domain)
    median = fit_spec.reference(domain).head_extent_px
    assert fit_spec.geometry.framing == "fit" and median and 0.5 * S < median < S
    sizes: dict[str, list[float]] = {"head": [], "field_of_view": []}
    for factor in (1.0, 1.5, 2.0):
        n, big = volume.shape[0], int(round(volume.shape[0] * factor))
        wide = np.full((big, big, volume.shape[2]), volume.min(), np.float32)
        o = (big - n) // 3  # off-centre: the head-centred crop must still hold it
        wide[o:o + n, o:o + n] = volume
        for frame_by in sizes:
            spec = fit_spec.with_overrides(frame_by=frame_by) if frame_by != "head" else fit_spec
            _, mask = _frames(wide, affine, domain, spec)
            sizes[frame_by].append(_per_slice_extent(mask))
        # the inverse is exact on the input's grid (translate_volume refuses otherwise) and keeps the head
        t = translate_volume("wide", _meta(wide, affine), identity, fit_spec, domain, "mri", mask_background=False)
        assert t.output.shape == wide.shape and abs(t.gap["head_size_ratio"] - 1.0) <= 0.05
    head = np.asarray(sizes["head"])
    assert head.max() / head.min() <= 1.05 and np.all(np.abs(head / median - 1.0) <= 0.05), head
    fov = np.asarray(sizes["field_of_view"])  # negative control: the older field-of-view framing
    assert fov.max() / fov.min() > 1.5, fov


@pytest.mark.parametrize("domain", ["ct", "mri"])
def test_a_tapered_volume_shows_the_training_head_size_in_its_typical_slice(phantoms, fit_spec, domain):
    """A head that narrows to the vertex: its whole-volume bounding box is wider than its typical slice, so framing
    that box at the training median (single slices) made the typical slice smaller than in training."""
    volume, affine, _ = _test_volume(phantoms, domain)
    tapered = _taper(volume, top=0.5)
    # training heads at 70 % of the frame: room for the vertex and the skull base (these phantoms' images fill
    # 85 %, where a tapered head's widest slices would not fit the frame at the training median)
    median = 0.7 * S
    reference = dataclasses.replace(fit_spec.reference(domain), head_extent_px=median)
    spec = dataclasses.replace(fit_spec, training={**fit_spec.training, domain: reference})
    _, mask = _frames(tapered, affine, domain, spec)
    assert abs(_per_slice_extent(mask) / median - 1.0) <= 0.10, (_per_slice_extent(mask), median)
    # negative control: the taper is strong enough that bringing the whole volume's box to the median misses by >10 %
    head = physical_head_mask(tapered, domain)
    assert _per_slice_extent(head) / mask_extent(head)[0] < 0.9


# -------------------------------------------------------------------------------- 3. MRI standardisation
def test_mri_of_any_gain_offset_and_gamma_reaches_the_generator_near_the_training_images(phantoms, fit_spec):
    volume, affine, _ = _test_volume(phantoms, "mri")
    ref = fit_spec.reference("mri")
    assert not fit_spec.mri.declared and ref.landmarks() is not None and ref.halves_distance > 0
    percentiles_only = dataclasses.replace(fit_spec, mri=dataclasses.replace(fit_spec.mri, declared=True))
    unit = volume / volume.max()
    ratios = {"standardised": [], "percentiles": []}
    for gain, offset, gamma in ((3000.0, 50.0, 0.6), (200.0, 10.0, 1.6), (10000.0, 0.0, 2.0)):
        scanner = gain * unit**gamma + offset
        for name, spec in (("standardised", fit_spec), ("percentiles", percentiles_only)):
            frames, mask = _frames(scanner, affine, "mri", spec)
            distance = quantile_distance(in_head_quantiles(frames, mask), ref.quantiles)
            ratios[name].append(distance / ref.halves_distance)
    assert max(ratios["standardised"]) <= 2.0, ratios
    assert min(ratios["percentiles"]) > 2.0, ratios  # negative control: the percentiles alone leave the gap


# ------------------------------------------------------------------------------------ 4. the gap, reported
def test_every_conversion_reports_its_gap_and_far_volumes_are_flagged(phantoms, fit_spec, tmp_path):
    """Near: a scanner-like MRI (gain, gamma 2) with a 1.5x field of view, standardised and framed by the head. Far
    by head size: the same framed by its field of view (the older behaviour, an override). Far by intensity: a
    head of one flat grey (no contrast) through the percentiles alone, further from the training images than 95 %
    of them are (standardisation would stretch its noise onto the training landmarks)."""
    volume, affine, _ = _test_volume(phantoms, "mri")
    scanner = 3000.0 * (volume / volume.max()) ** 2.0
    wide = np.zeros((96, 96, volume.shape[2]), np.float32)
    wide[10:74, 20:84] = scanner
    flat = np.where(physical_head_mask(volume, "mri"), 1000.0, 0.0) + np.abs(np.random.default_rng(0).normal(
        0.0, 10.0, volume.shape))
    percentiles_only = dataclasses.replace(fit_spec, mri=dataclasses.replace(fit_spec.mri, declared=True))
    paths = {}
    for name, array in (("wide", wide), ("flat", flat)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array.astype(np.float32), affine), str(paths[name]))
    cases = (("near", fit_spec, paths["wide"], False, False), ("small", fit_spec.with_overrides(
        frame_by="field_of_view"), paths["wide"], True, False), ("flat", percentiles_only, paths["flat"], False, True))
    for name, spec, path, far_size, far_intensity in cases:
        out = tmp_path / name
        assert run_batch([path], out, "mri2ct", ModelSource(generator=identity, spec=spec),
                         BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False)) == 0
        record = json.loads((out / "summary.json").read_text())["files"][0]
        gap = record["gap"]
        assert (abs(gap["head_size_ratio"] - 1.0) > 0.15) is far_size, (name, gap)
        assert (gap["intensity_ratio"] > gap["intensity_limit"]) is far_intensity, (name, gap)
        expect_far = far_size or far_intensity
        assert gap["far"] is expect_far and any("far from training" in w for w in record["warnings"]) is expect_far
        cell = format_table([record]).splitlines()[2]
        assert f"{gap['intensity_ratio']:.2f}x/{gap['head_size_ratio']:.2f}x" in cell and cell.count("!") == expect_far
    assert gap["intensity_ratio"] > 2 * gap["intensity_limit"]  # the flat head is far beyond the limit


def test_a_checkpoint_without_training_references_converts_as_before_with_a_note(phantoms, fit_spec, caplog):
    state = fit_spec.state_dict()
    del state["training"]
    with caplog.at_level(logging.INFO):
        old = ModelSpec.from_state(state)
    assert OLD_CONTRACT_NOTE in old.notes and old.training == {}
    volume, affine, _ = _test_volume(phantoms, "ct")
    wide = np.full((96, 96, volume.shape[2]), volume.min(), np.float32)
    wide[16:80, 16:80] = volume
    t = translate_volume("old", _meta(wide, affine), identity, old, "ct", "mri", mask_background=False)
    fov = translate_volume("fov", _meta(wide, affine), identity, fit_spec.with_overrides(frame_by="field_of_view"),
                           "ct", "mri", mask_background=False)
    assert np.array_equal(t.source_unit, fov.source_unit)  # framed by the field of view, as before
    assert t.gap["intensity_ratio"] is None and t.gap["head_size_ratio"] is None and not t.gap["far"]


def test_domain_gap_script_prints_the_figures_of_volumes_and_images(phantoms, fit_spec, tmp_path, capsys):
    from ctmri_monai.convert.gap_report import main
    from ctmri_monai.io.checkpoint_file import atomic_torch_save

    checkpoint = tmp_path / "model.pt"
    atomic_torch_save({"model_spec": fit_spec.state_dict()}, checkpoint)
    name = json.loads((phantoms / "phantoms.json").read_text())["test_subjects"][0]
    volume = phantoms / "volumes" / "mri" / f"{name}.nii.gz"
    image = sorted((phantoms / "testB").iterdir())[0]
    status = main(["--checkpoint", str(checkpoint), "--domain", "mri", str(volume), str(image)])
    printed = capsys.readouterr().out
    assert status == 0 and "2 inputs, 0 far from training" in printed and str(volume) in printed, printed
    volume_line = next(line for line in printed.splitlines() if line.endswith(str(volume)))
    assert volume_line.split()[0].count("x/") == 1  # both figures for the volume
    # The same head in a field of view twice its size, framed by the field of view (the older way, overridden): far.
    data = np.asarray(nib.load(volume).dataobj, np.float32)
    wide = np.full((128, 128, data.shape[2]), data.min(), np.float32)
    wide[32:96, 32:96] = data
    far = tmp_path / "far.nii.gz"
    nib.save(nib.Nifti1Image(wide, nib.load(volume).affine), str(far))
    assert main(["--checkpoint", str(checkpoint), "--domain", "mri", str(far)]) == 0  # framed by the head
    capsys.readouterr()
    assert main(["--checkpoint", str(checkpoint), "--domain", "mri", "--frame-by", "field_of_view", str(far)]) == 1
    printed = capsys.readouterr().out
    assert "far from training: in-head intensities" in printed and "1 far from training" in printed
