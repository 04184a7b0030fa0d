"""The data contract from training to conversion: a converted volume equals the training path on its own slices.

A model trained on the phantoms' 2D images (CT PNGs exported through the HU window 40 / 120, 4 mm pixels framed
to 6 mm) converts the same subject's NIfTI volumes with ``ctmri convert``; the same generator is applied through
the 2D path to that subject's PNG slices, its output brought back to the PNG grid by the pipeline's inverse, and
both are compared inside the head.

Tolerance, from the two inputs' only difference: a PNG holds the windowed volume rounded to 8 bits, so the
generator inputs differ by at most half a grey level, 1/255 in the [-1, 1] scale (asserted below), and both paths
frame and unframe with the same transforms. The outputs may then differ by what the generator makes of such an
input difference, measured here by feeding it the 2D inputs with that much uniform noise added; the tolerance is
twice the largest change seen, plus half an HU step where the output is rounded to int16. The negative controls
(a wrong window, a wrong pixel size) must exceed it by far.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ctmri_monai.apps.cli import main as ctmri
from ctmri_monai.data import dataset_transforms, spec_for_dataset
from ctmri_monai.io import ContractError
from ctmri_monai.io.checkpoint_file import atomic_torch_save
from ctmri_monai.networks import define_generator
from ctmri_monai.networks.loading import read_model_spec
from ctmri_monai.phantoms import make_phantoms, radiological_slice
from ctmri_monai.spec import ModelSpec
from ctmri_monai.transforms import head_mask, image_pipeline
from ctmri_monai.transforms.intensity import ct_from_unit

S = 32
QUANTUM = 1.0 / 255.0  # half an 8-bit grey level in the [-1, 1] scale
NETWORK = {"backbone": "resnet", "ngf": 4, "n_blocks": 1, "num_downs": 5}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two phantom heads, 48 x 48 x 10 at 4 mm: PNGs framed 48 -> 32 px (6 mm), so framing resamples."""
    out = tmp_path_factory.mktemp("contract_phantoms")
    make_phantoms(out, subjects=2, shape=(48, 48, 10), spacing=(4.0, 4.0, 8.0), seed=1, write_dicom=False)
    return out


def _near_identity(images: list[torch.Tensor], steps: int = 40) -> torch.nn.Module:
    """A tiny generator trained for a few dozen steps to reproduce its input: close to identity."""
    torch.manual_seed(0)
    net = define_generator(**NETWORK)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    batch = torch.stack(images)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.l1_loss(net(batch), batch).backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def model(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelSpec, dict]:
    """A checkpoint trained in the images layout: its contract from the phantoms' card."""
    spec = spec_for_dataset(phantoms, image_size=S, network=NETWORK)
    transforms = dataset_transforms(spec, phantoms)
    nets = {}
    for direction, folder, domain in (("ct2mri", "trainA", "ct"), ("mri2ct", "trainB", "mri")):
        files = sorted((phantoms / folder).iterdir())
        images = [transforms[domain]({"image": str(p)})["image"].as_tensor() for p in files]
        nets[direction] = _near_identity(images)
    path = tmp_path_factory.mktemp("contract_model") / "model.pt"
    atomic_torch_save({f"generator_{d}": n.state_dict() for d, n in nets.items()} | {"model_spec": spec.state_dict()},
                      path)
    return path, spec, nets


def _test_subject(phantoms: Path) -> tuple[str, list[int]]:
    manifest = json.loads((phantoms / "phantoms.json").read_text())
    name = manifest["test_subjects"][0]
    return name, manifest["subject_details"][name]["png_slices"]


def _convert(phantoms: Path, checkpoint: Path, out: Path, direction: str, *extra: str) -> np.ndarray:
    """Run ``ctmri convert`` on the test subject's volume; the output in the PNGs' display layout (Z, H, W).
    Background masking is off: the 2D path writes what the generator gives everywhere too."""
    name, _ = _test_subject(phantoms)
    source = "ct" if direction == "ct2mri" else "mri"
    status = ctmri(["convert", "--direction", direction, "--checkpoint", str(checkpoint), "--output-dir", str(out),
                    "--device", "cpu", "--no-progress", "--overwrite", "--no-mask-background", *extra,
                    str(phantoms / "volumes" / source / f"{name}.nii.gz")])
    assert status == 0
    data = np.asarray(nib.load(out / f"{name}_{direction}.nii.gz").dataobj, dtype=np.float32)
    return np.stack([radiological_slice(data, z) for z in range(data.shape[2])])


