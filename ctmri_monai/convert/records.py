"""The summary record of one conversion: one builder for the batch's rows, DICOMweb's records and the node's
journal, so that every road reports the same fields in the same way."""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import Any

from ctmri_monai.io.errors import CtmriError

__all__ = ["conversion_record", "failure_text", "failed_record"]


def conversion_record(report: Mapping[str, Any], **written: Any) -> dict[str, Any]:
    """The record of a finished conversion from its ``report`` (`Converted.report` or `convert_volume`'s result):
    status (flagged when the QA flagged a slice, else ok), shape, seconds, qa, warnings, value range, background,
    ``written`` (where the outputs went), domain gap and, only when the map was made, its figures."""
    record: dict[str, Any] = {"status": "flagged" if report["qa"]["flagged"] else "ok", "shape": report["shape"],
                              "seconds": report.get("seconds"), "qa": report["qa"], "error": None,
                              "warnings": report["warnings"], "value_range": report["value_range"],
                              "background_masked": report["background_masked"], **written,
                              "gap": report["qa"].get("gap")}
    if report.get("disagreement") is not None:  # no key without the map
        record["disagreement"] = report["disagreement"]
    return record


def failure_text(where: str, exc: BaseException) -> str:
    """``exc`` as one line naming ``where`` (the input, or the series) and, unless ours, the exception's type."""
    if isinstance(exc, CtmriError):  # names the input, or the output it could not write
        return str(exc) if exc.path == where else f"{where}: {exc}"
    return f"{where}: {type(exc).__name__}: {exc}"


def failed_record(where: str, exc: BaseException | None = None, problem: str | None = None,
                  seconds: float | None = None) -> dict[str, Any]:
    """The record of a conversion that failed with ``exc`` (or was refused for ``problem`` before it started);
    an exception that is not ours keeps its traceback."""
    error = failure_text(where, exc) if exc is not None else f"{where}: {problem}"
    record: dict[str, Any] = {"status": "failed", "shape": None, "seconds": seconds, "qa": None, "error": error}
    if exc is not None and not isinstance(exc, CtmriError):
        record["traceback"] = "".join(traceback.format_exception(exc, limit=6))
    return record
