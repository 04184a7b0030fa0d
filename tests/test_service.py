"""The conversion service object: one model, many inputs; outputs byte-identical to the conversion before it.

Equivalence: the whole package of ``BASE`` (the commit before the conversion road was rebuilt around frames that
carry their own inverse and options built once; it had been proven equal, the same way, to the conversion before the
service object) converts the same inputs with the same checkpoint in a child process, with its map turned off, and
today's ``ctmri convert`` does too. NIfTI files and QA montages must be byte-identical, summary records equal but
for timings, and DICOM slices equal element by element but for the fresh UIDs, the creation dates and what
conformance to the IODs changed on purpose. A negative control (background masking switched off) shows the
comparison fails when outputs differ.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import REPO, write_tiny_checkpoint
from test_convert import head_hu, save_nifti, write_ct_series

from ctmri_monai.apps.cli import main as ctmri
from ctmri_monai.convert import ConversionService, ConvertOptions, convert_volume
from ctmri_monai.io.dicom_series import SyntheticSeriesError, synthetic_origin
from ctmri_monai.io.errors import ContractError

BASE = "f3f5bd8"  # the conversion road before frames with their inverse and options built once
NEW_LABELS: set[str] = set()  # elements today's objects add to the base's
# Issue 29 (conformance to the CT / MR Image IOD) added, dropped (the MR's Modality LUT) and changed these on purpose
CONFORMANCE_ADDED = {"PatientPosition", "Laterality", "RepetitionTime"}
CONFORMANCE_DROPPED = {"RescaleIntercept", "RescaleSlope", "RescaleType"}
CONFORMANCE_CHANGED = {"ImageType", "WindowCenter", "WindowWidth"}
FRESH = {"SOPInstanceUID", "SeriesInstanceUID", "InstanceCreationDate", "InstanceCreationTime", "SeriesDate",
         "SeriesTime", "ContentDate", "ContentTime"}
CONVERT = "import argparse, sys; from ctmri_monai.convert.cli import add_convert_arguments, main_convert; " \
          "p = add_convert_arguments(argparse.ArgumentParser()); sys.exit(main_convert(p.parse_args(sys.argv[1:])))"


def _base_package(tmp: Path) -> Path:
    """The base commit's whole package, unpacked from the git history (skips without it, fails in CI)."""
    root = tmp / "base"
    root.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BASE, "ctmri_monai"], capture_output=True)
    if archive.returncode:
        if os.environ.get("CI"):  # CI clones the whole history: a missing base commit is a failure there
            pytest.fail(f"the base commit {BASE} is not in this checkout's history")
        pytest.skip(f"the base commit {BASE} is not in this checkout's history (a full git clone has it)")
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return root


def _inputs(tmp: Path) -> Path:
    data = tmp / "in"
    write_ct_series(data / "series", head_hu((32, 28, 5), seed=3), spacing=(6.0, 6.0, 8.0))
    affine = np.diag([6.0, 6.0, 8.0, 1.0])
    save_nifti(data / "vol.nii.gz", head_hu((30, 32, 4), seed=4), affine)
    return data


def _dicom_elements(path: Path) -> dict[str, object]:
    def value(e: pydicom.DataElement) -> object:
        if e.keyword == "PixelData":
            return bytes(e.value)
        if e.VR == "SQ":  # items compared element by element, their fresh dates left out
            return [{i.keyword: str(i.value) for i in item if i.keyword != "ContributionDateTime"} for item in e.value]
        return e.value

    return {e.keyword or str(e.tag): value(e) for e in pydicom.dcmread(path) if e.keyword not in FRESH}


def _differences(old: Path, new: Path) -> list[str]:
    """What differs between two output folders beyond timings, fresh UIDs, dates and the new labels."""
    problems = []
    old_files = sorted(p.relative_to(old) for p in old.rglob("*") if p.is_file())
    new_files = sorted(p.relative_to(new) for p in new.rglob("*") if p.is_file())
    if old_files != new_files:
        return [f"files differ: {old_files} != {new_files}"]
    for rel in old_files:
        a, b = old / rel, new / rel
        if rel.name.startswith("summary"):
            records = [json.loads(x.read_text().replace(str(root), "OUT"))["files"] for x, root in ((a, old), (b, new))]
            for ra, rb in zip(*records, strict=True):
                for r in (ra, rb):
                    r.pop("seconds"), r.pop("dicom_series_uid")
                if ra != rb:
                    problems.append(f"{rel}: record differs: {ra} != {rb}")
        elif rel.suffix == ".dcm":
            ea, eb = _dicom_elements(a), _dicom_elements(b)
            if set(eb) - set(ea) - CONFORMANCE_ADDED != NEW_LABELS or set(ea) - set(eb) - CONFORMANCE_DROPPED:
                problems.append(f"{rel}: elements {sorted(set(ea) ^ set(eb))}")
            problems += [f"{rel}: {k}" for k in ea if k in eb and ea[k] != eb[k] and k not in CONFORMANCE_CHANGED]
        elif a.read_bytes() != b.read_bytes():
            problems.append(f"{rel}: bytes differ")
    return problems