def _two_d(phantoms: Path, spec: ModelSpec, net: torch.nn.Module, direction: str) -> dict[int, dict]:
    """The 2D evaluation path on the test subject's PNG slices: inputs, outputs on the PNG grid, head masks."""
    name, slices = _test_subject(phantoms)
    folder = "testA" if direction == "ct2mri" else "testB"
    pixel = json.loads((phantoms / "dataset.json").read_text())["ct"]["pixel_spacing_mm"]
    pipeline = image_pipeline(spec, source_pixdim=(pixel, pixel))
    ct_pipeline = image_pipeline(spec, source_pixdim=(pixel, pixel))
    out = {}
    generator = torch.Generator().manual_seed(0)
    for z in slices:
        x = pipeline({"image": str(phantoms / folder / f"{name}_z{z:03d}.png")})["image"]
        frame = x.as_tensor()
        noise = (torch.rand(frame.shape, generator=generator) * 2 - 1) * QUANTUM
        with torch.no_grad():
            y = net(frame[None])[0]
            gain = float((net((frame + noise)[None])[0] - y).abs().max())
        y = pipeline.inverse({"image": x.__class__(y, meta=dict(x.meta),
                                                   applied_operations=list(x.applied_operations))})["image"]
        ct = ct_pipeline({"image": str(phantoms / "testA" / f"{name}_z{z:03d}.png")})["image"]
        ct = ct_pipeline.inverse({"image": ct})["image"]  # the CT slice on its own grid, for the head mask
        out[z] = {"x": frame[0], "y": y.as_tensor()[0], "gain": gain, "mask": head_mask(ct.as_tensor()[0].numpy())}
    return out


def _difference(converted: np.ndarray, two_d: dict[int, dict], direction: str, spec: ModelSpec) -> tuple[float, float]:
    """(largest, mean) |conversion - 2D| inside the head over the PNG slices, in [-1, 1] (MRI) or HU (CT)."""
    diffs = []
    for z, item in two_d.items():
        y = item["y"].numpy()
        if direction == "mri2ct":
            y = ct_from_unit(torch.as_tensor(y).clamp(-1, 1), spec.ct.window).numpy()
        diffs.append(np.abs(converted[z] - y)[item["mask"]])
    d = np.concatenate(diffs)
    return float(d.max()), float(d.mean())


@pytest.mark.parametrize("direction", ["ct2mri", "mri2ct"])
def test_conversion_equals_the_2d_path_on_the_same_slices(phantoms, model, tmp_path, direction):
    checkpoint, spec, nets = model
    assert spec.layout == "images" and spec.ct.window == (-20.0, 100.0) and spec.geometry.pixdim == (6.0, 6.0)
    converted = _convert(phantoms, checkpoint, tmp_path / "out", direction)
    two_d = _two_d(phantoms, spec, nets[direction], direction)
    gain = max(item["gain"] for item in two_d.values())
    scale = 1.0 if direction == "ct2mri" else (spec.ct.window[1] - spec.ct.window[0]) / 2.0  # unit -> HU
    tolerance = 2.0 * gain * scale + (0.5 if direction == "mri2ct" else 0.0)
    largest, mean = _difference(converted, two_d, direction, spec)
    assert largest <= tolerance, (largest, tolerance)
    assert mean <= tolerance / 4, (mean, tolerance)

    # Negative controls: the same checks fail with the CT window of a volumes-trained default, or with a pixel size
    # the model never saw (8 mm instead of 6: a smaller head in the frame).
    wrong = ["--ct-window", "-1000", "1000"] if direction == "ct2mri" else ["--pixdim", "8", "8"]
    bad = _convert(phantoms, checkpoint, tmp_path / "wrong", direction, *wrong)
    bad_largest, bad_mean = _difference(bad, two_d, direction, spec)
    assert bad_largest > 5 * tolerance and bad_mean > 5 * tolerance / 4, (bad_largest, bad_mean, tolerance)


