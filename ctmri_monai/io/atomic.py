"""Atomic writing: one temporary-name scheme for every file and folder the project writes.

A file is written under ``.<name>.partial-<pid>-<random><suffix>`` in its own folder (the suffix keeps the
format: ``.nii.gz``, ``.png``), then renamed over the target, so a reader never sees half a file and an existing
output stays as it was when writing fails. The pid lets `remove_stale_temporaries` clean up after a process that
was killed while writing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_directory", "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "remove_stale_temporaries", "temp_path_for", "temporaries_for"]

logger = logging.getLogger(__name__)
_MARK = ".partial-"


def _split_suffix(name: str) -> tuple[str, str]:
    lower = name.lower()
    for double in (".nii.gz", ".tar.gz"):
        if lower.endswith(double):
            return name[: -len(double)], name[-len(double):]
    stem, dot, ext = name.rpartition(".")
    return (stem, "." + ext) if dot and stem else (name, "")


def temp_path_for(path: str | os.PathLike) -> Path:
    """A hidden temporary name beside ``path`` with the same suffix, marked with this process's pid."""
    path = Path(path)
    stem, suffix = _split_suffix(path.name)
    return path.with_name(f".{stem}{_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def temporaries_for(path: str | os.PathLike) -> list[Path]:
    """The temporary files and folders of `temp_path_for` beside ``path`` that exist now (any writer's)."""
    path = Path(path)
    stem, suffix = _split_suffix(path.name)
    return sorted(path.parent.glob(f".{stem}{_MARK}*{suffix}"))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened for syncing
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], fsync: bool = False) -> Path:
    """Call ``write(temporary_path)``, then rename the temporary file over ``path``; returns ``path``.

    The parent folder is created. On any failure the temporary file is removed and the exception propagates
    (an existing ``path`` is untouched). ``fsync`` flushes the file and its folder to disk (checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    if fsync:
        _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _json_default(value: Any) -> Any:
    """Numbers that JSON does not know (NumPy / torch scalars) as floats; anything else as text."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int = 2) -> Path:
    """Write ``data`` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent, default=_json_default) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (an old folder is removed),
    on failure it is deleted and ``path`` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders that killed processes left in ``folder``; returns them."""
    removed = []
    for tmp in Path(folder).glob(f".*{_MARK}*"):
        pid = tmp.name.split(_MARK, 1)[1].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _writer_alive(int(pid)):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
        logger.warning("removed %s, left by a process killed while writing", tmp)
    return removed
