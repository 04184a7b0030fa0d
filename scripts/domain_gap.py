#!/usr/bin/env python
"""Print how far volumes (or 2D images) are from a model's training images, before converting them.

    python scripts/domain_gap.py --checkpoint model.pt --domain mri VOLUME_OR_FOLDER [...]

Per input: the in-head intensity distance to the training images over the training halves' distance, and the
framed head size over the training median (the figures every conversion reports in summary.json); "!" and a
message mark inputs far from training. Exit status 1 when any input is far or cannot be read.
"""

from __future__ import annotations

import sys

from ctmri_monai.convert.gap_report import main

if __name__ == "__main__":
    sys.exit(main())
