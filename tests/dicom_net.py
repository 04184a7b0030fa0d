"""Helpers for the DICOM node tests: phantom series in memory, a C-STORE sender, a receiving SCP, the node as a
child process, and a real Orthanc started from a temporary configuration."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

REPO = Path(__file__).resolve().parents[1]
ORTHANC = os.environ.get("CTMRI_ORTHANC", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL_HINT = ("Orthanc is not installed: `sudo apt-get install orthanc orthanc-dicomweb` (or run "
                "scripts/setup.sh as root); CI sets CTMRI_REQUIRE_ORTHANC=1 and fails instead of skipping")
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
TOOLS_HINT = ("DICOM tools missing: `sudo apt-get install dicom3tools dcmtk` (or run scripts/setup.sh as root); "
              "CI sets CTMRI_REQUIRE_DICOM_TOOLS=1 and fails instead of skipping")
#: Attributes the installed dciodvfy (dicom3tools 1.00~20220618) does not know yet, by their tag as it prints it,
#: with the edition of the standard's data dictionary (PS3.6) that added each; only error lines naming one of these
#: are excused (SyntheticData: in pydicom's dictionary from 2024c, absent from its 2023e one).
UNKNOWN_TO_VALIDATOR = {"(0x0008,0x001c)": "SyntheticData, DICOM 2024b"}
#: The IODs dciodvfy names on its own line when it recognises the object (anything else: an error).
KNOWN_IODS = ("CTImage", "MRImage")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_orthanc(dicomweb: bool = False) -> None:
    """Skip (fail in CI, CTMRI_REQUIRE_ORTHANC=1) when Orthanc (and its DICOMweb plugin) is not installed."""
    missing = not Path(ORTHANC).exists() or (dicomweb and not DICOMWEB_PLUGIN.exists())
    if missing:
        if os.environ.get("CTMRI_REQUIRE_ORTHANC") == "1":
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)


def require_tools(*names: str) -> None:
    """Skip (fail in CI, CTMRI_REQUIRE_DICOM_TOOLS=1) when a dicom3tools / DCMTK program is not on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        message = f"{', '.join(missing)} not found. {TOOLS_HINT}"
        if os.environ.get("CTMRI_REQUIRE_DICOM_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)


def dciodvfy_lines(path: Path) -> tuple[str, list[str], list[str]]:
    """dciodvfy on one file: the IOD it recognised ("" if none), every line saying "Error" or "Abort", and its
    warnings (its exit status says nothing more: 1 for some errors, 0 for others)."""
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (done.stdout + done.stderr).splitlines()
    iod = next((ln.strip() for ln in lines if ln.strip() in KNOWN_IODS), "")
    errors = [ln for ln in lines if "Error" in ln or "Abort" in ln]
    return iod, errors, [ln for ln in lines if "Warning" in ln and ln not in errors]


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's errors for one file, but those about attributes it does not know (`UNKNOWN_TO_VALIDATOR`); an
    object whose IOD it does not recognise is an error too (nothing would have been checked)."""
    iod, lines, _ = dciodvfy_lines(path)
    errors = [ln for ln in lines if not any(tag in ln.lower() for tag in UNKNOWN_TO_VALIDATOR)]
    return errors + ([] if iod else [f"dciodvfy recognised none of {KNOWN_IODS}"])


def dcmdump_problems(path: Path) -> list[str]:
    """What DCMTK's dcmdump says is wrong with one file: its warnings and errors (W: / E: / F:) and a bad exit."""
    done = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in done.stderr.splitlines() if ln[:2] in ("W:", "E:", "F:")]
    return problems + ([f"exit status {done.returncode}"] if done.returncode else [])


