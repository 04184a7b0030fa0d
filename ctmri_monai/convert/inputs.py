"""Finding the inputs of a batch conversion and naming their outputs.

Inputs are files, folders (image files inside and DICOM series sub-folders, searched recursively) or ``.txt`` list
files (one path per line, ``#`` comments; relative paths are taken from the current folder, then from the list's
folder).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ctmri_monai.io.paths import SUPPORTED_SUFFIXES, is_dicom_folder, path_stem, path_suffix

__all__ = ["collect_inputs", "output_names"]


def _list_file_entries(list_file: Path) -> list[str]:
    entries = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line).expanduser()
        if not path.is_absolute() and not path.exists() and (list_file.parent / path).exists():
            path = list_file.parent / path
        entries.append(str(path))
    return entries


def _scan_folder(folder: Path, exclude: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() not in exclude)
        if is_dicom_folder(here):
            found.append(here)
        found.extend(here / f for f in sorted(files)
                     if not f.startswith(".") and path_suffix(f) in SUPPORTED_SUFFIXES)
    return found


def collect_inputs(inputs: Iterable[str | os.PathLike], exclude: Sequence[str | os.PathLike] = ()) -> list[
        tuple[Path, str | None]]:
    """Expand inputs into (path, problem) pairs: volumes to convert, or entries that cannot be (problem set).

    Duplicates are dropped; ``exclude`` folders (e.g. the output folder) are not searched.
    """
    excluded = [Path(e).resolve() for e in exclude]
    out: list[tuple[Path, str | None]] = []
    seen: set[Path] = set()

    def add(path: Path, problem: str | None = None) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            out.append((path, problem))

    def visit(item: str | os.PathLike, depth: int = 0) -> None:
        path = Path(item).expanduser()
        if not path.exists():
            add(path, "does not exist")
        elif path.is_dir():
            found = _scan_folder(path, excluded)
            if not found:
                add(path, "folder holds no NIfTI / .mha / .nrrd files and no DICOM series")
            for f in found:
                add(f)
        elif path.suffix.lower() == ".txt" and depth < 3:
            try:
                entries = _list_file_entries(path)
            except (OSError, UnicodeDecodeError) as exc:
                add(path, f"cannot read list file ({exc})")
                return
            if not entries:
                add(path, "list file names no inputs")
            for entry in entries:
                visit(entry, depth + 1)
        else:
            add(path)

    for item in inputs:
        visit(item)
    return out


def output_names(paths: Sequence[Path], direction: str) -> list[str]:
    """``<stem>_<direction>`` per input; clashing stems get their parent folder names prepended (up to three,
    e.g. ``volumes_ct_subj000`` and ``dicom_ct_subj000``), then a counter."""
    stems = [path_stem(p) for p in paths]
    depth = [0] * len(paths)

    def name(i: int) -> str:
        parts = paths[i].parent.parts[-depth[i]:] if depth[i] else ()
        parents = [part for part in parts if part not in ("/", "")]
        return "_".join([*parents, stems[i]])

    for _ in range(4):
        names = [name(i) for i in range(len(paths))]
        clashing = {n for n in names if names.count(n) > 1}
        if not clashing:
            break
        for i, n in enumerate(names):
            if n in clashing and depth[i] < 3:
                depth[i] += 1
    names = [name(i) for i in range(len(paths))]
    unique, used = [], set()
    for n in names:
        base, k = n, 2
        while n in used:
            n, k = f"{base}_{k}", k + 1
        used.add(n)
        unique.append(f"{n}_{direction}")
    return unique
