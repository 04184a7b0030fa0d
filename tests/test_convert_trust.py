"""The disagreement map on the conversion road (issue 20): ``ctmri convert`` writes it beside each output on the
input's exact grid, its figures go into summary.json, the table and the QA montage, and it changes nothing else.

Equivalence: a run with the map and a run with ``--no-disagreement`` (same checkpoint, same inputs) must write
byte-identical NIfTI outputs and DICOM pixel data; the map adds its own file, its figures and, in the montage, red
outline pixels only. Negative control: switching background masking off (a real change of the synthetic volume)
makes the same comparison fail.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import fail_dicom_write_at, make_spec, write_tiny_checkpoint
from PIL import Image
from test_convert import Identity, S, head_hu, make_affine, rotation, save_nifti, write_ct_series

from ctmri_monai.apps.cli import main as ctmri
from ctmri_monai.convert import BatchOptions, ConvertOptions, ModelSource, run_batch

AFFINE = make_affine(rotation(0.1, 0.0, 0.3), (6.0, 6.0, 8.0))  # oblique: the map must follow it exactly


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One input folder (a NIfTI volume and a DICOM series), one tiny checkpoint, three conversions: with the map,
    with --no-disagreement, and with --no-disagreement --no-mask-background (the negative control)."""
    tmp = tmp_path_factory.mktemp("trust")
    data = tmp / "in"
    data.mkdir()
    save_nifti(data / "vol.nii.gz", head_hu((30, 32, 4), seed=4), AFFINE)
    write_ct_series(data / "series", head_hu((32, 28, 5), seed=3), spacing=(6.0, 6.0, 8.0))
    ckpt = write_tiny_checkpoint(tmp / "m.pt")
    args = [str(data), "--direction", "ct2mri", "--checkpoint", str(ckpt), "--device", "cpu", "--dicom",
            "--no-progress"]
    tables = {}
    for name, extra in (("map", ["--disagreement"]), ("plain", ["--no-disagreement"]),
                        ("control", ["--no-disagreement", "--no-mask-background"])):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert ctmri(["convert", *args, *extra, "--output-dir", str(tmp / name)]) == 0
        tables[name] = out.getvalue()
    return {"root": tmp, "data": data, "ckpt": ckpt, "args": args, "tables": tables}


def _records(out: Path) -> dict[str, dict]:
    return {Path(r["file"]).name: r for r in json.loads((out / "summary.json").read_text())["files"]}


def _same_conversion(a: Path, b: Path) -> list[str]:
    """What differs between the synthetic volumes of two runs: NIfTI bytes and DICOM pixel data."""
    problems = [f"{p.name}: bytes differ" for p in sorted(a.glob("*_ct2mri.nii.gz"))
                if p.read_bytes() != (b / p.name).read_bytes()]
    for folder in sorted(a.glob("*_dicom")):
        pixels = [{pydicom.dcmread(f).InstanceNumber: pydicom.dcmread(f).PixelData for f in (root / folder.name)
                   .iterdir()} for root in (a, b)]
        problems += [f"{folder.name}/{k}: PixelData" for k in pixels[0] if pixels[0][k] != pixels[1].get(k)]
    return problems