# ------------------------------------------------------------------------------------------------- series
def phantom_series(modality: str = "CT", slices: int = 4, size: int = 32, study_uid: str | None = None,
                   seed: int = 0, eight_bit: bool = False) -> list[Dataset]:
    """A small head series in memory: CT in HU (int16, intercept -1024) or MR (uint16), or an 8-bit CT export."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    inside = grid[0] ** 2 / 0.8 + grid[1] ** 2 / 0.7 < 1.0
    study_uid, series_uid, frame = study_uid or generate_uid(), generate_uid(), generate_uid()
    out = []
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.SOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, \
            ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Nodetest^Wilhelmina", "NODE-PID-77", \
            "19600101", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "101010", "1", "A1"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 2, k + 1
        ds.ImagePositionPatient = [-90.0, -90.0, 8.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [6.0, 6.0], 8.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        if modality == "CT" and not eight_bit:
            values = np.where(inside, rng.integers(-100, 900, inside.shape), -1000)
            ds.PixelRepresentation, ds.RescaleIntercept, ds.RescaleSlope = 1, -1024, 1
            ds.PixelData = (values + 1024).astype("<i2").tobytes()
        else:  # MR intensities, or a CT exported to 8 bits (no HU air)
            values = np.where(inside, rng.integers(100, 255 if eight_bit else 1000, inside.shape), 0)
            ds.PixelRepresentation = 0
            ds.PixelData = values.astype("<u2").tobytes()
        out.append(ds)
    return out

#: What a scanner writes beyond `phantom_series`, per modality: the attributes a real CT / MR series carries, so that
#: the source itself passes dciodvfy and every error in a derived series is ours.
SCANNER_ATTRIBUTES = {
    "CT": {"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "KVP": "120", "AcquisitionNumber": 1,
           "ConvolutionKernel": "H30s", "RescaleType": "HU", "WindowCenter": 40, "WindowWidth": 80},
    "MR": {"ImageType": ["ORIGINAL", "PRIMARY", "OTHER"], "ScanningSequence": "GR", "SequenceVariant": "SP",
           "ScanOptions": "", "MRAcquisitionType": "3D", "RepetitionTime": "2300", "EchoTime": "2.98",
           "EchoTrainLength": 1, "MagneticFieldStrength": "3",
           "WindowCenter": 500, "WindowWidth": 1000},
}


def scanner_series(modality: str = "CT", slices: int = 4, size: int = 32, patient_position: str | None = "HFS",
                   seed: int = 0, study_uid: str | None = None, patient: tuple[str, str] | None = None
                   ) -> list[Dataset]:
    """`phantom_series` with what a real scanner adds (every Type 1 / 2 attribute of the CT or MR Image IOD, a
    PatientPosition unless None, equipment); ``patient``: (name, ID) instead of the default ones."""
    out = phantom_series(modality, slices, size, study_uid=study_uid, seed=seed)
    for ds in out:
        for keyword, value in SCANNER_ATTRIBUTES[modality].items():
            setattr(ds, keyword, value)
        ds.ReferringPhysicianName, ds.Manufacturer, ds.PositionReferenceIndicator = "", "ACME", ""
        ds.BodyPartExamined, ds.SeriesDescription = "HEAD", f"head {modality.lower()}"  # unpaired: no Laterality
        if patient_position is not None:
            ds.PatientPosition = patient_position
        if patient is not None:
            ds.PatientName, ds.PatientID = patient
    return out


#: Every kind of DICOM object the project writes (`write_object_kinds`).
OBJECT_KINDS = ("mr_from_ct", "ct_from_mr", "mr_from_phantom_ct", "phantom_ct")


def write_object_kinds(folder: Path) -> dict[str, tuple[Path, Path | None]]:
    """Write one series of each `OBJECT_KINDS` into ``folder`` with the ``ctmri_monai`` on the path: synthetic MR
    from a scanner-like CT series (PatientPosition HFS), synthetic CT from a scanner-like MR series (none), synthetic
    MR from the phantoms' CT, and the phantoms' CT (`make_phantoms`). Returns each kind's (folder of its files,
    folder of its source series or None)."""
    from conftest import write_tiny_checkpoint

    from ctmri_monai.convert import ConversionService, ConvertOptions
    from ctmri_monai.phantoms import make_phantoms

    service = ConversionService.from_checkpoint(write_tiny_checkpoint(folder / "m.pt"),
                                                ConvertOptions.for_run("cpu", batch_size=4))
    make_phantoms(folder / "phantoms", subjects=1, shape=(32, 32, 12), spacing=(6.0, 6.0, 8.0), seed=0)
    phantom = folder / "phantoms" / "dicom" / "ct" / "subj000"
    sources = {"mr_from_ct": scanner_series("CT", 4, patient_position="HFS"),
               "ct_from_mr": scanner_series("MR", 4, patient_position=None, seed=1)}
    written: dict[str, tuple[Path, Path | None]] = {"phantom_ct": (phantom, None)}
    for kind, source in {**sources, "mr_from_phantom_ct": phantom}.items():
        if isinstance(source, list):
            source = write_series(source, folder / f"source_{kind}")[0].parent
        service.convert_series(source).derived.write(folder / kind)
        written[kind] = (folder / kind, source)
    return written


def text_report(study_uid: str) -> Dataset:
    """A non-image object (a Basic Text SR) of ``study_uid``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SR_STORAGE, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = SR_STORAGE, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName, ds.PatientID = "Nodetest^Wilhelmina", "NODE-PID-77"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.Modality, ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "SR", "CONTAINER", "COMPLETE", "UNVERIFIED"
    return ds


