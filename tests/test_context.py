"""2.5D context: stacks of neighbouring slices through datasets, the training cycle and conversion."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import make_spec

from ctmri_monai.convert import convert_volume
from ctmri_monai.data import VolumeSliceDataset, spec_for_dataset
from ctmri_monai.engines import CycleGANEvaluator, CycleGANTrainer
from ctmri_monai.engines.cycle import cycle
from ctmri_monai.io import ContractError
from ctmri_monai.networks import count_parameters, define_discriminator, define_generator
from ctmri_monai.spec import SliceGeometry
from ctmri_monai.transforms import volume_pipeline
from ctmri_monai.transforms.context import centre_window, context_windows, slice_stack, slice_stacks

S = 16


def test_context_windows_are_the_stacks_of_the_middle_slices():
    vol = torch.arange(9.0).view(1, 1, 1, 9).expand(1, S, S, 9).contiguous()
    stack = slice_stack(vol, 4, 2)[None]  # k = 1: 4k + 1 = 5 slices around slice 4
    windows = context_windows(stack, 1)
    assert windows.shape == (3, 3, S, S)
    assert [w[:, 0, 0].tolist() for w in windows] == [[2, 3, 4], [3, 4, 5], [4, 5, 6]]
    assert torch.equal(windows[1:2], centre_window(stack, 1))
    assert torch.equal(context_windows(vol[..., 0][None], 0), vol[..., 0][None])  # k = 0: the slice itself
    with pytest.raises(ValueError, match="4k \\+ 1 = 5"):
        context_windows(stack[:, :3], 1)


def test_cycle_with_no_context_is_the_plain_2d_cycle():
    torch.manual_seed(0)
    a, b = define_generator(ngf=4, n_blocks=1).eval(), define_generator(ngf=4, n_blocks=1).eval()
    x = torch.rand(2, 1, S, S) * 2 - 1
    with torch.no_grad():
        fake, rec = cycle(a, b, x, 0)
        assert torch.equal(fake, a(x)) and torch.equal(rec, b(a(x)))


def test_parameter_counts_with_no_context_stay_the_references():
    assert count_parameters(define_generator("resnet", in_channels=1)) == 11_365_633
    # 2.5D k = 1: 3 slices in, 1 out; only the 7 x 7 stem grows, by 2 x 64 x 49 weights
    assert count_parameters(define_generator("resnet", in_channels=3)) == 11_365_633 + 2 * 64 * 49


def test_trainer_and_evaluator_run_2_5d_stacks():
    torch.manual_seed(0)
    k = 1
    gy, gx = (define_generator(in_channels=2 * k + 1, ngf=4, n_blocks=1) for _ in range(2))
    dx, dy = (define_discriminator(in_channels=1, ndf=4) for _ in range(2))
    go = torch.optim.Adam(itertools.chain(gy.parameters(), gx.parameters()), 2e-4)
    do = torch.optim.Adam(itertools.chain(dx.parameters(), dy.parameters()), 2e-4)
    batches = [{"ct": torch.rand(2, 4 * k + 1, 32, 32) * 2 - 1, "mri": torch.rand(2, 4 * k + 1, 32, 32) * 2 - 1}]
    before = [p.detach().clone() for p in gy.parameters()]
    trainer = CycleGANTrainer("cpu", 1, batches, gy, gx, dx, dy, go, do, context_slices=k)
    trainer.run()
    assert all(np.isfinite(v) for v in trainer.state.output.values())
    assert any(not torch.equal(p, q) for p, q in zip(before, gy.parameters(), strict=True))
    evaluator = CycleGANEvaluator("cpu", batches, gy, gx, context_slices=k)
    evaluator.run()
    out = evaluator.state.output
    assert out["fake_mri"].shape == out["real_ct"].shape == (2, 1, 32, 32)
    assert torch.equal(out["real_ct"], batches[0]["ct"][:, 2 * k:2 * k + 1])  # the middle slice


def _phantom_volume(tmp_path: Path) -> Path:
    from ctmri_monai.phantoms import make_subject

    subject = make_subject(0, shape=(32, 32, 8), spacing=(6.0, 6.0, 8.0))
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(subject.ct, subject.affine), str(path))
    return path


def test_volume_dataset_serves_4k_plus_1_stacks_with_repeated_ends(tmp_path):
    path = _phantom_volume(tmp_path)
    spec = make_spec(32, pixdim=(6.0, 6.0))
    spec.geometry.context_slices = 1
    transform = volume_pipeline(spec, "ct", load=True)
    ds = VolumeSliceDataset([path], transform, context=2)
    volume = transform({"image": str(path)})["image"]
    first = ds[0]
    k0 = int(first.meta["slice_index"])
    assert first.shape == (5, 32, 32)
    expected = [min(max(k0 + o, 0), volume.shape[-1] - 1) for o in range(-2, 3)]
    for c, z in enumerate(expected):
        assert torch.equal(first[c], volume[0, :, :, z].as_tensor())


def test_conversion_feeds_each_slice_with_its_neighbours(tmp_path):
    """A 2.5D generator that outputs the mean of its 3 input slices: on the contract's frames, conversion gives
    each slice the mean of itself and its two neighbours (the ends repeated), and writes the input's grid."""
    from ctmri_monai.engines import translate_volume
    from ctmri_monai.io import load_volume

    path = _phantom_volume(tmp_path)
    spec = make_spec(32, pixdim=(6.0, 6.0))
    spec.geometry = SliceGeometry(image_size=32, framing="spacing", pixdim=(6.0, 6.0), context_slices=1)
    spec.network.in_channels = 3

    def mean_of_stack(x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 3
        return x.mean(1, keepdim=True)

    image = load_volume(path).image
    result = translate_volume(path, image, mean_of_stack, spec, "ct", "mri", mask_background=False)
    frames = torch.as_tensor(result.source_unit).permute(2, 0, 1)  # (D, S, S)
    expected = slice_stacks(frames, 1).mean(1).permute(1, 2, 0).numpy()
    assert np.abs(result.fake_unit - expected).max() < 1e-6
    assert result.output.shape == tuple(image.shape[1:])
    convert_volume(path, tmp_path / "o.nii.gz", mean_of_stack, spec, "ct", "mri")
    assert nib.load(tmp_path / "o.nii.gz").shape == tuple(image.shape[1:])


def test_2d_images_refuse_context_with_a_clear_message(tiny_phantoms):
    with pytest.raises(ContractError, match="no neighbouring slices"):
        spec_for_dataset(tiny_phantoms, layout="images", context_slices=1)
    spec = spec_for_dataset(tiny_phantoms, layout="volumes", context_slices=1, image_size=32)
    assert spec.geometry.context_slices == 1 and spec.network.in_channels == 3
