"""The DICOM node in process (pynetdicom peers on localhost): round trips both ways, refusals, the journal,
delivery retried while the destination is down, and restart after a crash mid-conversion."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_checkpoint
from dicom_net import Receiver, c_store, free_port, journal_rows, phantom_series, text_report, wait_for

from ctmri_monai.apps.cli import main as ctmri
from ctmri_monai.convert import ConversionService, ConvertOptions
from ctmri_monai.node import Destination, Node, NodeConfig, Spool
from ctmri_monai.node.cli import format_jobs
from ctmri_monai.node.journal import Journal


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> ConversionService:
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "m.pt")
    return ConversionService.from_checkpoint(ckpt, ConvertOptions.for_run("cpu", batch_size=4, disagreement=True))


def start_node(service: ConversionService, spool: Path, destination: int | None, **config: object) -> Node:
    dest = Destination("DEST", "127.0.0.1", destination) if destination else None
    settings = dict(port=free_port(), allow_aet=("ORTHANC",), destination=dest, idle_seconds=30.0,
                    retry_seconds=0.2, max_retry_seconds=1.0, timeout=10.0, poll=0.05) | config
    return Node(service, Spool(spool), NodeConfig(**settings)).start()


def status_of(spool: Path, series_uid: str) -> str | None:
    return next((r["status"] for r in journal_rows(spool) if r["series_uid"] == series_uid), None)


def check_derived(source: list, derived: list, modality: str) -> None:
    """Same count and study, per-slice geometry equal to the source slice it references, labelled synthetic."""
    assert len(derived) == len(source)
    by_sop = {str(ds.SOPInstanceUID): ds for ds in source}
    for ds in derived:
        src = by_sop[str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        assert ds.Modality == modality and ds.SyntheticData == "YES"
        assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
        for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            np.testing.assert_allclose([float(v) for v in ds.data_element(kw).value],
                                       [float(v) for v in src.data_element(kw).value], atol=1e-6)
        assert ds.ContributingEquipmentSequence[0].Manufacturer == "ctmri-monai"
    assert len({str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) for ds in derived}) == len(source)


def test_round_trip_both_ways_refusals_and_the_journal(service: ConversionService, tmp_path: Path, capsys,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    dest = Receiver()
    node = start_node(service, tmp_path / "spool", dest.port)
    try:
        ct, mr = phantom_series("CT", 4), phantom_series("MR", 3, seed=1)
        assert c_store(ct, node.port) == [0] * 4 and c_store(mr, node.port) == [0] * 3
        assert c_store(ct, node.port, calling="STRANGER") == []  # unknown calling AE: association rejected
        eight_bit = phantom_series("CT", 3, eight_bit=True)
        report = text_report(str(ct[0].StudyInstanceUID))
        assert c_store([report], node.port) == [0] and c_store(eight_bit, node.port) == [0] * 3
        after = phantom_series("CT", 2, seed=5)  # the node still serves the next series
        assert c_store(after, node.port) == [0] * 2
        wait_for(lambda: len(dest.received) == 4 + 3 + 2, 60, "three derived series")
        by_source = {str(s[0].SourceImageSequence[0].ReferencedSOPInstanceUID): s for s in dest.series().values()}
        for source, modality in ((ct, "MR"), (mr, "CT"), (after, "MR")):
            derived = next(s for s in by_source.values() if any(
                str(d.SourceImageSequence[0].ReferencedSOPInstanceUID) == str(source[0].SOPInstanceUID) for d in s))
            check_derived(source, derived, modality)
        synthetic = dest.series()[next(iter(dest.series()))]
        assert c_store(synthetic, node.port) == [0] * len(synthetic)  # a derived series routed back: refused
        wait_for(lambda: status_of(node.spool.root, str(synthetic[0].SeriesInstanceUID)) == "failed", 30,
                 "the loop refusal")
    finally:
        node.stop()
        dest.stop()
    rows = {r["series_uid"]: r for r in journal_json(tmp_path / "spool", capsys)}
    assert rows[str(ct[0].SeriesInstanceUID)]["status"] == "sent"
    for source in (ct, mr, after):  # the disagreement map's figures, per converted series (issue 20)
        figures = rows[str(source[0].SeriesInstanceUID)]["disagreement"]
        assert 0.0 <= figures["flagged_share"] <= 1.0 and figures["region_count"] >= len(figures["regions"])
        assert figures["passes"] == 2 and {"worst_slices", "threshold", "flagged_volume_mm3"} <= set(figures)
        assert f"{100 * figures['flagged_share']:.2f}%" in format_jobs(list(rows.values()))
    assert rows[str(report.SeriesInstanceUID)]["disagreement"] is None
    assert rows[str(mr[0].SeriesInstanceUID)]["direction"] == "mri2ct"
    assert rows[str(report.SeriesInstanceUID)]["status"] == "stored"
    failed = rows[str(eight_bit[0].SeriesInstanceUID)]
    assert failed["status"] == "failed" and "8-bit export or a missing rescale" in failed["reason"]
    assert "already synthetic (SyntheticData YES)" in rows[str(synthetic[0].SeriesInstanceUID)]["reason"]
    assert len(dest.series()) == 3  # nothing more was sent
    assert str(ct[0].SeriesInstanceUID) in caplog.text and "8-bit export" in caplog.text  # UIDs and reasons
    assert "Nodetest" not in caplog.text and "NODE-PID" not in caplog.text  # never the patient's name or ID


def journal_json(spool: Path, capsys) -> list[dict]:
    capsys.readouterr()
    assert ctmri(["jobs", str(spool), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert ctmri(["jobs", str(spool)]) == 0 and "sent" in capsys.readouterr().out
    return rows


def test_destination_down_is_retried_with_back_off_until_delivered(service: ConversionService,
                                                                    tmp_path: Path) -> None:
    port = free_port()
    node = start_node(service, tmp_path / "spool", port)
    try:
        ct = phantom_series("CT", 3)
        assert c_store(ct, node.port) == [0] * 3
        uid = str(ct[0].SeriesInstanceUID)
        wait_for(lambda: any(r["attempts"] >= 2 for r in journal_rows(tmp_path / "spool")),
                 30, "two failed delivery attempts")
        assert status_of(tmp_path / "spool", uid) in ("sending", "delivering")
        dest = Receiver(port)  # the destination comes back
        try:
            wait_for(lambda: status_of(tmp_path / "spool", uid) == "sent", 30, "delivery")
            time.sleep(0.5)
            assert len(dest.received) == 3 and len(dest.series()) == 1
        finally:
            dest.stop()
    finally:
        node.stop()


def test_idle_series_completes_and_a_restart_resumes_acknowledged_work(service: ConversionService,
                                                                       tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    journal = Journal(spool / "journal.sqlite")
    ct = phantom_series("CT", 3)
    Spool(spool)
    for ds in ct:  # acknowledged by an earlier run that died while converting
        from pydicom.filebase import DicomBytesIO

        buffer = DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        Spool(spool).store(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), buffer.getvalue())
        journal.record_instance(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), {"modality": "CT"}, True)
    journal.update(str(ct[0].SeriesInstanceUID), status="converting")
    journal.close()
    dest = Receiver()
    node = start_node(service, spool, dest.port, idle_seconds=0.5)
    try:
        wait_for(lambda: len(dest.received) == 3, 30, "the resumed series")
        mr = phantom_series("MR", 2)
        from pynetdicom import AE

        ae = AE(ae_title="ORTHANC")
        ae.add_requested_context(mr[0].SOPClassUID)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="CTMRI")
        assert [int(assoc.send_c_store(ds).Status) for ds in mr] == [0, 0]
        wait_for(lambda: len(dest.series()) == 2, 30, "a series completed by idleness, association still open")
        assoc.release()
    finally:
        node.stop()
        dest.stop()


class Slow(torch.nn.Module):
    """The identity, one second per call: a conversion that is surely under way when the node is stopped."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(1.0)
        return x[:, :1]