def c_store(datasets: list[Dataset], port: int, calling: str = "ORTHANC", called: str = "CTMRI") -> list[int]:
    """Send ``datasets`` in one association; returns each status (empty: association refused)."""
    from pynetdicom import AE, evt

    from ctmri_monai.node.sender import no_delay

    ae = AE(ae_title=calling)
    for uid in {ds.SOPClassUID for ds in datasets}:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)])
    if not assoc.is_established:
        return []
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def spool_footprint(spool: Path) -> tuple[int, int]:
    """(files, bytes) under a node spool's ``incoming`` and ``outgoing``: what it holds beside its journal."""
    files = [p for folder in ("incoming", "outgoing") for p in (spool / folder).rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def journal_rows(spool: Path) -> list[dict[str, Any]]:
    from ctmri_monai.node.journal import Journal

    if not (spool / "journal.sqlite").exists():
        return []
    journal = Journal(spool / "journal.sqlite")
    try:
        return journal.rows()
    finally:
        journal.close()


# ---------------------------------------------------------------------------------------------- processes
class NodeProcess:
    """``ctmri serve`` as a child process (one thread for torch), stopped by its own pid."""

    def __init__(self, checkpoint: Path, spool: Path, port: int, *extra: str) -> None:
        self.spool, self.port, self.log = spool, port, spool.parent / f"{spool.name}-node.log"
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore",
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-m", "ctmri_monai.apps.cli", "serve", "--checkpoint", str(checkpoint), "--spool",
               str(spool), "--port", str(port), "--device", "cpu", *extra]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: self.proc.poll() is not None or b"listening on" in self.log.read_bytes(), 120,
                 "the node to listen")
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=60)


