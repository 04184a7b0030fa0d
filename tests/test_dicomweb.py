"""``ctmri convert --dicomweb``: WADO-RS in, STOW-RS out, through dicomweb-client's serverless file client and
through its HTTP client against a small DICOMweb server on 127.0.0.1 (one that can fail a series)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from conftest import write_tiny_checkpoint
from dicom_net import phantom_series, text_report
from test_convert import head_hu, write_ct_series

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
    status = ctmri(["convert", "--dicomweb", url, "--study", study, "--checkpoint", str(ckpt), "--device", "cpu",
                    "--disagreement"])
    records = {r["series"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert status == 1  # one series was refused
    assert set(records) == {str(ct[0].SeriesInstanceUID), str(eight_bit[0].SeriesInstanceUID)}  # the SR is no image
    ok = records[str(ct[0].SeriesInstanceUID)]
    assert ok["status"] == "ok" and ok["direction"] == "ct2mri"
    assert 0.0 <= ok["disagreement"]["flagged_share"] <= 1.0 and ok["disagreement"]["passes"] == 2  # the map's
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


class DicomWebServer(ThreadingHTTPServer):
    """QIDO-RS series search, WADO-RS series retrieval and STOW-RS over HTTP on 127.0.0.1, from datasets in
    memory; a retrieval of a series in ``failing`` answers HTTP 500. ``stored``: the instances STOW-RS received."""

    def __init__(self, datasets: list[pydicom.Dataset], failing: set[str]) -> None:
        super().__init__(("127.0.0.1", 0), DicomWebHandler)
        self.datasets, self.failing, self.stored = datasets, failing, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class DicomWebHandler(BaseHTTPRequestHandler):
    server: DicomWebServer
    BOUNDARY = "ctmri-test-boundary"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes = b"", content_type: str = "application/dicom+json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 3 and parts[0] == "studies" and parts[2] == "series":  # QIDO-RS: the study's series
            seen: dict[str, str] = {}
            for ds in self.server.datasets:
                if ds.StudyInstanceUID == parts[1]:
                    seen.setdefault(str(ds.SeriesInstanceUID), str(ds.Modality))
            body = [{"0020000E": {"vr": "UI", "Value": [uid]}, "00080060": {"vr": "CS", "Value": [mod]}}
                    for uid, mod in seen.items()]
            return self._send(200, json.dumps(body).encode())
        if len(parts) == 4 and parts[0] == "studies" and parts[2] == "series":  # WADO-RS: one series
            if parts[3] in self.server.failing:
                return self._send(500, b"planted failure", "text/plain")
            body = b""
            for ds in self.server.datasets:
                if ds.SeriesInstanceUID == parts[3]:
                    buffer = io.BytesIO()
                    ds.save_as(buffer, enforce_file_format=True)
                    body += (f"--{self.BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                             + buffer.getvalue() + b"\r\n")
            body += f"--{self.BOUNDARY}--".encode()
            return self._send(200, body, f'multipart/related; type="application/dicom"; boundary={self.BOUNDARY}')
        return self._send(404)

    def do_POST(self) -> None:  # noqa: N802 - STOW-RS: keep the instances of the multipart body
        body = self.rfile.read(int(self.headers["Content-Length"]))
        boundary = self.headers["Content-Type"].split("boundary=")[1].strip('"').encode()
        for part in body.split(b"--" + boundary)[1:-1]:
            payload = part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
            self.server.stored.append(pydicom.dcmread(io.BytesIO(payload)))
        self._send(200)


@pytest.fixture
def web_study() -> Iterator[tuple[DicomWebServer, str, list[str]]]:
    """A study of three CT series on a local DICOMweb server whose retrieval of the middle one fails."""
    first = phantom_series("CT", 3, seed=1)
    study = str(first[0].StudyInstanceUID)
    series = [first, phantom_series("CT", 3, study_uid=study, seed=2), phantom_series("CT", 3, study_uid=study, seed=3)]
    uids = [str(s[0].SeriesInstanceUID) for s in series]
    server = DicomWebServer([ds for s in series for ds in s], failing={uids[1]})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, study, uids
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_an_http_error_of_one_series_fails_that_series_and_keeps_the_others(web_study, tmp_path: Path,
                                                                            capsys) -> None:
    """Bug 3: the HTTP 500 of the middle series' retrieval is that series' failed record; the series before and
    after it are converted, stored back and reported (before: the study aborted with exit 2 and no record)."""
    server, study, uids = web_study
    ckpt = write_tiny_checkpoint(tmp_path / "m.pt")
    status = ctmri(["convert", "--dicomweb", server.url, "--study", study, "--checkpoint", str(ckpt), "--device",
                    "cpu"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 1
    assert [r["series"] for r in records] == uids
    assert [r["status"] for r in records] == ["ok", "failed", "ok"]
    assert uids[1] in records[1]["error"] and "500" in records[1]["error"]
    stored = {str(ds.SeriesInstanceUID) for ds in server.stored}
    assert stored == {records[0]["output_series_uid"], records[2]["output_series_uid"]}
    assert len(server.stored) == 6 and {ds.SyntheticData for ds in server.stored} == {"YES"}


def test_dicomweb_derives_its_options_as_the_file_road_does(tmp_path: Path, monkeypatch) -> None:
    """Bug 6: on the CPU ``--dicomweb`` ran batch 16 (the dataclass default) where the file road runs the CPU's
    default; both roads now build their options with `ConvertOptions.for_run`, so they agree field by field."""
    import ctmri_monai.convert.dicomweb as dicomweb
    import ctmri_monai.convert.service as service_module

    built = []
    real_init = service_module.ConversionService.__init__

    def spy(self, *args, **kwargs) -> None:
        real_init(self, *args, **kwargs)
        built.append(self.options)

    monkeypatch.setattr(service_module.ConversionService, "__init__", spy)
    monkeypatch.setattr(dicomweb, "convert_dicomweb", lambda *a, **k: [])
    ckpt = write_tiny_checkpoint(tmp_path / "m.pt")
    src = tmp_path / "ct"
    write_ct_series(src, head_hu((32, 28, 3)), spacing=(6.0, 6.0, 8.0))
    common = ["--checkpoint", str(ckpt), "--device", "cpu"]
    assert ctmri(["convert", str(src), "--direction", "ct2mri", "--output-dir", str(tmp_path / "o"),
                  "--no-progress", *common]) == 0
    (tmp_path / "archive").mkdir()
    ctmri(["convert", "--dicomweb", f"file://{tmp_path / 'archive'}", "--study", "1.2.3", *common])
    files, web = built
    fields = ("batch_size", "device", "amp", "engine", "threads", "disagreement")
    assert {f: getattr(web, f, None) for f in fields} == {f: getattr(files, f, None) for f in fields}
    assert web.batch_size == 1 and str(web.device) == "cpu"  # the CPU's default batch