def test_stop_finishes_the_conversion_under_way_and_leaves_the_rest_queued(tmp_path: Path) -> None:
    from conftest import make_spec

    slow = ConversionService({"ct2mri": Slow()}, make_spec(32, pixdim=(6.0, 6.0)), {"file": "slow.pt"},
                             ConvertOptions(batch_size=8))
    node = start_node(slow, tmp_path / "spool", None)
    series = [phantom_series("CT", 3, seed=k) for k in range(3)]
    for s in series:
        assert c_store(s, node.port) == [0] * 3
    wait_for(lambda: any(r["status"] == "converting" for r in journal_rows(node.spool.root)),
             30, "a conversion under way")
    node.stop()
    statuses = sorted(status_of(tmp_path / "spool", str(s[0].SeriesInstanceUID)) for s in series)
    assert statuses == ["converted", "queued", "queued"]


def test_listening_beyond_this_machine_needs_an_allow_list(tmp_path: Path, capsys) -> None:
    args = ["serve", "--checkpoint", str(tmp_path / "m.pt"), "--spool", str(tmp_path / "spool")]
    assert ctmri([*args, "--host", "0.0.0.0"]) == 2
    assert "needs --allow-aet" in capsys.readouterr().err and not (tmp_path / "spool").exists()
    assert ctmri([*args, "--destination", "ORTHANC-no-port"]) == 2  # and a bad destination is named
    assert "expected AET@HOST:PORT" in capsys.readouterr().err