def test_the_two_inputs_differ_by_the_8_bit_rounding_only(phantoms, model):
    """What the tolerance rests on: the PNG path and the volume path give the generator the same input up to
    half a grey level (checked on the network's frames)."""
    from ctmri_monai.io import load_volume
    from ctmri_monai.transforms import volume_pipeline

    _, spec, _ = model
    name, slices = _test_subject(phantoms)
    two_d = _two_d(phantoms, spec, torch.nn.Identity(), "ct2mri")
    x = volume_pipeline(spec, "ct")({"image": load_volume(phantoms / "volumes" / "ct" / f"{name}.nii.gz").image})
    frames = x["image"].as_tensor()[0]
    for z in slices:
        assert float((frames[..., z] - two_d[z]["x"]).abs().max()) <= QUANTUM + 1e-5


def test_a_volumes_trained_model_converts_as_its_own_training_preprocessing(phantoms, tmp_path):
    """Volumes layout: the training dataset's own transform, the generator and that transform's inverse give
    exactly what ``ctmri convert`` writes (float rounding only); another pixel size does not."""
    spec = spec_for_dataset(phantoms, layout="volumes", image_size=S, pixdim=(6.0, 6.0), network=NETWORK)
    transform = dataset_transforms(spec, phantoms, training=False)["ct"]
    name, _ = _test_subject(phantoms)
    path = phantoms / "volumes" / "ct" / f"{name}.nii.gz"
    x = transform({"image": str(path)})["image"]
    net = _near_identity([x.as_tensor()[..., k] for k in range(x.shape[-1])], steps=10)
    checkpoint = tmp_path / "vol.pt"
    atomic_torch_save({"generator_ct2mri": net.state_dict(), "generator_mri2ct": net.state_dict(),
                       "model_spec": spec.state_dict()}, checkpoint)
    with torch.no_grad():
        y = torch.stack([net(x.as_tensor()[None, ..., k])[0, 0] for k in range(x.shape[-1])], -1)[None]
    ops = copy.deepcopy(x.applied_operations)
    y = transform.inverse({"image": x.__class__(y, meta=dict(x.meta), applied_operations=ops)})
    expected = y["image"].as_tensor()[0].numpy()
    mask = head_mask(transform.inverse({"image": x})["image"].as_tensor()[0].numpy())
    for extra, agrees in (((), True), (("--pixdim", "7", "7"), False)):
        status = ctmri(["convert", "--direction", "ct2mri", "--checkpoint", str(checkpoint), "--output-dir",
                        str(tmp_path / "out"), "--device", "cpu", "--no-progress", "--overwrite",
                        "--no-mask-background", *extra, str(path)])
        assert status == 0
        got = np.asarray(nib.load(tmp_path / "out" / f"{name}_ct2mri.nii.gz").dataobj, dtype=np.float32)
        assert (float(np.abs(got - expected)[mask].max()) < 1e-4) == agrees


def test_a_model_without_a_known_ct_window_is_refused_and_an_override_is_logged(phantoms, model, tmp_path, caplog):
    checkpoint, spec, nets = model
    state = spec.state_dict()
    state["ct"]["window"] = None  # as if trained without a dataset card
    unknown = tmp_path / "unknown.pt"
    atomic_torch_save({f"generator_{d}": n.state_dict() for d, n in nets.items()} | {"model_spec": state}, unknown)
    name, _ = _test_subject(phantoms)
    ct = str(phantoms / "volumes" / "ct" / f"{name}.nii.gz")
    args = ["convert", "--direction", "ct2mri", "--checkpoint", str(unknown), "--output-dir", str(tmp_path / "o"),
            "--device", "cpu", "--no-progress"]
    with pytest.raises(ContractError, match=r"CT window is unknown.*--ct-window LO HI"):
        from ctmri_monai.convert import BatchOptions, ConvertOptions, ModelSource, run_batch

        run_batch([ct], tmp_path / "o", "ct2mri", ModelSource(checkpoint=unknown),
                  BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False))
    assert ctmri([*args, ct]) == 2 and not (tmp_path / "o").exists()
    with caplog.at_level(logging.WARNING):
        assert ctmri([*args, "--ct-window", "-20", "100", ct]) == 0
    assert "contract override: CT HU window [-20, 100]" in caplog.text
    assert read_model_spec(unknown).ct.window is None  # the checkpoint itself is not changed


