#!/usr/bin/env python
"""Save a grid of 16 preprocessed training images per domain (CT block left, MRI block right).

    python scripts/preview_preprocessing.py --dataset-dir DIR --output PNG [--image-size 256] [--size-policy fit]

The images go through the bundle's training pipeline without random flips (what the networks see).
"""

from __future__ import annotations

import argparse
import sys

from ctmri_monai.apps.preview import save_preview


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--size-policy", choices=("fit", "crop", "resize_crop"), default="fit")
    parser.add_argument("--per-domain", type=int, default=16)
    parser.add_argument("--dataset-card", default=None, help="dataset.json (default: DIR/dataset.json if present)")
    args = parser.parse_args()
    path = save_preview(args.dataset_dir, args.output, image_size=args.image_size, size_policy=args.size_policy,
                        per_domain=args.per_domain, dataset_card=args.dataset_card)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
