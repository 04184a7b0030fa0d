"""The DICOM node: a C-ECHO / C-STORE SCP that spools series, converts them in a worker thread through the
`ConversionService`, and sends each derived series to a destination by C-STORE.

Received instances are spooled (flushed and renamed) before success is answered. A series is complete when the
association that sent it is released, or after ``idle_seconds`` with no new instance; then one worker thread (one
conversion at a time per device) converts it while receiving goes on, and a sender thread delivers the result,
retrying with back-off while the destination is down. Logs name UIDs and AE titles, never patients.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from ctmri_monai.convert.service import ConversionService
from ctmri_monai.io.errors import CtmriError
from ctmri_monai.node.sender import Destination, SendError, backoff, no_delay, send_series
from ctmri_monai.node.spool import Spool, is_image

__all__ = ["Node", "NodeConfig"]

logger = logging.getLogger("ctmri_monai.node")
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


@dataclass(frozen=True)
class NodeConfig:
    """What `ctmri serve` is told: its AE title and address, who may call, when a series is complete, where
    results go and how often a failed delivery is retried."""

    aet: str = "CTMRI"
    host: str = "127.0.0.1"
    port: int = 11112
    allow_aet: tuple[str, ...] = ()
    destination: Destination | None = None
    idle_seconds: float = 30.0
    direction: str | None = None
    retry_seconds: float = 2.0
    max_retry_seconds: float = 300.0
    senders: int = 4
    timeout: float = 30.0
    poll: float = field(default=0.2, repr=False)


class Node:
    """One running node on one spool folder (`start`, `stop`)."""

    def __init__(self, service: ConversionService, spool: Spool, config: NodeConfig) -> None:
        self.service, self.spool, self.config = service, spool, config
        self.journal = spool.journal
        self._stop, self._wake = threading.Event(), threading.Event()
        self._series_of: dict[int, set[str]] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self.accepting = False

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> Node:
        """Resume the journal, start listening and start the worker, sender and idle threads."""
        self.spool.clean()
        self.journal.recover()
        ae = AE(ae_title=self.config.aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.timeout
        ae.maximum_associations = 16
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        if self.config.allow_aet:
            ae.require_calling_aet = list(self.config.allow_aet)
        handlers = [(evt.EVT_C_ECHO, lambda event: SUCCESS), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_RELEASED, self._on_released), (evt.EVT_ACCEPTED, self._on_accepted),
                    (evt.EVT_CONN_OPEN, no_delay)]
        self.accepting = True
        self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        loops = [("convert", self._convert_loop), ("idle", self._idle_loop)]
        if self.config.destination is not None:  # several series in flight: a PACS stores them side by side
            loops += [(f"send{k}", self._send_loop) for k in range(max(1, self.config.senders))]
        for name, loop in loops:
            thread = threading.Thread(target=loop, name=f"ctmri-node-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("node %s listening on %s:%d (allowed callers: %s; destination: %s)", self.config.aet,
                    self.config.host, self.port, ", ".join(self.config.allow_aet) or "any",
                    self.config.destination or "none")
        return self

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else self.config.port

    def stop(self) -> None:
        """Stop accepting, finish the conversion under way, leave the rest queued, close the journal."""
        self.accepting = False
        if self._server is not None:
            self._server.shutdown()
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join()
        self.journal.close()
        logger.info("node %s stopped", self.config.aet)

    # ------------------------------------------------------------------------------------------ receiving
    def _on_accepted(self, event: Any) -> None:
        logger.info("association from %s accepted", event.assoc.requestor.ae_title)

    def _on_store(self, event: Any) -> int:
        if not self.accepting:
            return OUT_OF_RESOURCES
        try:
            ds = event.dataset
            series_uid, sop_uid = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
            self.spool.store(series_uid, sop_uid, event.encoded_dataset())
        except (AttributeError, ValueError, KeyError) as exc:
            logger.warning("instance refused: %s", exc)
            return CANNOT_UNDERSTAND
        except OSError as exc:
            logger.error("spool write failed (%s): instance not acknowledged", exc.strerror or exc)
            return OUT_OF_RESOURCES
        image = is_image(ds)
        header = {"study_uid": str(ds.get("StudyInstanceUID", "")), "modality": str(ds.get("Modality", "")),
                  "calling_aet": str(event.assoc.requestor.ae_title)}
        status = self.journal.record_instance(sop_uid, series_uid, header, image)
        with self._lock:
            self._series_of.setdefault(id(event.assoc), set()).add(series_uid)
        if not image:
            logger.info("stored non-image instance %s of series %s (not converted)", sop_uid, series_uid)
        elif status not in ("receiving",):
            if status != "converting":  # a finished series: the instance is not kept (its conversion is done)
                self.spool.release(series_uid)
            logger.info("instance %s of series %s, already %s: acknowledged, not converted again", sop_uid,
                        series_uid, status)
        return SUCCESS

    def _on_released(self, event: Any) -> None:
        with self._lock:
            series = sorted(self._series_of.pop(id(event.assoc), set()))
        if series:
            queued = self.journal.complete(series)
            logger.info("association released: %d series complete (%s)", len(series), ", ".join(series))
            if queued:
                self._wake.set()

    def _idle_loop(self) -> None:
        while not self._stop.wait(min(self.config.poll, self.config.idle_seconds / 4)):
            if self.journal.complete(idle_before=time.time() - self.config.idle_seconds):
                self._wake.set()

    # ----------------------------------------------------------------------------------------- converting
    def _convert_loop(self) -> None:
        while not self._stop.is_set():
            row = self.journal.claim("queued", "converting")
            if row is None:
                self._wake.wait(self.config.poll)
                self._wake.clear()
                continue
            self._convert(row)

    def _convert(self, row: dict[str, Any]) -> None:
        uid, t0 = row["series_uid"], time.perf_counter()
        logger.info("converting series %s (%s, %d instances)", uid, row["modality"], row["instances"])
        try:
            result = self.service.convert_series(self.spool.incoming(uid), self.config.direction)
            result.derived.write(self.spool.outgoing(uid))
        except CtmriError as exc:
            self.journal.update(uid, status="failed", reason=str(exc), updated_at=time.time())
            self.spool.release(uid)  # refused: the reason is in the journal, the source at its sender
            logger.warning("series %s failed: %s", uid, exc)
            return
        except Exception as exc:  # noqa: BLE001 - one bad series must not stop the node
            self.journal.update(uid, status="failed", reason=f"{type(exc).__name__}: {exc}", updated_at=time.time())
            self.spool.release(uid)
            logger.exception("series %s failed", uid)
            return
        status = "sending" if self.config.destination is not None else "converted"
        self.journal.update(uid, status=status, reason=None, direction=result.converted.report["direction"],
                            output_series_uid=result.derived.series_uid, converted_at=time.time(), next_attempt=0,
                            disagreement=result.converted.report.get("disagreement"))
        self.spool.release(uid)  # the derived series is in outgoing: the received instances are done with
        logger.info("series %s converted to %s in %.1f s", uid, result.derived.series_uid, time.perf_counter() - t0)
        del result
        self._wake.set()

    # -------------------------------------------------------------------------------------------- sending
    def _send_loop(self) -> None:
        destination = self.config.destination
        while destination is not None and not self._stop.is_set():
            row = self.journal.claim("sending", "delivering")
            if row is None:
                self._stop.wait(self.config.poll)
                continue
            uid, attempts = row["series_uid"], int(row["attempts"]) + 1
            try:
                count = send_series(self.spool.outgoing(uid), destination, self.config.aet, self.config.timeout)
            except (SendError, OSError, RuntimeError) as exc:
                delay = backoff(attempts, self.config.retry_seconds, self.config.max_retry_seconds)
                self.journal.update(uid, status="sending", attempts=attempts, next_attempt=time.time() + delay,
                                    reason=f"delivery attempt {attempts}: {exc}")
                logger.warning("series %s not delivered (%s); retry in %.1f s", row["output_series_uid"], exc, delay)
                continue
            self.journal.update(uid, status="sent", attempts=attempts, reason=None, sent_at=time.time())
            logger.info("series %s (%d instances) sent to %s", row["output_series_uid"], count, destination)
