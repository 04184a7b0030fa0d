#!/usr/bin/env python
"""How well the disagreement map finds mistakes: planted errors, then the real mistakes of trained models.

    python scripts/bench_trust.py --output-dir runs/trust --budget-minutes 4   # the figures in benchmarks.md
    python scripts/bench_trust.py --quick                                      # tiny, seconds (CI smoke test)
    python scripts/bench_trust.py --planted-only                               # the planted table only (seconds)

Part 1, planted errors (no training): phantom heads converted by the tissue oracle fitted on their own pair
(`ctmri_monai.phantoms.oracle`), with a hallucination, a deletion and a misplacement planted into the output
(`ctmri_monai.phantoms.plant`, repeated consistently under flips and shifts), scored with every signal and
combination of `ctmri_monai.engines.disagreement`: voxel AUROC inside the head and flagged-region Dice against the
planted region, with the honest backward oracle and with a steganographic one (Chu et al. 2017). This table
decided the map's combination.

Part 2, real mistakes: `make-phantoms --lesions` (CT domain: bleeds only; MRI domain: masses only; held-out
subjects paired), the default bundle and ``--lambda_structure 0`` trained on one time budget each, the held-out
subjects converted both ways, the map scored against the voxels whose real error |output - true counterpart|
exceeds ``ERROR_THRESHOLD`` (AUROC), and the lesions the model invented or erased (a lesion of the input whose
counterpart region moved by more than the threshold on half its voxels) counted with how many the map flags.
"""