def test_map_is_written_on_the_input_grid_with_its_figures(runs: dict) -> None:
    out = runs["root"] / "map"
    records = _records(out)
    for name, stem, affine in (("vol.nii.gz", "vol", AFFINE), ("series", "series", None)):
        path = out / f"{stem}_ct2mri_disagreement.nii.gz"
        img, synthetic = nib.load(path), nib.load(out / f"{stem}_ct2mri.nii.gz")
        values = np.asarray(img.dataobj)
        assert img.get_data_dtype() == np.float32 and values.dtype == np.float32
        assert img.shape == synthetic.shape  # the input's shape (the synthetic volume is on it, test_convert)
        np.testing.assert_allclose(img.affine, synthetic.affine if affine is None else affine, atol=1e-5)
        assert 0.0 <= values.min() and values.max() <= 1.0 and values.max() > 0.0
        descrip = img.header["descrip"].item().decode()
        assert descrip.startswith("DISAGREEMENT MAP ct2mri") and "1=most suspect" in descrip and len(descrip) <= 80
        figures = records[name]["disagreement"]
        assert figures["map"] == str(path)
        assert 0.0 <= figures["flagged_share"] <= 1.0 and figures["region_count"] >= len(figures["regions"])
        assert (figures["flagged_share"] > 0) == (values.max() >= figures["threshold"] and bool(figures["regions"]))
        assert figures["passes"] == 2 and set(figures["scales"]) == {"structure", "stability"}
        # Centroids in patient coordinates follow the input's affine; both are rounded to 0.1 (voxel, mm): the
        # voxel rounding moves a point by at most 0.05 * the row's absolute sum of the affine, plus 0.05 mm.
        tolerance = 0.05 * np.abs(img.affine[:3, :3]).sum(axis=1) + 0.05 + 1e-6
        for region in figures["regions"]:
            world = img.affine @ np.append(region["centroid_voxel"], 1.0)
            assert (np.abs(np.asarray(region["centroid_patient"]) - world[:3]) <= tolerance).all(), region
            assert region["volume_mm3"] == pytest.approx(region["voxels"] * abs(np.linalg.det(img.affine[:3, :3])),
                                                         rel=1e-3)
        worst = [w["slice"] for w in figures["worst_slices"]]
        assert all(0 <= k < img.shape[2] for k in worst) and len(set(worst)) == len(worst)
        assert f"{100 * figures['flagged_share']:.2f}%" in runs["tables"]["map"]  # the table's "flagged" column
    assert "flagged" in runs["tables"]["map"].splitlines()[0]


def test_no_disagreement_writes_no_map_and_leaves_every_other_output_as_it_is(runs: dict) -> None:
    root = runs["root"]
    with_map, plain, control = root / "map", root / "plain", root / "control"
    assert not list(plain.rglob("*disagreement*"))
    assert all("disagreement" not in r for r in _records(plain).values())
    assert all(line.split()[6] == "-" for line in runs["tables"]["plain"].splitlines()[2:4])  # no flagged cell
    # The map is computed after the translation, from its frames: the synthetic volumes are byte-identical.
    assert len(list(with_map.glob("*_dicom/*.dcm"))) == 5
    assert _same_conversion(with_map, plain) == []
    control_problems = _same_conversion(control, plain)  # negative control: a real change of the volume shows
    assert any("nii.gz: bytes differ" in p for p in control_problems), control_problems
    assert any("PixelData" in p for p in control_problems), control_problems
    # Summary records equal but for the output folder, seconds, fresh UIDs and the map's figures.
    records = [json.loads(json.dumps(_records(out)).replace(str(out), "OUT")) for out in (with_map, plain)]
    for name, record in records[0].items():
        other = records[1][name]
        for r in (record, other):
            r.pop("seconds"), r.pop("dicom_series_uid"), r.pop("disagreement", None)
        assert record == other
    # The montage: the map adds red outlines of its flagged regions on the output, and nothing else.
    outlined = 0
    for png in sorted((plain / "qa").glob("*.png")):
        a = np.asarray(Image.open(png).convert("RGB"))
        b = np.asarray(Image.open(with_map / "qa" / png.name).convert("RGB"))
        changed = (a != b).any(axis=-1)
        assert (b[changed] == (255, 0, 0)).all()
        outlined += int(changed.sum())
    assert outlined > 0


def test_finished_outputs_with_their_map_are_skipped_and_a_missing_map_is_redone(runs: dict, capsys) -> None:
    out = runs["root"] / "map"
    first = _records(out)
    (out / "vol_ct2mri_disagreement.nii.gz").unlink()
    assert ctmri(["convert", *runs["args"], "--disagreement", "--output-dir", str(out)]) == 0
    again = _records(out)
    assert again["series"]["status"] == "skipped" and again["series"]["disagreement"] == first["series"][
        "disagreement"]
    assert again["vol.nii.gz"]["status"] != "skipped" and (out / "vol_ct2mri_disagreement.nii.gz").exists()
    assert again["vol.nii.gz"]["disagreement"]["flagged_share"] == first["vol.nii.gz"]["disagreement"][
        "flagged_share"]


