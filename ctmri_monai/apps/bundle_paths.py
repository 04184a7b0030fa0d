"""Where the MONAI Bundle lives, and running its configs in-process."""

from __future__ import annotations

import ast
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def bundle_root() -> Path:
    """The ``bundle/`` folder: ``$CTMRI_BUNDLE`` if set, else the one beside this package (source checkout)."""
    env = os.environ.get("CTMRI_BUNDLE")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "bundle"
    if not (root / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"MONAI bundle not found at {root}: run from a source checkout of ctmri-monai or set "
                                "CTMRI_BUNDLE to the bundle folder")
    return root


def config_path(name: str) -> Path:
    """``bundle/configs/<name>.yaml``."""
    return bundle_root() / "configs" / f"{name}.yaml"


def run_bundle(config: str | Sequence[str], **overrides: Any) -> None:
    """``python -m monai.bundle run`` in this process, on one or more bundle configs, with ID overrides."""
    from monai.bundle import run

    names = [config] if isinstance(config, str) else list(config)
    files = [str(config_path(n)) for n in names]
    root = bundle_root()
    run(config_file=files if len(files) > 1 else files[0], meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"), **overrides)


def parse_override(text: str) -> tuple[str, Any]:
    """A command line's ``key=value`` -> (key, Python literal, or the text itself when it is not one)."""
    key, sep, value = text.partition("=")
    if not key or not sep:
        raise ValueError(f"override {text!r} is not of the form key=value")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value