def test_a_journal_from_before_the_disagreement_map_stays_readable(tmp_path: Path) -> None:
    import sqlite3

    from ctmri_monai.node import journal as journal_module

    path = tmp_path / "journal.sqlite"
    old_schema = journal_module._SCHEMA.replace(", disagreement TEXT", "")
    assert old_schema != journal_module._SCHEMA
    db = sqlite3.connect(path)
    db.executescript(old_schema)
    db.execute("INSERT INTO series (series_uid, status, received_at) VALUES ('1.2.3', 'sent', 1.0)")
    db.commit()
    db.close()
    journal = Journal(path)  # gains the column, keeps the row
    try:
        assert journal.rows()[0]["series_uid"] == "1.2.3" and journal.rows()[0]["disagreement"] is None
        journal.update("1.2.3", disagreement={"flagged_share": 0.0125, "regions": []})
        assert journal.rows()[0]["disagreement"] == {"flagged_share": 0.0125, "regions": []}
        assert "1.25%" in format_jobs(journal.rows())
    finally:
        journal.close()


class AbortingReceiver(Receiver):
    """A destination that breaks its first association off before storing its ``after + 1``-th instance (the
    first ``after`` are stored and acknowledged), then behaves."""

    def __init__(self, after: int) -> None:
        self.after, self.calls = after, 0
        super().__init__()

    def _store(self, event) -> int:
        self.calls += 1
        if self.calls == self.after + 1:
            event.assoc.abort()  # gone mid-series: this instance is neither stored nor acknowledged
            return 0xA700
        return super()._store(event)


def test_a_delivery_broken_off_mid_series_resends_only_the_unacknowledged_and_empties_the_spool(
        service: ConversionService, tmp_path: Path) -> None:
    from dicom_net import spool_footprint

    dest = AbortingReceiver(after=2)
    node = start_node(service, tmp_path / "spool", dest.port)
    try:
        ct = phantom_series("CT", 5)
        assert c_store(ct, node.port) == [0] * 5
        uid = str(ct[0].SeriesInstanceUID)
        wait_for(lambda: status_of(tmp_path / "spool", uid) == "sent", 30, "delivery after the broken association")
        sops = [str(ds.SOPInstanceUID) for ds in dest.received]
        assert len(sops) == 5 and len(set(sops)) == 5, sops  # each instance once: none of the first two again
        assert next(r for r in journal_rows(tmp_path / "spool") if r["series_uid"] == uid)["attempts"] == 2
        assert spool_footprint(tmp_path / "spool") == (0, 0)  # received and derived instances are gone
    finally:
        node.stop()
        dest.stop()


def test_a_late_instance_of_a_sent_series_is_acknowledged_not_kept_not_converted(service: ConversionService,
                                                                                 tmp_path: Path) -> None:
    from dicom_net import spool_footprint

    dest = Receiver()
    node = start_node(service, tmp_path / "spool", dest.port)
    try:
        ct = phantom_series("CT", 4)
        assert c_store(ct[:3], node.port) == [0] * 3
        uid = str(ct[0].SeriesInstanceUID)
        wait_for(lambda: status_of(tmp_path / "spool", uid) == "sent", 30, "the first three sent")
        assert c_store(ct[3:], node.port) == [0]  # the fourth, late
        row = wait_for(lambda: next((r for r in journal_rows(tmp_path / "spool") if r["instances"] == 4), None),
                       30, "the late instance in the journal")
        assert row["status"] == "sent" and spool_footprint(tmp_path / "spool") == (0, 0)
        time.sleep(0.5)
        assert len(dest.received) == 3
    finally:
        node.stop()
        dest.stop()
