"""``ctmri convert`` wiring: a real (tiny) checkpoint through ``main_convert`` and the lead's loader."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from conftest import make_spec

import ctmri_monai.networks as networks  # noqa: E402
from ctmri_monai.convert import add_convert_arguments, main_convert
from ctmri_monai.utils.hashing import file_sha256  # noqa: E402


def _checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    spec = make_spec(32)
    data = {f"generator_{d}": networks.define_generator(**spec.generator_kwargs()).state_dict()
            for d in ("ct2mri", "mri2ct")}
    data["model_spec"] = spec.state_dict()
    torch.save(data, path)
    return path


def _parse(*argv: str) -> argparse.Namespace:
    return add_convert_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_main_convert_with_a_real_checkpoint(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "tiny.pt")
    x = np.linspace(-1, 1, 30)
    head = (x[:, None] ** 2 + x[None, :] ** 2 < 0.6)[:, :, None] * np.ones((1, 1, 4))
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.where(head, 40, -1000).astype(np.int16), affine), tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    status = main_convert(_parse("--direction", "ct2mri", "--checkpoint", str(ckpt),
                                 str(tmp_path / "ct.nii.gz"), "--output-dir", str(out), "--device", "cpu",
                                 "--batch-size", "3", "--no-progress"))
    assert status == 0
    img = nib.load(out / "ct_ct2mri.nii.gz")
    assert img.shape == (30, 30, 4) and np.allclose(img.affine, affine)
    sha = file_sha256(ckpt)
    assert img.header["descrip"].item().decode() == f"SYNTHETIC ct2mri model=tiny.pt:{sha[:12]}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["sha256"] == sha and summary["files"][0]["status"] in ("ok", "flagged")


def test_main_convert_reports_a_bad_checkpoint(tmp_path: Path, capsys) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    status = main_convert(_parse("--direction", "mri2ct", "--checkpoint", str(tmp_path / "bad.pt"),
                                 "x.nii.gz", "--output-dir", str(tmp_path / "out"), "--device", "cpu",
                                 "--no-progress"))
    assert status == 2 and "bad.pt" in capsys.readouterr().err
