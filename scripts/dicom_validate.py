"""dciodvfy (dicom3tools) on every kind of DICOM object the project writes, with the ``ctmri_monai`` found on
``PYTHONPATH``: so the same command measures main's writers and a branch's (issue 29's before and after).

Kinds (`tests/dicom_net.write_object_kinds`): synthetic MR from a scanner-like CT series, synthetic CT from a
scanner-like MR series, synthetic MR from the phantoms' CT, the phantoms' CT. Per kind: the files checked, the
error lines per file (every file of a kind says the same), those about attributes the validator does not know
(`dicom_net.UNKNOWN_TO_VALIDATOR`) counted apart, the distinct messages, and the distinct warnings (but
those about building a DICOMDIR). Prints one JSON line.

    PYTHONPATH=/work/main python scripts/dicom_validate.py     # main's writers
    PYTHONPATH=. python scripts/dicom_validate.py              # this checkout's
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "tests"))  # after PYTHONPATH, so that the package measured is the one given there

from dicom_net import UNKNOWN_TO_VALIDATOR, dciodvfy_lines, write_object_kinds  # noqa: E402


def validate(folder: Path) -> dict:
    """The dciodvfy figures of the files in ``folder`` (see the module docstring)."""
    files = sorted(folder.glob("*.dcm"))
    per_file, messages, excused, iods, warnings = [], set(), 0, set(), set()
    for path in files:
        iod, lines, warned = dciodvfy_lines(path)
        warnings.update(w for w in warned if "DICOMDIR" not in w)
        known = [ln for ln in lines if not any(tag in ln.lower() for tag in UNKNOWN_TO_VALIDATOR)]
        per_file.append(len(known))
        excused += len(lines) - len(known)
        messages.update(known)
        iods.add(iod)
    return {"files": len(files), "iod": sorted(iods), "errors_per_file": sorted(set(per_file)),
            "unknown_tag_errors": excused, "messages": sorted(messages),
            "warnings": sorted(warnings)}


def main() -> int:
    import ctmri_monai

    with tempfile.TemporaryDirectory(prefix="ctmri-dciodvfy-") as tmp:
        kinds = write_object_kinds(Path(tmp))
        report = {kind: validate(folder) for kind, (folder, _) in kinds.items()}
    print(json.dumps({"package": str(Path(ctmri_monai.__file__).parent), "kinds": report}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
