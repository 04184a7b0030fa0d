"""Dataset folders: the two layouts, listing their files, and the seeded train / validation split.

* "images": ``trainA`` (CT) / ``trainB`` (MRI), optionally ``testA`` / ``testB``, of 2D image files.
* "volumes": ``volumes/ct`` and ``volumes/mri`` of NIfTI files or DICOM series folders. When the folder holds a
  phantom manifest (``phantoms.json``), its ``test_subjects`` are the "test" split and never train or validate.

`split_files` is the one function that decides which files train, validate and test; the paired evaluation takes
its held-out volumes from it too (``handlers.paired.held_out_volume_pairs``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctmri_monai.io.errors import InputError
from ctmri_monai.io.paths import IMAGE_SUFFIXES

__all__ = ["IMAGE_FOLDERS", "PHANTOM_MANIFEST", "VOLUME_FOLDERS", "VOLUME_SUFFIXES", "detect_layout",
           "effective_split", "list_images", "list_volumes", "manifest_test_subjects", "split_files",
           "split_train_val", "subject_name"]

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii", ".nii.gz")
IMAGE_FOLDERS = {"train": ("trainA", "trainB"), "test": ("testA", "testB")}
VOLUME_FOLDERS = ("volumes/ct", "volumes/mri")
PHANTOM_MANIFEST = "phantoms.json"


def subject_name(path: str | Path) -> str:
    """The subject a volume belongs to: its file name without suffixes (``subj002.nii.gz`` -> ``subj002``)."""
    return Path(path).name.split(".")[0]


def manifest_test_subjects(dataset_dir: str | Path) -> set[str]:
    """The ``test_subjects`` of the folder's phantom manifest (empty without one)."""
    manifest = Path(dataset_dir) / PHANTOM_MANIFEST
    if not manifest.is_file():
        return set()
    try:
        return {str(s) for s in json.loads(manifest.read_text()).get("test_subjects", [])}
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(manifest, f"unreadable phantom manifest ({type(exc).__name__}: {exc})") from exc


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _visible_entries(folder: Path, kind: str) -> list[Path]:
    """The non-hidden entries of ``folder``; ``InputError`` when it is missing or empty."""
    if not folder.is_dir():
        raise InputError(f"{folder}: {kind} folder not found")
    entries = [p for p in folder.iterdir() if not _is_hidden(p)]
    if not entries:
        raise InputError(f"{folder}: {kind} folder is empty")
    return entries


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files (any Pillow suffix, case-insensitive) directly inside ``folder``.

    Raises ``InputError`` naming the folder when it is missing, empty or holds no image files.
    """
    folder = Path(folder)
    entries = _visible_entries(folder, "image")
    files = sorted(p for p in entries if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise InputError(
            f"{folder}: no image files (expected {', '.join(IMAGE_SUFFIXES)}); found e.g. "
            f"{', '.join(sorted(p.name for p in entries)[:3])}"
        )
    return files


def list_volumes(folder: str | Path) -> list[Path]:
    """Sorted volumes in ``folder``: NIfTI files (.nii, .nii.gz) and DICOM series folders (sub-folders)."""
    folder = Path(folder)
    entries = _visible_entries(folder, "volume")
    vols = sorted(
        p for p in entries
        if (p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))
        or (p.is_dir() and any(c.is_file() for c in p.iterdir()))
    )
    if not vols:
        raise InputError(
            f"{folder}: no volumes (expected .nii / .nii.gz files or DICOM series folders); found e.g. "
            f"{', '.join(sorted(p.name for p in entries)[:3])}"
        )
    return vols


def split_train_val(files: Sequence[Any], val_fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """Deterministic (seeded) split of ``files`` into (train, val); both keep the input order.

    The validation part has ``round(n * val_fraction)`` items, at least 1 when ``val_fraction > 0``, and
    leaves at least 1 for training. With a single file, both parts are that file.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    files = list(files)
    n = len(files)
    if val_fraction == 0.0 or n == 0:
        return files, []
    if n == 1:
        logger.warning("only one file (%s): it is used for both training and validation", files[0])
        return files, list(files)
    n_val = min(max(1, int(round(n * val_fraction))), n - 1)
    chosen = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    train = [f for i, f in enumerate(files) if i not in chosen]
    val = [f for i, f in enumerate(files) if i in chosen]
    return train, val


def detect_layout(dataset_dir: str | Path) -> str:
    """ "images" (trainA/trainB/testA/testB folders) or "volumes" (volumes/ct and volumes/mri)."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    if all((root / f).is_dir() for f in IMAGE_FOLDERS["train"]):
        return "images"
    if all((root / f).is_dir() for f in VOLUME_FOLDERS):
        return "volumes"
    if all((root / f).is_dir() for f in IMAGE_FOLDERS["test"]):
        return "images"
    raise InputError(
        f"{root}: unknown dataset layout; expected trainA/ trainB/ (and testA/ testB/) folders of 2D images, "
        f"or volumes/ct/ and volumes/mri/ with NIfTI files or DICOM series folders"
    )


def effective_split(dataset_dir: str | Path, split: str) -> str:
    """The split ``build_unpaired_dataset`` really reads for ``split``: "test" falls back to the validation split
    when there are no testA/testB folders (always for volumes); say so in reports."""
    if split != "test":
        return split
    root = Path(dataset_dir)
    layout = detect_layout(root)
    if all((root / f).is_dir() for f in IMAGE_FOLDERS["test"]) and layout == "images":
        return "test"
    if layout == "volumes" and manifest_test_subjects(root):
        return f"test (the test subjects of {PHANTOM_MANIFEST})"
    return "val (no testA/testB: the validation split of the training folders)"


def split_files(dataset_dir: str | Path, layout: str, split: str, val_fraction: float = 0.1,
                seed: int = 0) -> list[list[Path]]:
    """[CT files, MRI files] of ``split`` ("train", "val" or "test") in ``layout``.

    "val" is a deterministic ``val_fraction`` of the training files (chosen with ``seed``) that "train" then
    leaves out; "test" uses testA/testB and falls back to "val" when they are absent. Volumes with a phantom
    manifest: its test subjects are "test" and are left out of "train" and "val".
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    root = Path(dataset_dir)
    if layout == "images":
        test_dirs = [root / f for f in IMAGE_FOLDERS["test"]]
        if split == "test" and all(d.is_dir() for d in test_dirs):
            return [list_images(d) for d in test_dirs]
        if split == "test":
            logger.warning("%s has no testA/testB: using the validation split for testing", root)
        return _split([list_images(root / f) for f in IMAGE_FOLDERS["train"]], split, val_fraction, seed)
    groups = [list_volumes(root / f) for f in VOLUME_FOLDERS]
    test = manifest_test_subjects(root)
    if test:
        if split == "test":
            return [[p for p in files if subject_name(p) in test] for files in groups]
        groups = [[p for p in files if subject_name(p) not in test] for files in groups]
    elif split == "test":
        logger.warning("volume layout has no test folders: using the validation split of %s", root)
    return _split(groups, split, val_fraction, seed)


def _split(groups: list[list[Path]], split: str, val_fraction: float, seed: int) -> list[list[Path]]:
    if split == "train":
        return [split_train_val(files, val_fraction, seed)[0] for files in groups]
    if val_fraction <= 0.0:
        raise ValueError(f"split {split!r} needs val_fraction > 0 (or testA/testB folders)")
    return [split_train_val(files, val_fraction, seed)[1] for files in groups]