def test_a_version_1_checkpoint_is_refused_clearly_and_converts_with_the_missing_window(phantoms, tmp_path, caplog):
    torch.manual_seed(0)
    net = define_generator(**NETWORK)
    legacy = {"backbone": "resnet", "ngf": 4, "n_blocks": 1, "num_downs": 5, "in_channels": 1, "out_channels": 1,
              "image_size": S, "ct_window": [-1000.0, 1000.0], "mri_percentiles": [0.5, 99.5], "pixdim": [6.0, 6.0]}
    path = tmp_path / "v1.pt"
    atomic_torch_save({"generator_ct2mri": net.state_dict(), "generator_mri2ct": net.state_dict(),
                       "model_spec": legacy}, path)
    spec = read_model_spec(path)
    assert spec.version == 1 and spec.ct.window is None and spec.geometry.pixdim == (6.0, 6.0)
    assert spec.network.ngf == 4 and any("version-1" in note for note in spec.notes)
    name, _ = _test_subject(phantoms)
    ct = str(phantoms / "volumes" / "ct" / f"{name}.nii.gz")
    args = ["convert", "--direction", "ct2mri", "--checkpoint", str(path), "--output-dir", str(tmp_path / "o"),
            "--device", "cpu", "--no-progress"]
    assert ctmri([*args, ct]) == 2
    with caplog.at_level(logging.WARNING):
        assert ctmri([*args, "--ct-window", "-1000", "1000", ct]) == 0
    assert "written before the data contract" in caplog.text


def test_background_masking_writes_air_outside_the_head(phantoms, model, tmp_path):
    """A generator that invents tissue in the air around the head: with masking (the default) only background is
    written where the input is air; without it, the invented tissue is written."""
    _, spec, _ = model
    name, _ = _test_subject(phantoms)
    ct = phantoms / "volumes" / "ct" / f"{name}.nii.gz"

    def halo(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, :1] > -0.8, x[:, :1], torch.full_like(x[:, :1], 0.3))

    from scipy import ndimage

    from ctmri_monai.convert import BatchOptions, ConvertOptions, ModelSource, run_batch

    air = ndimage.binary_erosion(np.asarray(nib.load(ct).dataobj) < -500, iterations=2)  # well away from the head
    for masked in (True, False):
        out = tmp_path / f"masked_{masked}"
        assert run_batch([ct], out, "ct2mri", ModelSource(generator=halo, spec=spec),
                         BatchOptions(convert=ConvertOptions.for_run("cpu", mask_background=masked),
                                      progress=False)) in (0, 1)
        data = np.asarray(nib.load(out / f"{name}_ct2mri.nii.gz").dataobj)
        record = json.loads((out / "summary.json").read_text())["files"][0]
        assert record["background_masked"] is masked
        assert (float(data[air].max()) == -1.0) is masked  # -1: the bottom of the synthetic MRI scale


def test_qa_tells_tissue_invented_in_empty_slices_from_changed_anatomy(phantoms, model, tmp_path):
    _, spec, _ = model
    name, _ = _test_subject(phantoms)
    img = nib.load(phantoms / "volumes" / "ct" / f"{name}.nii.gz")
    hu = np.asarray(img.dataobj).copy()
    hu[:, :, -2:] = -1000  # the two top slices hold only air
    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, img.affine), str(src))

    def invents_in_empty_slices(x: torch.Tensor) -> torch.Tensor:
        empty = (x[:, :1] > -0.8).flatten(1).sum(1) == 0
        return torch.where(empty[:, None, None, None], torch.full_like(x[:, :1], 0.3), x[:, :1])

    from ctmri_monai.convert import BatchOptions, ConvertOptions, ModelSource, run_batch

    assert run_batch([src], tmp_path / "out", "ct2mri", ModelSource(generator=invents_in_empty_slices, spec=spec),
                     BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False)) == 0
    record = json.loads((tmp_path / "out" / "summary.json").read_text())["files"][0]
    qa = record["qa"]
    depth = hu.shape[2]
    assert qa["slices_tissue_in_air"] == [depth - 2, depth - 1]
    assert qa["slices_below"] == [] and not qa["flagged"] and record["status"] == "ok"
    assert not set(qa["slices_tissue_in_air"]) & {int(k) for k in qa["dice"]}
    out = np.asarray(nib.load(tmp_path / "out" / "ct_ct2mri.nii.gz").dataobj)
    assert float(out[:, :, -2:].max()) == -1.0  # masked: nothing of the invented tissue is written
