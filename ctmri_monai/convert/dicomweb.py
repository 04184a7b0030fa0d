"""Conversion over DICOMweb: WADO-RS in, the `ConversionService`, STOW-RS out.

Written against dicomweb-client's client protocol (`dicomweb_client.protocol.DICOMClient`: ``search_for_series``,
``retrieve_series``, ``store_instances``), so the HTTP client (``DICOMwebClient``) and the serverless file client
(``DICOMfileClient``) both work. Each series of the study (or the one asked for) is retrieved into a temporary
folder, converted through the service (direction from its Modality unless given) and stored back into the same
study; refusals (a synthetic series, a contract that cannot describe it) and HTTP errors are reported per series
and the others go on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ctmri_monai.convert.records import failure_text
from ctmri_monai.convert.service import ConversionService
from ctmri_monai.io.errors import CtmriError

__all__ = ["SERIES_UID_TAG", "convert_dicomweb"]

SERIES_UID_TAG, MODALITY_TAG = "0020000E", "00080060"


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _convert_series(client: Any, service: ConversionService, study_uid: str, uid: str,
                    direction: str | None) -> dict[str, Any]:
    """Retrieve, convert and store back one series; its record. Any error of this series (a refusal, an HTTP
    error of its retrieval or its storage) is its failed record, never raised: the other series go on."""
    record: dict[str, Any] = {"series": uid, "status": "failed", "output_series_uid": None, "error": None}
    with tempfile.TemporaryDirectory(prefix="ctmri-dicomweb-") as tmp:
        try:
            for k, ds in enumerate(client.retrieve_series(study_uid, uid)):
                ds.save_as(Path(tmp) / f"{k:05d}.dcm", enforce_file_format=True)
            result = service.convert_series(tmp, direction, series_uid=uid)
            client.store_instances(list(result.derived.datasets()), study_instance_uid=study_uid)
        except CtmriError as exc:  # names the temporary folder: the series UID says more
            record["error"] = f"series {uid}: {exc.problem}"
            return record
        except Exception as exc:  # noqa: BLE001 - e.g. requests.HTTPError: one series must not stop the study
            record["error"] = failure_text(f"series {uid}", exc)
            return record
    record.update(status="ok", output_series_uid=result.derived.series_uid,
                  direction=result.converted.report["direction"], qa=result.converted.report["qa"])
    if result.converted.report.get("disagreement") is not None:  # the map's figures (no map file)
        record["disagreement"] = result.converted.report["disagreement"]
    return record


def convert_dicomweb(client: Any, service: ConversionService, study_uid: str, series_uid: str | None = None,
                     direction: str | None = None) -> list[dict[str, Any]]:
    """Convert the image series of ``study_uid`` (or only ``series_uid``) found through ``client`` and store each
    derived series back; returns one record per series: series, status (ok | failed), output series UID or
    error, and the disagreement map's figures when it was made. A failed search of the study raises."""
    if series_uid is not None:
        wanted = [series_uid]
    else:
        found = client.search_for_series(study_instance_uid=study_uid)
        wanted = [_value(s, SERIES_UID_TAG) for s in found if _value(s, MODALITY_TAG) in ("CT", "MR")]
    return [_convert_series(client, service, study_uid, uid, direction) for uid in wanted]