def test_outputs_are_byte_identical_to_the_base_commits_conversion(tmp_path: Path) -> None:
    base = _base_package(tmp_path)
    data, ckpt = _inputs(tmp_path), write_tiny_checkpoint(tmp_path / "m.pt")
    args = [str(data), "--direction", "ct2mri", "--checkpoint", str(ckpt), "--device", "cpu", "--dicom",
            "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(base), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    old = subprocess.run([sys.executable, "-c", CONVERT, *args, "--no-disagreement", "--output-dir",
                          str(tmp_path / "old")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert old.returncode == 0, old.stderr[-2000:]
    # Both without the map (today's default): that the map, when on, leaves every other output as it is, is proven
    # against this same no-map road in tests/test_convert_trust.py.
    assert ctmri(["convert", *args, "--no-disagreement", "--output-dir", str(tmp_path / "new")]) == 0
    assert ctmri(["convert", *args, "--no-disagreement", "--output-dir", str(tmp_path / "unmasked"),
                  "--no-mask-background"]) == 0

    assert len(list((tmp_path / "new").rglob("*.dcm"))) == 5
    assert _differences(tmp_path / "old", tmp_path / "new") == []
    control = _differences(tmp_path / "old", tmp_path / "unmasked")  # negative control: a real change shows
    assert any("nii.gz: bytes differ" in p for p in control) and any("PixelData" in p for p in control), control


def test_service_loads_once_and_converts_in_memory_what_the_file_road_writes(tmp_path: Path, monkeypatch) -> None:
    import ctmri_monai.io.checkpoint_file as checkpoint_file

    data, ckpt = _inputs(tmp_path), write_tiny_checkpoint(tmp_path / "m.pt")
    reads = []
    real = checkpoint_file.load_checkpoint
    monkeypatch.setattr(checkpoint_file, "load_checkpoint", lambda *a, **k: reads.append(a) or real(*a, **k))
    service = ConversionService.from_checkpoint(ckpt, ConvertOptions.for_run("cpu", batch_size=2))
    assert sorted(service.directions) == ["ct2mri", "mri2ct"] and len(reads) == 1

    series = service.convert_series(data / "series")  # direction from Modality CT
    assert series.converted.report["direction"] == "ct2mri"
    datasets = list(series.derived.datasets())
    assert len(datasets) == 5 and {d.SyntheticData for d in datasets} == {"YES"}
    item = datasets[0].ContributingEquipmentSequence[0]
    assert item.Manufacturer == "ctmri-monai" and service.info["sha256"] in item.ContributionDescription
    assert synthetic_origin(datasets[0]) is not None
    written = service.convert_file(data / "series", tmp_path / "o.nii.gz", "ct2mri")
    on_disk = np.asarray(nib.load(written["output"]).dataobj)
    np.testing.assert_array_equal(on_disk, series.converted.array)  # same generator, same contract, same values
    stored = np.stack([d.pixel_array for d in datasets])
    assert stored.shape == (5, 28, 32)
    again = convert_volume(data / "series", tmp_path / "p.nii.gz", service.generators["ct2mri"], service.spec,
                           "ct", "mri", batch_size=2)  # the function road, with a generator and a contract
    np.testing.assert_array_equal(np.asarray(nib.load(again["output"]).dataobj), on_disk)
    assert len(reads) == 1


def test_synthetic_series_and_unknown_modalities_are_refused_by_name(tmp_path: Path) -> None:
    ckpt = write_tiny_checkpoint(tmp_path / "m.pt")
    service = ConversionService.from_checkpoint(ckpt, ConvertOptions.for_run("cpu"))
    write_ct_series(tmp_path / "ct", head_hu((32, 28, 3)), spacing=(6.0, 6.0, 8.0))
    derived = service.convert_series(tmp_path / "ct", "ct2mri").derived
    derived.write(tmp_path / "synthetic")
    with pytest.raises(SyntheticSeriesError, match="already synthetic"):
        service.convert_series(tmp_path / "synthetic")
    for f in (tmp_path / "synthetic").iterdir():  # without the flag the contributing equipment still tells
        ds = pydicom.dcmread(f)
        del ds.SyntheticData
        ds.save_as(f)
    with pytest.raises(SyntheticSeriesError, match="made by ctmri-monai"):
        service.convert_series(tmp_path / "synthetic")
    for f in (tmp_path / "ct").iterdir():
        ds = pydicom.dcmread(f)
        ds.Modality = "PT"
        ds.save_as(f)
    with pytest.raises(ContractError, match="modality 'PT' has no conversion"):
        service.convert_series(tmp_path / "ct")
    only = ConversionService.from_checkpoint(ckpt, ConvertOptions.for_run("cpu"), directions=["ct2mri"])
    with pytest.raises(ContractError, match="needs the mri2ct generator"):
        from ctmri_monai.convert.service import direction_for_modality

        direction_for_modality("MR", only.directions)
