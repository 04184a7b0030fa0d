"""The node's job journal: one SQLite row per series in the spool folder, and one per received instance.

Status of a series: ``receiving`` (instances arriving) -> ``queued`` (complete: its association was released or
it was idle) -> ``converting`` -> ``sending`` (the derived series is in the spool, waiting for the destination)
-> ``delivering`` (one sender thread is storing it) -> ``sent``; or ``converted`` (no destination), ``failed``
(with its reason: a contract or input refusal, a synthetic series), ``stored`` (non-image objects: kept, not
converted). Every change is committed before the node acts on it, so a restart after SIGKILL resumes from the
journal: ``receiving`` and ``converting`` become ``queued`` again, ``delivering`` becomes ``sending`` and is sent
again from the spool with the same UIDs (a PACS stores an instance it already has once), so each derived series
arrives exactly once.

A converted series' ``disagreement`` column holds the disagreement map's figures (`ctmri_monai.metrics.flagged.
flag_figures`) as JSON (NULL without the map); a journal written before the column existed gains it when opened.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "Journal"]

COLUMNS = ("series_uid", "study_uid", "modality", "calling_aet", "instances", "non_image", "status", "reason",
           "direction", "output_series_uid", "attempts", "received_at", "updated_at", "completed_at",
           "converted_at", "sent_at", "next_attempt", "disagreement")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
  series_uid TEXT PRIMARY KEY, study_uid TEXT, modality TEXT, calling_aet TEXT, instances INTEGER DEFAULT 0,
  non_image INTEGER DEFAULT 0, status TEXT NOT NULL, reason TEXT, direction TEXT, output_series_uid TEXT,
  attempts INTEGER DEFAULT 0, received_at REAL, updated_at REAL, completed_at REAL, converted_at REAL,
  sent_at REAL, next_attempt REAL DEFAULT 0, disagreement TEXT);
CREATE TABLE IF NOT EXISTS instances (sop_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL, image INTEGER);
"""


class Journal:
    """The SQLite journal of one spool folder; safe to share between the node's threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")  # `ctmri jobs` reads while the node writes
            self._db.execute("PRAGMA synchronous=FULL")  # a committed status survives a power cut
            self._db.executescript(_SCHEMA)
            have = {r["name"] for r in self._db.execute("PRAGMA table_info(series)")}
            if "disagreement" not in have:  # a journal from before the map: keep it readable, add the column
                self._db.execute("ALTER TABLE series ADD COLUMN disagreement TEXT")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------------------------------- receiving
    def record_instance(self, sop_uid: str, series_uid: str, header: dict[str, str], image: bool) -> str:
        """Note a spooled instance; returns the series' status after it (a series past ``queued`` keeps its
        status: a late instance is stored, never converted twice)."""
        now = time.time()
        with self._tx() as db:
            new = db.execute("INSERT OR IGNORE INTO instances VALUES (?, ?, ?)",
                             (sop_uid, series_uid, int(image))).rowcount
            row = db.execute("SELECT status FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
            if row is None:
                db.execute("INSERT INTO series (series_uid, study_uid, modality, calling_aet, status, received_at,"
                           " updated_at) VALUES (?, ?, ?, ?, 'receiving', ?, ?)",
                           (series_uid, header.get("study_uid"), header.get("modality"),
                            header.get("calling_aet"), now, now))
                status = "receiving"
            else:
                status = row["status"]
                if status in ("queued", "stored"):
                    status = "receiving"
            db.execute("UPDATE series SET instances = instances + ?, non_image = non_image + ?, status = ?, "
                       "updated_at = ? WHERE series_uid = ?",
                       (new, int(new and not image), status, now, series_uid))
        return status

    def complete(self, series_uids: list[str] | None = None, idle_before: float | None = None) -> list[str]:
        """Mark ``receiving`` series complete (those given, or those idle since ``idle_before``): ``queued``, or
        ``stored`` when they hold no image; returns the queued ones."""
        with self._tx() as db:
            if series_uids is not None:
                rows = [db.execute("SELECT * FROM series WHERE series_uid = ? AND status = 'receiving'", (u,))
                        .fetchone() for u in series_uids]
            else:
                rows = db.execute("SELECT * FROM series WHERE status = 'receiving' AND updated_at < ?",
                                  (idle_before if idle_before is not None else time.time(),)).fetchall()
            queued = []
            for row in (r for r in rows if r is not None):
                images = row["instances"] - row["non_image"]
                status = "queued" if images > 0 else "stored"
                reason = None if images else "non-image objects only: stored, not converted"
                db.execute("UPDATE series SET status = ?, reason = ?, completed_at = ? WHERE series_uid = ?",
                           (status, reason, time.time(), row["series_uid"]))
                if status == "queued":
                    queued.append(row["series_uid"])
        return queued

    def recover(self) -> None:
        """After a restart: acknowledged series that were receiving or converting are queued again."""
        with self._tx() as db:
            db.execute("UPDATE series SET status = 'receiving' WHERE status = 'converting'")
            db.execute("UPDATE series SET status = 'sending' WHERE status = 'delivering'")
            db.execute("UPDATE series SET updated_at = 0 WHERE status = 'receiving'")
        self.complete(idle_before=1.0)

    # ----------------------------------------------------------------------------------------- processing
    def claim(self, status: str, new_status: str, now: float | None = None) -> dict[str, Any] | None:
        """Take the oldest series in ``status`` (due for another attempt) and move it to ``new_status``."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM series WHERE status = ? AND next_attempt <= ? ORDER BY completed_at, "
                             "received_at LIMIT 1", (status, now if now is not None else time.time())).fetchone()
            if row is None:
                return None
            db.execute("UPDATE series SET status = ? WHERE series_uid = ?", (new_status, row["series_uid"]))
        return dict(row) | {"status": new_status}

    def update(self, series_uid: str, **values: Any) -> None:
        """Set columns of one series (``disagreement``: a dict, stored as JSON)."""
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown journal columns {sorted(unknown)}")
        if values.get("disagreement") is not None:
            values["disagreement"] = json.dumps(values["disagreement"])
        names = ", ".join(f"{k} = ?" for k in values)
        with self._tx() as db:
            db.execute(f"UPDATE series SET {names} WHERE series_uid = ?", (*values.values(), series_uid))

    def rows(self) -> list[dict[str, Any]]:
        """Every series, oldest first (``disagreement`` decoded from JSON)."""
        with self._lock:
            rows = [dict(r) for r in self._db.execute("SELECT * FROM series ORDER BY received_at")]
        for row in rows:
            row["disagreement"] = json.loads(row["disagreement"]) if row.get("disagreement") else None
        return rows
