"""The DICOM node against a real Orthanc (a child process on free localhost ports, storage in a temporary folder,
a Lua ``OnStableSeries`` script routing every new series to the node, as a hospital would set it up).

Cases: round trip both ways; routing without a loop; refusals; SIGKILL between acknowledgement and delivery;
destination down; load (20 series over 4 associations, memory flat). Skipped with an install hint where Orthanc is
missing, a failure in CI (CTMRI_REQUIRE_ORTHANC=1).
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from conftest import write_tiny_checkpoint
from dicom_net import (
    NodeProcess,
    Orthanc,
    c_store,
    free_port,
    journal_rows,
    phantom_series,
    require_orthanc,
    text_report,
    wait_for,
)

ROUTE = """function OnStableSeries(seriesId, tags, metadata)
  RestApiPost('/modalities/ctmri/store', seriesId)
end
"""
NODE_ARGS = ("--allow-aet", "ORTHANC", "--idle-seconds", "3", "--retry-seconds", "0.5", "--max-retry-seconds", "2")


class Pacs:
    """Orthanc with its routing script, and the node it routes to."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.checkpoint = folder, write_tiny_checkpoint(folder / "m.pt")
        self.node_port = free_port()
        self.orthanc = Orthanc(folder / "orthanc", self.node_port, lua=ROUTE, dicomweb=True)
        self.spool = folder / "spool"
        self.node = NodeProcess(self.checkpoint, self.spool, self.node_port, *self.node_args())

    def node_args(self, port: int | None = None) -> tuple[str, ...]:
        return (*NODE_ARGS, "--destination", f"ORTHANC@127.0.0.1:{port or self.orthanc.dicom}")

    def derived(self, study_uid: str, count: int, timeout: float = 60) -> list[pydicom.Dataset]:
        """Wait for the one synthetic series of ``study_uid`` with ``count`` instances; returns its datasets."""
        def ready() -> list[dict] | None:
            found = [s for s in self.orthanc.series_of_study(study_uid)
                     if s["MainDicomTags"].get("SeriesDescription", "").startswith("SYNTHETIC")]
            return found if found and len(found[0]["Instances"]) == count else None

        found = wait_for(ready, timeout, f"the synthetic series of study {study_uid}")
        assert len(found) == 1, f"{len(found)} synthetic series"
        return [pydicom.dcmread(BytesIO(b)) for b in self.orthanc.instance_files(found[0]["ID"])]

    def stop(self) -> None:
        if self.node.proc.poll() is None:
            self.node.kill(signal.SIGTERM)
        self.orthanc.stop()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    require_orthanc(dicomweb=True)
    setup = Pacs(tmp_path_factory.mktemp("pacs"))
    yield setup
    setup.stop()


def floats(ds: pydicom.Dataset, keyword: str) -> list[float]:
    value = ds.data_element(keyword).value
    return [float(v) for v in value] if isinstance(value, list | pydicom.multival.MultiValue) else [float(value)]


def check_round_trip(pacs: Pacs, modality: str, target: str) -> None:
    source = phantom_series(modality, 4, seed=7)
    series_id = pacs.orthanc.upload(source)
    pacs.orthanc.request("POST", "/modalities/ctmri/store", series_id.encode())
    derived = pacs.derived(str(source[0].StudyInstanceUID), len(source))
    by_sop = {str(ds.SOPInstanceUID): ds for ds in source}
    for ds in derived:
        src = by_sop[str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        assert ds.Modality == target and ds.SyntheticData == "YES" and ds.StudyInstanceUID == src.StudyInstanceUID
        for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
            assert floats(ds, kw) == floats(src, kw), kw
    assert {str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) for ds in derived} == set(by_sop)


def test_round_trip_ct_to_synthetic_mr(pacs: Pacs) -> None:
    check_round_trip(pacs, "CT", "MR")


def test_round_trip_mr_to_synthetic_ct(pacs: Pacs) -> None:
    check_round_trip(pacs, "MR", "CT")


def test_routing_by_lua_on_stable_series_does_not_loop(pacs: Pacs) -> None:
    source = phantom_series("CT", 3, seed=11)
    pacs.orthanc.upload(source)  # nothing else: Orthanc's OnStableSeries sends it to the node
    derived = pacs.derived(str(source[0].StudyInstanceUID), 3)
    out_uid = str(derived[0].SeriesInstanceUID)
    rows = wait_for(lambda: [r for r in journal_rows(pacs.spool) if r["series_uid"] == out_uid
                             and r["status"] == "failed"], 30, "the routed-back synthetic series refused")
    assert "already synthetic" in rows[0]["reason"]
    series = pacs.orthanc.series_of_study(str(source[0].StudyInstanceUID))
    assert len(series) == 2  # the source and one synthetic series, nothing more


def test_refusals_and_the_node_serves_on(pacs: Pacs) -> None:
    ct = phantom_series("CT", 2, seed=3)
    assert c_store(ct, pacs.node_port, calling="STRANGER") == []  # unknown calling AE title
    study = str(ct[0].StudyInstanceUID)
    report, eight_bit = text_report(study), phantom_series("CT", 3, study_uid=study, eight_bit=True)
    for datasets in ([report], eight_bit):
        pacs.orthanc.request("POST", "/modalities/ctmri/store", pacs.orthanc.upload(datasets).encode())
    wait_for(lambda: len([r for r in journal_rows(pacs.spool) if r["study_uid"] == study
                          and r["status"] in ("stored", "failed")]) == 2, 30, "both refusals")
    rows = {r["series_uid"]: r for r in journal_rows(pacs.spool)}
    assert rows[str(report.SeriesInstanceUID)]["status"] == "stored"
    assert rows[str(eight_bit[0].SeriesInstanceUID)]["status"] == "failed"
    assert "8-bit export or a missing rescale" in rows[str(eight_bit[0].SeriesInstanceUID)]["reason"]
    pacs.orthanc.request("POST", "/modalities/ctmri/store", pacs.orthanc.upload(ct).encode())
    assert len(pacs.derived(study, 2)) == 2  # the next series still converts


