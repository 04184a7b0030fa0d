"""The DICOM node (``ctmri serve`` as a child process) with DCMTK on the other side: ``echoscu`` verifies it,
``storescu`` sends series, ``storescp`` receives the synthetic series (each instance under a unique name, so a
duplicate shows). Load: 8 series from 4 ``storescu`` processes at once, the destination killed during the load and
started again; every series converted and delivered exactly once, the node's memory flat, the spool back to its
start, no patient name or ID in any log. All traffic on 127.0.0.1, free ports, every wait bounded. Skipped without
DCMTK / dicom3tools, a failure in CI (CTMRI_REQUIRE_DICOM_TOOLS=1).
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from conftest import write_tiny_checkpoint
from dicom_net import (
    NodeProcess,
    Storescp,
    dciodvfy_errors,
    dcmtk_echo,
    dcmtk_store,
    free_port,
    journal_rows,
    require_tools,
    scanner_series,
    spool_footprint,
    wait_for,
    write_series,
)

PATIENT = ("Dcmtkload^Philippa", "DCMTK-PID-4242")
NODE_ARGS = ("--allow-aet", "ORTHANC", "--idle-seconds", "30", "--retry-seconds", "0.5", "--max-retry-seconds", "1")


class Setup:
    """A node whose destination is a storescp; the spool and logs in ``folder``."""

    def __init__(self, folder: Path, checkpoint: Path) -> None:
        self.folder = folder
        self.dest = Storescp(folder / "received")
        self.spool, self.port = folder / "spool", free_port()
        self.node = NodeProcess(checkpoint, self.spool, self.port, *NODE_ARGS, "--destination",
                                f"DEST@127.0.0.1:{self.dest.port}")

    def send(self, files: list[Path], name: str) -> int:
        proc = dcmtk_store(files, self.port, self.folder / f"storescu-{name}.log")
        return proc.wait(timeout=120)

    def sent(self, uids: set[str]) -> list[dict]:
        return [r for r in journal_rows(self.spool) if r["series_uid"] in uids and r["status"] == "sent"]

    def received(self) -> dict[str, list[pydicom.Dataset]]:
        """Received datasets by SeriesInstanceUID."""
        out: dict[str, list[pydicom.Dataset]] = {}
        for path in self.dest.received():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            out.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
        return out

    def logs(self) -> list[Path]:
        return [self.node.log, *self.folder.glob("storescu-*.log")]

    def stop(self) -> None:
        if self.node.proc.poll() is None:
            assert self.node.kill(signal.SIGTERM) == 0
        self.dest.stop()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools("echoscu", "storescu", "storescp", "dciodvfy")
    return write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "m.pt")


@pytest.fixture()
def setup(tmp_path: Path, checkpoint: Path) -> Iterator[Setup]:
    running = Setup(tmp_path, checkpoint)
    yield running
    running.stop()


def test_echoscu_verifies_the_node_and_a_stranger_is_refused(setup: Setup) -> None:
    done = dcmtk_echo(setup.port)
    assert done.returncode == 0, done.stdout + done.stderr
    assert dcmtk_echo(setup.port, calling="STRANGER").returncode != 0  # not in --allow-aet


def test_storescu_in_storescp_out_both_ways_valid_once_synthetic_same_study(setup: Setup, tmp_path: Path) -> None:
    sources = {"CT": scanner_series("CT", 3, seed=1), "MR": scanner_series("MR", 3, seed=2, patient_position=None)}
    for modality, datasets in sources.items():
        assert setup.send(write_series(datasets, tmp_path / "src" / modality), modality) == 0
    uids = {str(s[0].SeriesInstanceUID) for s in sources.values()}
    rows = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(setup.sent(uids)), 120, "both series sent")
    received = setup.received()
    assert set(received) == {r["output_series_uid"] for r in rows}
    for modality, source in sources.items():
        out_uid = next(r["output_series_uid"] for r in rows if r["series_uid"] == str(source[0].SeriesInstanceUID))
        derived = received[out_uid]
        assert Counter(str(ds.SOPInstanceUID) for ds in derived) == Counter({str(ds.SOPInstanceUID): 1
                                                                              for ds in derived})  # once each
        assert len(derived) == len(source)
        assert {ds.SyntheticData for ds in derived} == {"YES"}
        assert {ds.StudyInstanceUID for ds in derived} == {source[0].StudyInstanceUID}
        assert {ds.Modality for ds in derived} == {"MR" if modality == "CT" else "CT"}
    for path in setup.dest.received():
        assert dciodvfy_errors(path) == [], path.name


def _send_in_parallel(setup: Setup, shares: list[list[list[Path]]]) -> list[int]:
    """One thread per share, each running ``storescu`` once per series of its share, one after the other."""
    codes: list[int] = []

    def run(k: int, share: list[list[Path]]) -> None:
        codes.extend(setup.send(files, f"{k}-{j}") for j, files in enumerate(share))

    threads = [threading.Thread(target=run, args=(k, share), daemon=True) for k, share in enumerate(shares)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a storescu never finished"
    return codes


def test_load_eight_series_from_four_storescu_with_the_destination_away_and_back(setup: Setup,
                                                                                  tmp_path: Path) -> None:
    n, clients = 8, 4
    series = [scanner_series("CT" if k % 2 else "MR", 3, seed=100 + k, patient=PATIENT,
                             patient_position="HFS" if k % 2 else None) for k in range(n)]
    files = [write_series(s, tmp_path / "src" / f"s{k}") for k, s in enumerate(series)]
    uids = {str(s[0].SeriesInstanceUID) for s in series}
    start_footprint = spool_footprint(setup.spool)
    t0 = time.monotonic()
    codes = _send_in_parallel(setup, [[f] for f in files[:clients]])  # the first 4, from 4 storescu at once
    rss_after_2 = wait_for(lambda: setup.node.rss_kib() if len(setup.sent(uids)) >= 2 else None, 180,
                           "2 series sent")
    setup.dest.go_away()  # the destination goes away during the load, while the other 4 arrive...
    codes += _send_in_parallel(setup, [[f] for f in files[clients:]])
    wait_for(lambda: any(r["series_uid"] in uids and r["status"] == "sending" and r["attempts"] >= 1
                         for r in journal_rows(setup.spool)), 120, "a delivery refused while it is away")
    setup.dest.start()  # ...and comes back on the same port and folder
    rows = wait_for(lambda: (lambda r: r if len(r) == n else None)(setup.sent(uids)), 300, f"{n} series sent")
    seconds = time.monotonic() - t0
    rss_end = setup.node.rss_kib()

    assert codes == [0] * n  # no series refused by the node
    assert len({r["output_series_uid"] for r in rows}) == n
    assert any(r["attempts"] >= 2 for r in rows)  # a delivery failed while the destination was away
    received = setup.received()
    assert set(received) == {r["output_series_uid"] for r in rows}  # nothing lost, nothing else
    sops = Counter(str(ds.SOPInstanceUID) for derived in received.values() for ds in derived)
    assert len(sops) == 3 * n and set(sops.values()) == {1}, sops.most_common(3)  # nothing sent twice
    by_source = {r["output_series_uid"]: r for r in rows}
    for out_uid, derived in received.items():
        assert {ds.StudyInstanceUID for ds in derived} == {by_source[out_uid]["study_uid"]}
        assert {ds.SyntheticData for ds in derived} == {"YES"}
    print(f"load: {n} series from {clients} storescu in {seconds:.1f} s; node RSS after 2 series {rss_after_2} KiB, "
          f"at the end {rss_end} KiB")
    assert rss_end <= 1.5 * rss_after_2, (rss_after_2, rss_end)

    wait_for(lambda: spool_footprint(setup.spool) == start_footprint, 30, "the spool back to its start size")
    for log in setup.logs():  # the node's log and the senders': UIDs and AE titles, never the patient
        text = log.read_text(errors="replace")
        assert not any(part in text for value in PATIENT for part in value.split("^")), log.name
    assert "sent to DEST@127.0.0.1" in setup.node.log.read_text()

