"""Conversion options built once (`ConvertOptions.for_run`), names that do not apply refused, and the disagreement
map removed beside an output that is rewritten without one."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import make_spec, write_tiny_checkpoint

from ctmri_monai.convert import BatchOptions, ConversionService, ConvertOptions
from ctmri_monai.convert.batch import convert_batch
from ctmri_monai.convert.trust import disagreement_path

S = 32


class Identity(torch.nn.Module):
    """The middle input channel: a generator that changes nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = x.shape[1] // 2
        return x[:, k:k + 1]


def _volume(path: Path) -> Path:
    """A small CT head in HU (an ellipse of soft tissue in air)."""
    grid = np.meshgrid(np.linspace(-1, 1, 20), np.linspace(-1, 1, 18), indexing="ij")
    head = (grid[0] ** 2 / 0.8 + grid[1] ** 2 / 0.7 < 1.0)[..., None].repeat(4, axis=2)
    nib.save(nib.Nifti1Image(np.where(head, 40.0, -1000.0).astype(np.float32), np.eye(4)), str(path))
    return path


def _service(disagreement: bool) -> ConversionService:
    generators = {"ct2mri": Identity(), "mri2ct": Identity()}  # the map's backward generator is the other one
    return ConversionService(generators, make_spec(S), {"file": "m.pt", "sha256": "a" * 64},
                             ConvertOptions(batch_size=2, device="cpu", amp=False, disagreement=disagreement))


def test_an_output_rewritten_without_its_map_loses_the_old_map_and_is_redone_with_one(tmp_path: Path) -> None:
    """Bug 2: the map of an earlier run stayed beside an output rewritten without the map, and a later batch
    with the map took the stale pair as finished and skipped it."""
    src, out = _volume(tmp_path / "a.nii.gz"), tmp_path / "out"
    output = out / "a_ct2mri.nii.gz"
    dmap = disagreement_path(output, "ct2mri")
    assert convert_batch(_service(True), [src], out, "ct2mri", BatchOptions(progress=False)) == 0
    assert output.exists() and dmap.exists()
    assert convert_batch(_service(False), [src], out, "ct2mri", BatchOptions(progress=False, overwrite=True)) == 0
    assert output.exists() and not dmap.exists()  # the old map does not describe the new output
    assert convert_batch(_service(True), [src], out, "ct2mri", BatchOptions(progress=False)) == 0
    record = json.loads((out / "summary.json").read_text())["files"][0]
    assert record["status"] != "skipped" and dmap.exists() and record["disagreement"]["map"] == str(dmap)


def test_names_that_do_not_apply_are_refused(tmp_path: Path) -> None:
    """Bug 5: ``run_batch`` took about 30 names through ``**names`` and silently ignored the ones that do not apply
    (a device or a contract override beside a ready service, a contract beside a checkpoint)."""
    from ctmri_monai.convert import run_batch

    src, ckpt = _volume(tmp_path / "a.nii.gz"), write_tiny_checkpoint(tmp_path / "m.pt")
    service = _service(False)
    for names in ({"service": service, "device": "cuda:7"},
                  {"service": service, "contract_overrides": {"ct_window": (-20.0, 100.0)}},
                  {"checkpoint": ckpt, "spec": make_spec(S), "device": "cpu"}):
        with pytest.raises((TypeError, ValueError)):
            run_batch([src], tmp_path / "flat", "ct2mri", progress=False, **names)
        assert not (tmp_path / "flat").exists()

    from ctmri_monai.convert import ModelSource

    with pytest.raises(ValueError, match="spec and model_info describe a generator"):
        ModelSource(checkpoint=ckpt, spec=make_spec(S))
    with pytest.raises(ValueError, match="load_model reads a checkpoint"):
        ModelSource(generator=Identity(), spec=make_spec(S), load_model=lambda *a: None)
    with pytest.raises(ValueError, match="exactly one of checkpoint and generator"):
        ModelSource(checkpoint=ckpt, generator=Identity())
    with pytest.raises(ValueError, match="needs its contract"):
        ModelSource(generator=Identity())
    with pytest.raises(ValueError, match="does not apply to a ready ConversionService"):
        run_batch([src], tmp_path / "o", "ct2mri", service,
                  BatchOptions(convert=ConvertOptions.for_run("cpu"), progress=False))
    with pytest.raises(ValueError, match="runs a checkpoint or an exported file"):
        run_batch([src], tmp_path / "o", "ct2mri", ModelSource(generator=Identity(), spec=make_spec(S)),
                  BatchOptions(convert=ConvertOptions.for_run("cpu", "onnxruntime"), progress=False))
    with pytest.raises(ValueError, match="engine 'onnxruntime' does not apply"):
        run_batch([src], tmp_path / "o", "ct2mri", ModelSource(checkpoint=ckpt, load_model=lambda *a: None),
                  BatchOptions(convert=ConvertOptions.for_run("cpu", "onnxruntime"), progress=False))
    with pytest.raises(ValueError, match="runs on the CPU"):
        ConvertOptions(engine="openvino", device="cuda")
    with pytest.raises(TypeError, match="ModelSource or a ConversionService"):
        run_batch([src], tmp_path / "o", "ct2mri", ckpt)
    assert not (tmp_path / "o").exists()  # every refusal before anything is written


def test_for_run_derives_device_engine_batch_size_and_amp_once(tmp_path: Path) -> None:
    """The one place that derives them: CPU engines and exported files run on the CPU at the CPU's batch size,
    mixed precision only on CUDA, a batch size given wins, ``threads`` alone means torch eager."""
    from ctmri_monai.convert.options import default_batch_size

    cpu = ConvertOptions.for_run("cpu")
    assert (str(cpu.device), cpu.batch_size, cpu.amp, cpu.engine) == ("cpu", default_batch_size("cpu"), False, None)
    onnx = ConvertOptions.for_run("cuda", "onnxruntime")  # never asks for a GPU: the engine is CPU-only
    assert (str(onnx.device), onnx.batch_size, onnx.amp, onnx.engine) == ("cpu", 1, False, "onnxruntime")
    exported = tmp_path / "g.onnx"
    exported.write_bytes(b"")
    assert ConvertOptions.for_run("cuda", model=exported).engine == "onnxruntime"
    assert str(ConvertOptions.for_run("cuda", model=exported).device) == "cpu"
    assert ConvertOptions.for_run("cpu", threads=2).engine == "torch"
    assert ConvertOptions.for_run("cpu", batch_size=5, qa_threshold=0.5).batch_size == 5
    if torch.cuda.is_available():
        gpu = ConvertOptions.for_run("cuda")
        assert (gpu.device.type, gpu.batch_size, gpu.amp) == ("cuda", 16, True)