class Orthanc:
    """A real Orthanc child process on free localhost ports with its storage in ``folder``."""

    def __init__(self, folder: Path, node_port: int, lua: str | None = None, dicomweb: bool = False) -> None:
        self.folder, self.http, self.dicom = folder, free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "ctmri-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http, "DicomPort": self.dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomModalities": {"ctmri": ["CTMRI", "127.0.0.1", node_port]},
            "DicomAssociationCloseDelay": 0, "StableAge": 1, "SaveJobs": False, "HttpTimeout": 60,
            "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
            "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
        }
        if lua is not None:
            (folder / "route.lua").write_text(lua)
            config["LuaScripts"] = [str(folder / "route.lua")]
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.start()

    def start(self) -> None:
        """Start (or start again, on the same ports and storage) and wait for ``GET /system``."""
        self.log = open(self.folder / "orthanc.log", "ab")
        self.proc = subprocess.Popen([ORTHANC, str(self.folder / "orthanc.json")], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_for(self._up, 60, "Orthanc's GET /system")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def _up(self) -> bool:
        assert self.proc.poll() is None, (self.folder / "orthanc.log").read_text()[-2000:]
        try:
            return bool(self.get("/system"))
        except OSError:
            return False

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 60) -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as response:
            data = response.read()
        return json.loads(data) if data[:1] in (b"{", b"[") else data

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, datasets: list[Dataset]) -> str:
        """POST /instances every dataset; returns the Orthanc id of their series."""
        from pydicom.filebase import DicomBytesIO

        series = ""
        for ds in datasets:
            buffer = DicomBytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            series = self.request("POST", "/instances", buffer.getvalue())["ParentSeries"]
        return series

    def series_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        found = self.request("POST", "/tools/find", json.dumps(
            {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}).encode())
        return list(found)

    def instance_files(self, series_id: str) -> list[bytes]:
        return [self.request("GET", f"/instances/{i}/file") for i in self.get(f"/series/{series_id}")["Instances"]]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def start_thread(target: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def copy_log(src: Path, dst: Path) -> None:
    if src.exists():
        shutil.copy(src, dst)


class Receiver:
    """A C-STORE SCP that keeps what it receives in memory (a stand-in destination for in-process tests)."""

    def __init__(self, port: int = 0, aet: str = "DEST") -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.received: list[Dataset] = []
        ae = AE(ae_title=aet)
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = int(self.server.server_address[1])

    def _store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0

    def series(self) -> dict[str, list[Dataset]]:
        out: dict[str, list[Dataset]] = {}
        for ds in self.received:
            out.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
        return out

    def stop(self) -> None:
        self.server.shutdown()


# ------------------------------------------------------------------------------------------------------ DCMTK
def dcmtk_echo(port: int, calling: str = "ORTHANC", called: str = "CTMRI") -> subprocess.CompletedProcess:
    """DCMTK's ``echoscu`` (C-ECHO) against 127.0.0.1:``port``."""
    return subprocess.run(["echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def dcmtk_store(files: list[Path], port: int, log: Path, calling: str = "ORTHANC",
                called: str = "CTMRI") -> subprocess.Popen:
    """DCMTK's ``storescu`` sending ``files`` in one association (started, not waited for; output to ``log``)."""
    with open(log, "ab") as out:
        return subprocess.Popen(["storescu", "-v", "-aet", calling, "-aec", called, "127.0.0.1", str(port),
                                 *map(str, files)], stdout=out, stderr=subprocess.STDOUT)


def write_series(datasets: list[Dataset], folder: Path) -> list[Path]:
    """Part 10 files of ``datasets`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{k:04d}.dcm" for k in range(len(datasets))]
    for ds, path in zip(datasets, paths, strict=True):
        ds.save_as(path, enforce_file_format=True)
    return paths


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Storescp:
    """DCMTK's ``storescp`` as a destination on 127.0.0.1: one process (no fork), each received instance under a
    unique file name in ``folder`` (so an instance received twice shows as two files)."""

    def __init__(self, folder: Path, port: int | None = None, aet: str = "DEST") -> None:
        self.folder, self.port, self.aet = folder, port or free_port(), aet
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder.parent / f"{folder.name}-storescp.log"
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(["storescp", "-v", "-aet", self.aet, "-od", str(self.folder), "+uf",
                                          str(self.port)], stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or _accepts(self.port), 30, "storescp to listen")
        assert self.proc.poll() is None, self.log.read_text()[-2000:]

    def _open_sockets(self) -> int:
        fd = Path(f"/proc/{self.proc.pid}/fd")
        return sum(os.readlink(p).startswith("socket:") for p in fd.iterdir())

    def go_away(self, timeout: float = 60) -> None:
        """Kill it while no association is open (frozen with SIGSTOP, its only socket the listening one), so no
        instance is half stored: whatever it acknowledged is on disk, whatever it did not, it never stored."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            os.kill(self.proc.pid, signal.SIGSTOP)
            if self._open_sockets() <= 1:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
                return
            os.kill(self.proc.pid, signal.SIGCONT)
            time.sleep(0.01)
        raise AssertionError(f"storescp never idle in {timeout:.0f} s")

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
