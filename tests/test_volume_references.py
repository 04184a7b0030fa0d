"""Models trained on volumes record their training references, and their conversions report the domain gap.

Phantoms: eight heads, 64 x 64 x 16 at 3 mm; two are test subjects and one validates, so five train. The model
frames them at 5 mm ("spacing"), heads about 34 px of 64, so a head 1.5x larger in mm still fits the frame.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ctmri_monai.apps.cli import main as ctmri
from ctmri_monai.convert.batch import format_table
from ctmri_monai.data import spec_for_dataset, split_files
from ctmri_monai.data.reference import measure_volume_reference
from ctmri_monai.engines.slices import translate_volume
from ctmri_monai.handlers.checkpoint import contract_differences
from ctmri_monai.io.checkpoint_file import atomic_torch_save
from ctmri_monai.io.errors import InputError
from ctmri_monai.networks import define_generator
from ctmri_monai.phantoms import make_phantoms
from ctmri_monai.spec import ModelSpec

S = 64
NETWORK = {"backbone": "resnet", "ngf": 4, "n_blocks": 1}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("volume_refs")
    make_phantoms(out, subjects=8, shape=(64, 64, 16), spacing=(3.0, 3.0, 8.0), seed=2, write_dicom=False)
    return out


@pytest.fixture(scope="module")
def spec(phantoms: Path) -> ModelSpec:
    return spec_for_dataset(phantoms, layout="volumes", image_size=S, pixdim=(5.0, 5.0), network=NETWORK)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x[:, :1].clone()


def test_a_volumes_contract_records_references_of_its_training_split(phantoms, spec):
    train = split_files(phantoms, "volumes", "train")
    test_subjects = set(json.loads((phantoms / "phantoms.json").read_text())["test_subjects"])
    assert len(train[0]) == 5 and not test_subjects & {p.name.split(".")[0] for p in train[0] + train[1]}
    for domain in ("ct", "mri"):
        ref = spec.reference(domain)
        assert ref.images == 5 and ref.halves_distance > 0 and ref.image_distance_p95 > 0
        assert 25 < ref.head_extent_px < 50 and ref.head_extent_mm == pytest.approx(5.0 * ref.head_extent_px)
    # The declared mapping and "spacing" framing stay: no head framing, no MRI standardisation.
    assert spec.mri.declared and spec.geometry.framing == "spacing"
    assert "standardised" not in spec.describe()
    assert ModelSpec.from_state(spec.state_dict()).training == spec.training  # survives the checkpoint


def test_a_broken_training_volume_is_named_in_one_error(spec, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a volume")
    with pytest.raises(InputError, match="broken.nii.gz"):
        measure_volume_reference([bad], spec, "ct")


def test_a_training_volume_is_framed_and_masked_as_conversion_frames_it(phantoms, spec):
    """The reference of one training volume and the conversion of that volume agree on its head: the same
    pipeline and mask (ratio exactly 1); another pixel size (a different framing) does not."""
    path = split_files(phantoms, "volumes", "train")[1][0]
    img = nib.load(path)
    image = MetaTensor(torch.from_numpy(np.asarray(img.dataobj, np.float32)[None]), affine=torch.as_tensor(img.affine))
    for measured_on, agrees in ((spec, True), (spec.with_overrides(pixdim=(4.0, 4.0)), False)):
        one = measure_volume_reference([path], measured_on, "mri")
        single = ModelSpec.from_state({**spec.state_dict(), "training": {"mri": dataclasses.asdict(one)}})
        gap = translate_volume(path, image, _identity, single, "mri", "ct", mask_background=False).gap
        assert bool(gap["head_size_ratio"] == 1.0) is agrees, gap


def test_volume_conversions_report_the_gap_and_far_volumes_are_flagged(phantoms, spec, tmp_path, capsys):
    """``ctmri convert`` of a held-out MRI: at a scanner's gain it is near (negative control); with a gamma of 0.5
    (beyond what the percentile mapping absorbs) it is far by intensity; with its head 1.5x larger in mm it is far
    by head size. summary.json and the printed table carry both figures."""
    net = define_generator(**NETWORK)
    checkpoint = tmp_path / "vol.pt"
    atomic_torch_save({"generator_ct2mri": net.state_dict(), "generator_mri2ct": net.state_dict(),
                       "model_spec": spec.state_dict()}, checkpoint)
    name = sorted(json.loads((phantoms / "phantoms.json").read_text())["test_subjects"])[-1]
    img = nib.load(phantoms / "volumes" / "mri" / f"{name}.nii.gz")
    unit = np.asarray(img.dataobj, np.float32) / float(np.max(img.dataobj))
    larger = img.affine.copy()
    larger[:2, :3] *= 1.5
    cases = {"near": (2500.0 * unit, img.affine, False, False), "gamma": (2500.0 * unit**0.5, img.affine, True, False),
             "larger": (2500.0 * unit, larger, False, True)}
    for case, (array, affine, far_intensity, far_size) in cases.items():
        path = tmp_path / f"{case}.nii.gz"
        nib.save(nib.Nifti1Image(array.astype(np.float32), affine), str(path))
        out = tmp_path / f"out_{case}"
        status = ctmri(["convert", "--direction", "mri2ct", "--checkpoint", str(checkpoint), "--output-dir", str(out),
                        "--device", "cpu", "--no-progress", str(path)])
        assert status == 0
        record = json.loads((out / "summary.json").read_text())["files"][0]
        gap = record["gap"]
        assert gap["intensity_ratio"] is not None and gap["head_size_ratio"] is not None, gap
        assert (gap["intensity_ratio"] > gap["intensity_limit"]) is far_intensity, (case, gap)
        assert (abs(gap["head_size_ratio"] - 1.0) > 0.15) is far_size, (case, gap)
        far = far_intensity or far_size
        assert gap["far"] is far and any("far from training" in w for w in record["warnings"]) is far, (case, record)
        cell = f"{gap['intensity_ratio']:.2f}x/{gap['head_size_ratio']:.2f}x"
        row = format_table([record]).splitlines()[2]
        assert cell in row and row.count("!") == far
        assert cell in capsys.readouterr().out  # the table ctmri convert prints
    assert gap["head_size_ratio"] == pytest.approx(1.5, abs=0.08)


def test_a_volume_run_from_before_the_references_resumes_and_a_changed_contract_is_still_refused(spec):
    """The references change nothing a volume model's generator sees: an older checkpoint without them resumes
    (no difference); a changed pixel size still differs (negative control)."""
    older = {**spec.state_dict(), "training": {}}
    assert contract_differences(older, spec) == {}
    assert "geometry.pixdim" in contract_differences(older, spec.with_overrides(pixdim=(4.0, 4.0)))