def test_sigkill_between_acknowledgement_and_delivery_then_restart_delivers_once(pacs: Pacs) -> None:
    spool, port = pacs.folder / "spool-kill", free_port()
    closed = free_port()  # the first run's destination: nobody listens, so nothing is delivered before the kill
    node = NodeProcess(pacs.checkpoint, spool, port, *pacs.node_args(closed))
    first, second = phantom_series("CT", 3, seed=21), phantom_series("MR", 3, seed=22)
    assert c_store(first, port) == [0] * 3
    wait_for(lambda: any(r["status"] in ("sending", "delivering") for r in journal_rows(spool)), 60,
             "a converted series")
    assert c_store(second, port) == [0] * 3
    assert node.kill(signal.SIGKILL) == -signal.SIGKILL  # acknowledged, not delivered
    node = NodeProcess(pacs.checkpoint, spool, port, *pacs.node_args())
    try:
        for source in (first, second):
            assert len(pacs.derived(str(source[0].StudyInstanceUID), 3)) == 3
        wait_for(lambda: all(r["status"] == "sent" for r in journal_rows(spool)), 30, "journal: all sent")
    finally:
        assert node.kill(signal.SIGTERM) == 0  # SIGTERM: drains and exits cleanly
    for source in (first, second):  # still exactly one derived series each, after a last look
        assert len(pacs.derived(str(source[0].StudyInstanceUID), 3, timeout=5)) == 3


def test_destination_down_is_retried_and_delivered_when_orthanc_is_back(pacs: Pacs) -> None:
    pacs.orthanc.stop()
    source = phantom_series("CT", 3, seed=31)
    try:
        assert c_store(source, pacs.node_port) == [0] * 3
        wait_for(lambda: any(r["series_uid"] == str(source[0].SeriesInstanceUID) and r["attempts"] >= 2
                             for r in journal_rows(pacs.spool)), 60, "failed delivery attempts")
    finally:
        pacs.orthanc.start()
    assert len(pacs.derived(str(source[0].StudyInstanceUID), 3)) == 3


def test_load_twenty_series_over_four_associations_converted_once_memory_flat(pacs: Pacs) -> None:
    series = [phantom_series("CT" if i % 2 else "MR", 3, seed=100 + i) for i in range(20)]
    uids = {str(s[0].SeriesInstanceUID) for s in series}

    def sent() -> int:
        return sum(r["status"] == "sent" for r in journal_rows(pacs.spool) if r["series_uid"] in uids)

    rss: dict[int, int] = {}
    statuses: list[list[int]] = []
    threads = [threading.Thread(target=lambda k=k: statuses.extend(
        c_store([ds for s in series[k::4] for ds in s], pacs.node_port))) for k in range(4)]
    for t in threads:
        t.start()
    rss[5] = wait_for(lambda: pacs.node.rss_kib() if sent() >= 5 else None, 120, "5 series sent")
    for t in threads:
        t.join()
    rss[20] = wait_for(lambda: pacs.node.rss_kib() if sent() >= 20 else None, 180, "20 series sent")
    assert statuses == [0] * 60
    rows = [r for r in journal_rows(pacs.spool) if r["series_uid"] in uids]
    assert len(rows) == 20 and all(r["attempts"] == 1 and r["output_series_uid"] for r in rows)
    outputs = {r["output_series_uid"] for r in rows}
    found = pacs.orthanc.request("POST", "/tools/find", b'{"Level": "Series", "Query": {}, "Expand": true}')
    stored = [s for s in found if s["MainDicomTags"]["SeriesInstanceUID"] in outputs]
    assert len(stored) == 20 and all(len(s["Instances"]) == 3 for s in stored)
    print(f"node RSS after 5 series {rss[5]} KiB, after 20 {rss[20]} KiB")
    assert abs(rss[20] - rss[5]) <= 0.10 * rss[5], rss


def test_dicomweb_round_trip_through_orthancs_dicomweb_plugin(pacs: Pacs, capsys) -> None:
    from ctmri_monai.apps.cli import main as ctmri

    source = phantom_series("MR", 3, seed=41)
    study, series = str(source[0].StudyInstanceUID), str(source[0].SeriesInstanceUID)
    pacs.orthanc.upload(source)
    capsys.readouterr()
    assert ctmri(["convert", "--dicomweb", f"{pacs.orthanc.url}/dicom-web", "--study", study, "--series", series,
                  "--checkpoint", str(pacs.checkpoint), "--device", "cpu"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "ok" and record["direction"] == "mri2ct"
    found = pacs.orthanc.request("POST", "/tools/find", json.dumps(
        {"Level": "Series", "Query": {"SeriesInstanceUID": record["output_series_uid"]}}).encode())
    assert len(found) == 1
    files = pacs.orthanc.instance_files(found[0])
    derived = [pydicom.dcmread(BytesIO(b)) for b in files]
    assert len(derived) == 3 and {ds.SyntheticData for ds in derived} == {"YES"}
    assert {ds.StudyInstanceUID for ds in derived} == {study} and {ds.Modality for ds in derived} == {"CT"}


def test_the_node_log_names_uids_and_never_patients(pacs: Pacs) -> None:
    log = pacs.node.log.read_text()
    assert "converted to 1." in log and "sent to ORTHANC@127.0.0.1" in log  # the work is logged, by UID
    assert "Nodetest" not in log and "NODE-PID" not in log and "19600101" not in log
