"""How far a set of inputs is from a model's training images, before converting them (`scripts/domain_gap.py`).

Each volume goes through the model's own conversion preprocessing (`volume_pipeline` with the input's head mask:
head-scale framing, MRI standardisation) and each 2D image file through its training pipeline (`image_pipeline`);
the figures are those every conversion reports (`ctmri_monai.transforms.gap.domain_gap`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ctmri_monai.convert.inputs import collect_inputs
from ctmri_monai.convert.qa import gap_cell
from ctmri_monai.io.errors import CtmriError
from ctmri_monai.io.paths import IMAGE_SUFFIXES
from ctmri_monai.io.volume import load_volume
from ctmri_monai.networks.loading import read_model_spec
from ctmri_monai.spec import FRAME_BY, ModelSpec
from ctmri_monai.transforms.frames import frame_volume
from ctmri_monai.transforms.gap import FAR_HEAD_SIZE, domain_gap
from ctmri_monai.transforms.mask import image_head_mask
from ctmri_monai.transforms.pipelines import image_pipeline

__all__ = ["gap_table", "image_gap", "main", "volume_gap"]


def volume_gap(path: str | os.PathLike, spec: ModelSpec, domain: str) -> dict[str, Any]:
    """The domain gap of one volume file (or DICOM series folder) of ``domain`` on the contract ``spec``."""
    frames = frame_volume(path, load_volume(path).image, spec, domain, check=False)
    return domain_gap(spec, domain, frames.unit, frames.head)


def image_gap(path: str | os.PathLike, spec: ModelSpec, domain: str,
              source_pixdim: Sequence[float] | None = None) -> dict[str, Any]:
    """The domain gap of one 2D image file, framed as the training images were."""
    frame = image_pipeline(spec, source_pixdim=source_pixdim)({"image": str(path)})["image"].as_tensor()[0].numpy()
    return domain_gap(spec, domain, frame[:, :, None], image_head_mask(frame)[:, :, None])


def gap_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per input: intensity ratio / head-size ratio (``!``: far from training), file, message."""
    lines = [f"{'intensity/head':>15}  file", "-" * 40]
    for row in rows:
        gap = row.get("gap")
        lines.append(f"{gap_cell(gap) if gap else 'failed':>15}  {row['file']}" +
                     (f"\n{'':>15}  {row.get('error') or gap.get('message')}" if row.get("error") or
                      (gap and gap.get("far")) else ""))
    far = sum(bool(r.get("gap") and r["gap"].get("far")) for r in rows)
    lines.append(f"{len(rows)} inputs, {far} far from training (in-head intensities further than single training "
                 f"images / volumes reach, or head size off by more than {FAR_HEAD_SIZE:.0%})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the domain gap of each input against a checkpoint; exit 1 when any input is far or fails."""
    parser = argparse.ArgumentParser(description="domain gap of volumes / 2D images against a checkpoint")
    parser.add_argument("inputs", nargs="+", help="volumes, DICOM series folders, 2D image files, or folders")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--domain", required=True, choices=("ct", "mri"), help="the inputs' modality")
    parser.add_argument("--ct-window", nargs=2, type=float, default=None, metavar=("LO", "HI"))
    parser.add_argument("--frame-by", choices=FRAME_BY, default=None)
    args = parser.parse_args(argv)
    spec = read_model_spec(args.checkpoint).with_overrides(ct_window=args.ct_window, frame_by=args.frame_by)
    images = [Path(p) for p in args.inputs if Path(p).is_file() and p.lower().endswith(IMAGE_SUFFIXES)]
    folders = [Path(p) for p in args.inputs if Path(p).is_dir()]
    images += [f for d in folders for f in sorted(d.iterdir()) if f.name.lower().endswith(IMAGE_SUFFIXES)]
    volumes = [str(p) for p in args.inputs if Path(p) not in images]
    rows: list[dict[str, Any]] = []
    for path in images:
        rows.append({"file": str(path), "gap": image_gap(path, spec, args.domain)})
    for path, problem in (collect_inputs(volumes) if volumes else []):
        if problem is not None:
            if not any(f.parent == path for f in images):
                rows.append({"file": str(path), "gap": None, "error": problem})
            continue
        try:
            rows.append({"file": str(path), "gap": volume_gap(path, spec, args.domain)})
        except CtmriError as exc:
            rows.append({"file": str(path), "gap": None, "error": str(exc)})
    print(gap_table(rows))
    return int(any(r.get("error") or r["gap"].get("far") for r in rows))


if __name__ == "__main__":
    sys.exit(main())
