#!/usr/bin/env python
"""Train ResNet-9 and U-Net CycleGANs with the same time budget and write the paper's FID table.

    python scripts/reproduce_paper.py --dataset-dir DIR --output-dir OUT [--budget-minutes M] [--image-size S]
        [--ngf N] [--device D] [--batch-size B] [--backbones resnet unet] [--fid-features inception|random]
        [--num-workers W] [--set KEY=VALUE ...]

Writes OUT/table.md, OUT/results.json, OUT/samples_<backbone>.png and the runs OUT/<backbone>/.
"""

from __future__ import annotations

import sys

from ctmri_monai.apps.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
