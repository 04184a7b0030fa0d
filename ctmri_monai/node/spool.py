"""The node's spool folder: received instances, derived series and the journal, all written atomically.

``incoming/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``: every received instance, flushed to disk and renamed into
place before the C-STORE is answered with success, kept until its series is finished (converted or refused; an
instance arriving after that is not kept); ``outgoing/<SeriesInstanceUID>/``: the derived series of that source
series, complete or absent, each instance removed once the destination acknowledged it (so the folder is gone when
the series is sent; without a destination it stays); ``journal.sqlite``: the `Journal`. Non-image objects (stored,
not converted) stay in ``incoming``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from ctmri_monai.io.atomic import atomic_write, remove_stale_temporaries
from ctmri_monai.node.journal import Journal

__all__ = ["Spool", "is_image"]

_UID = re.compile(r"^[0-9.]{1,64}$")


def is_image(ds: Any) -> bool:
    """Whether a received dataset is an image the node can convert (pixel data with rows and columns), not a
    structured report, presentation state, RT plan or other non-image object."""
    return "Rows" in ds and "Columns" in ds and ("PixelData" in ds or "FloatPixelData" in ds)


def _safe_uid(uid: str, what: str) -> str:
    uid = str(uid).strip().rstrip("\x00")
    if not _UID.match(uid):
        raise ValueError(f"malformed {what} {uid[:70]!r}")
    return uid


class Spool:
    """Paths and atomic writes under one spool folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        (self.root / "incoming").mkdir(parents=True, exist_ok=True)
        (self.root / "outgoing").mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.root / "journal.sqlite")

    def incoming(self, series_uid: str) -> Path:
        return self.root / "incoming" / _safe_uid(series_uid, "SeriesInstanceUID")

    def outgoing(self, series_uid: str) -> Path:
        return self.root / "outgoing" / _safe_uid(series_uid, "SeriesInstanceUID")

    def store(self, series_uid: str, sop_uid: str, encoded: bytes) -> Path:
        """Write one received instance (a Part 10 byte string) durably: temporary file, fsync, rename."""
        folder = self.incoming(series_uid)
        path = folder / f"{_safe_uid(sop_uid, 'SOPInstanceUID')}.dcm"
        return atomic_write(path, lambda tmp: tmp.write_bytes(encoded), fsync=True)

    def release(self, series_uid: str) -> None:
        """Remove the received instances of a finished series (its derived series is written, or it was refused)."""
        shutil.rmtree(self.incoming(series_uid), ignore_errors=True)

    def clean(self) -> None:
        """Remove temporary files that a killed writer left behind."""
        for folder in (self.root / "incoming", self.root / "outgoing"):
            for sub in [folder, *(p for p in folder.iterdir() if p.is_dir())]:
                remove_stale_temporaries(sub)
