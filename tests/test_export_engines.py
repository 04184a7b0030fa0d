"""Exported generators carry their contract, and ONNX Runtime / OpenVINO / TorchScript convert like PyTorch.

Parity is asserted on the written NIfTI of ``ctmri convert`` (ct2mri: float32 synthetic MRI, no rounding) against
the PyTorch fp32 conversion of the same volume. Tolerance, derived: every engine computes the same sums in float32
in its own order, so |engine - torch32| <= |engine - exact| + |torch32 - exact|. The second term is measured on
this volume as ``e`` = max |torch32 - torch64| (the network run in float64 on the same road); the first is the same
kind of fp32 reassociation error, allowed twice that size for other kernels (blocked GEMM, Winograd): tolerance
= 4 e (at least 16 float32 eps at the output's magnitude 1). The road after the network (clamp, linear inverse
resampling, background) is a convex combination per voxel, so it cannot enlarge a max difference. Negative control:
the same check on an export with one weight changed must fail.

The engines are optional extras ([onnx], [openvino]): elsewhere these tests skip with the install command; CI sets
CTMRI_REQUIRE_ENGINES=1 (.ci/run) and a missing engine fails instead.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import make_spec
from test_convert import head_hu, save_nifti

from ctmri_monai.apps.cli import main as ctmri
from ctmri_monai.convert import ConversionService, ConvertOptions
from ctmri_monai.io.checkpoint_file import atomic_torch_save, load_checkpoint
from ctmri_monai.io.errors import ContractError
from ctmri_monai.networks import define_generator
from ctmri_monai.networks.export import export_module, read_contract
from ctmri_monai.networks.loading import load_generator
from ctmri_monai.spec import ModelSpec, NetworkSpec
from ctmri_monai.utils.hashing import file_sha256

PACKAGES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}


def require_engine(engine: str) -> None:
    """Skip (fail in CI, CTMRI_REQUIRE_ENGINES=1) when the engine's packages are not installed."""
    missing = [p for p in PACKAGES.get(engine, ()) if importlib.util.find_spec(p) is None]
    if missing:
        hint = (f"{', '.join(missing)} not installed: pip install 'ctmri-monai[onnx,openvino]'; CI sets "
                "CTMRI_REQUIRE_ENGINES=1 and fails instead of skipping")
        if os.environ.get("CTMRI_REQUIRE_ENGINES") == "1":
            pytest.fail(hint)
        pytest.skip(hint)


def _checkpoint(path: Path, bump: float = 0.0) -> Path:
    """Two tiny ResNet generators (ngf 8) at 32 px; ``bump`` is added to one weight of the ct2mri generator."""
    torch.manual_seed(0)
    spec = make_spec(32, (6.0, 6.0))
    spec = ModelSpec(**{**spec.__dict__, "network": NetworkSpec(backbone="resnet", ngf=8, n_blocks=2)})
    data = {f"generator_{d}": define_generator(**spec.generator_kwargs()).state_dict() for d in ("ct2mri", "mri2ct")}
    if bump:
        name = next(k for k, v in data["generator_ct2mri"].items() if v.ndim == 4)
        data["generator_ct2mri"][name][0, 0, 1, 1] += bump
    atomic_torch_save(data | {"model_spec": spec.state_dict()}, path)
    return path