def test_a_failed_write_leaves_no_map_and_a_generator_alone_gives_one(
        runs: dict, tmp_path: Path, monkeypatch) -> None:
    fail_dicom_write_at(monkeypatch, 3)
    out = tmp_path / "out"
    mapped = ConvertOptions.for_run("cpu", disagreement=True)
    assert run_batch([runs["data"]], out, "ct2mri", ModelSource(checkpoint=runs["ckpt"]),
                     BatchOptions(convert=mapped, progress=False, dicom=True)) == 1
    records = _records(out)
    assert records["vol.nii.gz"]["status"] != "failed" and records["series"]["status"] == "failed"
    assert sorted(p.name for p in out.iterdir()) == ["qa", "summary.json", "vol_ct2mri.nii.gz",
                                                     "vol_ct2mri_disagreement.nii.gz"]  # all or nothing
    monkeypatch.undo()
    # a generator in memory, no checkpoint and no backward generator: the map needs the forward one alone
    src = save_nifti(tmp_path / "a.nii.gz", head_hu((20, 18, 4)), np.eye(4))
    assert run_batch([src], tmp_path / "g", "ct2mri", ModelSource(generator=Identity(), spec=make_spec(S)),
                     BatchOptions(convert=mapped, progress=False)) == 0
    figures = _records(tmp_path / "g")["a.nii.gz"]["disagreement"]
    assert figures["passes"] == 2 and Path(figures["map"]).exists()

    import ctmri_monai.convert.pipeline as pipeline

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("planted failure")

    monkeypatch.setattr(pipeline, "volume_disagreement", broken)  # the map fails: the conversion still stands
    assert run_batch([runs["data"] / "vol.nii.gz"], tmp_path / "b", "ct2mri", ModelSource(checkpoint=runs["ckpt"]),
                     BatchOptions(convert=mapped, progress=False)) == 0
    record = _records(tmp_path / "b")["vol.nii.gz"]
    assert record["status"] != "failed" and "disagreement" not in record
    assert any("no disagreement map (ValueError: planted failure)" in w for w in record["warnings"])
    assert not list((tmp_path / "b").rglob("*disagreement*")) and (tmp_path / "b" / "vol_ct2mri.nii.gz").exists()


def test_the_service_reads_the_checkpoint_once_and_builds_no_generator_for_the_map(runs: dict,
                                                                                    monkeypatch) -> None:
    """The map needs the forward generator alone: a one-direction service with the map on reads the checkpoint
    once and builds one generator (today's main built the backward one too)."""
    import argparse

    import ctmri_monai.io.checkpoint_file as checkpoint_file
    import ctmri_monai.networks.loading as loading
    from ctmri_monai.convert import ConversionService, ConvertOptions, add_convert_arguments
    from ctmri_monai.node.cli import add_serve_arguments

    reads, built = [], []
    real, build = checkpoint_file.load_checkpoint, loading.generator_from
    monkeypatch.setattr(checkpoint_file, "load_checkpoint", lambda *a, **k: reads.append(a) or real(*a, **k))
    monkeypatch.setattr(loading, "generator_from", lambda data, d, *a, **k: built.append(d) or build(data, d, *a, **k))
    service = ConversionService.from_checkpoint(runs["ckpt"], ConvertOptions.for_run("cpu", disagreement=True),
                                                directions=["ct2mri"])
    assert len(reads) == 1 and built == ["ct2mri"] and service.directions == ["ct2mri"]
    assert service.writes_map("ct2mri") and not service.writes_map("mri2ct")
    off = ConversionService.from_checkpoint(runs["ckpt"], ConvertOptions.for_run("cpu"), directions=["ct2mri"])
    assert not off.writes_map("ct2mri")
    for add in (add_convert_arguments, add_serve_arguments):  # `ctmri convert` and `ctmri serve`: one flag
        parser = add(argparse.ArgumentParser())
        base = ["--checkpoint", "m.pt"] + (["--spool", "s"] if add is add_serve_arguments else [])
        assert parser.parse_args(base).disagreement is False  # opt-in: off by default
        assert parser.parse_args([*base, "--disagreement"]).disagreement is True
        assert parser.parse_args([*base, "--no-disagreement"]).disagreement is False  # still accepted
