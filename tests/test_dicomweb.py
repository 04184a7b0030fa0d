"""``ctmri convert --dicomweb``: WADO-RS in, STOW-RS out, through dicomweb-client's serverless file client."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import write_tiny_checkpoint
from dicom_net import phantom_series, text_report

from ctmri_monai.apps.cli import main as ctmri


def test_dicomweb_round_trip_with_the_file_client(tmp_path: Path, capsys) -> None:
    from dicomweb_client import DICOMfileClient

    store = tmp_path / "archive"
    store.mkdir()
    ct = phantom_series("CT", 3)
    study = str(ct[0].StudyInstanceUID)
    eight_bit = phantom_series("CT", 2, study_uid=study, eight_bit=True)
    for k, ds in enumerate([*ct, *eight_bit, text_report(study)]):
        ds.save_as(store / f"{k}.dcm", enforce_file_format=True)
    ckpt = write_tiny_checkpoint(tmp_path / "m.pt")
    url = f"file://{store}"
    status = ctmri(["convert", "--dicomweb", url, "--study", study, "--checkpoint", str(ckpt), "--device", "cpu"])
    records = {r["series"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert status == 1  # one series was refused
    assert set(records) == {str(ct[0].SeriesInstanceUID), str(eight_bit[0].SeriesInstanceUID)}  # the SR is no image
    ok = records[str(ct[0].SeriesInstanceUID)]
    assert ok["status"] == "ok" and ok["direction"] == "ct2mri"
    assert 0.0 <= ok["disagreement"]["flagged_share"] <= 1.0 and ok["disagreement"]["passes"] == 3  # the map's
    assert "8-bit export" in records[str(eight_bit[0].SeriesInstanceUID)]["error"]

    client = DICOMfileClient(url=url, update_db=True)
    derived = client.retrieve_series(study, ok["output_series_uid"])
    assert len(derived) == 3 and {ds.SyntheticData for ds in derived} == {"YES"}
    assert {str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) for ds in derived} == \
        {str(ds.SOPInstanceUID) for ds in ct}
    # converting the study again refuses the synthetic series by name (no loop) and converts the source again
    ctmri(["convert", "--dicomweb", url, "--study", study, "--series", ok["output_series_uid"], "--checkpoint",
           str(ckpt), "--device", "cpu"])
    again = json.loads(capsys.readouterr().out)
    assert again["status"] == "failed" and "already synthetic" in again["error"]