def _read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Checkpoint, volume, the torch fp32 reference conversion and the tolerance derived from torch fp64."""
    tmp = tmp_path_factory.mktemp("engines")
    ckpt = _checkpoint(tmp / "model.pt")
    volume = save_nifti(tmp / "vol.nii.gz", head_hu((30, 32, 6), seed=4), np.diag([6.0, 6.0, 8.0, 1.0]))
    net, info = load_generator(ckpt, "ct2mri")
    net64 = copy.deepcopy(net).double()

    def exact(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net64(x.double()).float()

    options = ConvertOptions(disagreement=False, batch_size=4, amp=False)
    outputs = {}
    for name, generator in (("torch32", net), ("torch64", exact)):
        service = ConversionService({"ct2mri": generator}, info["spec"], info, options)
        service.convert_file(volume, tmp / f"{name}.nii.gz", "ct2mri")
        outputs[name] = _read(tmp / f"{name}.nii.gz")
    e = float(np.abs(outputs["torch32"] - outputs["torch64"]).max())
    tolerance = max(4 * e, 16 * float(np.finfo(np.float32).eps))
    return {"tmp": tmp, "ckpt": ckpt, "volume": volume, "reference": outputs["torch32"], "tolerance": tolerance,
            "spec": info["spec"]}


def _convert(setup: dict, model: Path, engine: str, name: str, *extra: str) -> Path:
    out = setup["tmp"] / name
    rc = ctmri(["convert", str(setup["volume"]), "--checkpoint", str(model), "--engine", engine, "--threads", "2",
                "--direction", "ct2mri", "--output-dir", str(out), "--no-progress", "--batch-size", "4", *extra])
    assert rc == 0
    return out


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_carries_contract(setup: dict, fmt: str) -> None:
    if fmt == "onnx":
        require_engine("onnxruntime")
    out = setup["tmp"] / f"contract.{'onnx' if fmt == 'onnx' else 'ts'}"
    assert ctmri(["export", str(setup["ckpt"]), "--direction", "ct2mri", "--format", fmt, "--output", str(out)]) == 0
    contract = read_contract(out)
    assert ModelSpec.from_state(contract["model_spec"]) == setup["spec"]
    assert contract["direction"] == "ct2mri"
    assert contract["source_sha256"] == file_sha256(setup["ckpt"])
    assert contract["software"].startswith("ctmri-monai ")
    service = ConversionService.from_exported(out)  # the contract from the file alone
    assert service.spec == setup["spec"] and service.directions == ["ct2mri"]
    with pytest.raises(ContractError, match="an exported ct2mri generator; mri2ct was asked for"):
        ConversionService.from_exported(out, directions=["mri2ct"])


def test_contractless_export_refused(setup: dict, capsys: pytest.CaptureFixture) -> None:
    require_engine("onnxruntime")
    bare = setup["tmp"] / "bare.onnx"
    net, _ = load_generator(setup["ckpt"], "ct2mri")
    export_module(net, setup["spec"], "onnx", bare)  # a plain ONNX export, no contract
    with pytest.raises(ContractError, match="without a ctmri contract"):
        ConversionService.from_exported(bare)
    out = setup["tmp"] / "bare_out"
    rc = ctmri(["convert", str(setup["volume"]), "--checkpoint", str(bare), "--direction", "ct2mri",
                "--output-dir", str(out), "--no-progress"])
    assert rc == 2 and "without a ctmri contract" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("engine, fmt", [("onnxruntime", "onnx"), ("openvino", "onnx"), ("torch", "torchscript")])
def test_engine_parity(setup: dict, engine: str, fmt: str) -> None:
    """The exported file converts like torch fp32 within the tolerance; one changed weight does not."""
    require_engine(engine)
    suffix = ".onnx" if fmt == "onnx" else ".ts"
    differences = {}
    for label, ckpt in (("same", setup["ckpt"]), ("changed", _checkpoint(setup["tmp"] / "changed.pt", 0.05))):
        exported = setup["tmp"] / f"{label}_{engine}{suffix}"
        assert ctmri(["export", str(ckpt), "--direction", "ct2mri", "--format", fmt, "--output", str(exported)]) == 0
        out = _convert(setup, exported, engine, f"{label}_{engine}", "--disagreement")
        assert (out / "vol_ct2mri_disagreement.nii.gz").exists()  # one direction exported is enough for the map
        differences[label] = float(np.abs(_read(out / "vol_ct2mri.nii.gz") - setup["reference"]).max())
    assert differences["same"] <= setup["tolerance"], (differences, setup["tolerance"])
    assert differences["changed"] > setup["tolerance"], (differences, setup["tolerance"])  # negative control


def test_checkpoint_on_engine_keeps_the_map(setup: dict) -> None:
    """A checkpoint run by an ONNX engine (exported in memory): the map is made, and the synthetic volume equals
    the torch one within the tolerance."""
    require_engine("onnxruntime")
    out = _convert(setup, setup["ckpt"], "onnxruntime", "ckpt_ort", "--disagreement")
    assert (out / "vol_ct2mri_disagreement.nii.gz").exists()
    assert np.abs(_read(out / "vol_ct2mri.nii.gz") - setup["reference"]).max() <= setup["tolerance"]
    assert load_checkpoint(setup["ckpt"])  # the checkpoint itself is untouched by the in-memory export


def test_missing_engine_named(setup: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """An engine whose package is not installed: exit status 2 and the extra that installs it, nothing written."""
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    out = setup["tmp"] / "no_engine"
    rc = ctmri(["convert", str(setup["volume"]), "--checkpoint", str(setup["ckpt"]), "--engine", "openvino",
                "--direction", "ct2mri", "--output-dir", str(out), "--no-progress"])
    assert rc == 2 and "ctmri-monai[openvino]" in capsys.readouterr().err and not out.exists()


def test_exported_file_on_the_series_road(setup: dict) -> None:
    """`ConversionService.from_checkpoint` (what ``ctmri serve`` calls) takes an exported file: a DICOM CT series
    converts in memory into a derived series whose pixels come from the exported generator; an MR series, whose
    direction the file lacks, is refused by name."""
    from test_convert import write_ct_series

    require_engine("onnxruntime")
    exported = setup["tmp"] / "series.onnx"
    assert ctmri(["export", str(setup["ckpt"]), "--direction", "ct2mri", "--format", "onnx", "--output",
                  str(exported)]) == 0
    folder = setup["tmp"] / "ct_series"
    write_ct_series(folder, head_hu((32, 28, 4), seed=3), spacing=(6.0, 6.0, 8.0))
    service = ConversionService.from_checkpoint(exported, ConvertOptions.for_run("cpu", model=exported, batch_size=4,
                                                                                 disagreement=True))
    assert service.info["engine"] == "onnxruntime" and service.writes_map("ct2mri")
    result = service.convert_series(folder)
    assert result.converted.report["disagreement"]["passes"] == 2  # the exported generator made the map
    assert len(list(result.derived.datasets())) == 4 and result.converted.report["direction"] == "ct2mri"
    reference = ConversionService.from_checkpoint(setup["ckpt"], ConvertOptions.for_run(
        "cpu", batch_size=4, disagreement=False)).convert_series(folder)
    assert np.abs(result.converted.array.astype(np.float64) - reference.converted.array).max() <= setup["tolerance"]
    with pytest.raises(ContractError, match="mri2ct"):
        service.model("mri2ct")
