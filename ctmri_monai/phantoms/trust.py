"""The planted-error proof of the disagreement map on phantoms: convert with the tissue oracle, plant each kind of
error (`ctmri_monai.phantoms.plant`), recompute the map and score it against the planted region.

Used by tests/test_disagreement.py (the proof) and scripts/bench_trust.py (the table that chose the combination).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ctmri_monai.engines.disagreement import COMBINED, combine_signals, disagreement_signals
from ctmri_monai.metrics.flagged import flag_mask, region_dice, voxel_auroc
from ctmri_monai.phantoms.oracle import HiddenCopy, hide, oracle_conversion
from ctmri_monai.phantoms.plant import ConsistentMistake, plant_cases
from ctmri_monai.phantoms.render import Phantom
from ctmri_monai.transforms.mask import head_mask

__all__ = ["VARIANTS", "clean_share", "planted_scores", "variant_map"]

#: Ways to combine the signals that the benchmark compares: name -> (signals, how).
VARIANTS: dict[str, tuple[tuple[str, ...], str]] = {
    "map": (COMBINED, "max"),  # the map as `disagreement_map` makes it
    "structure": (("structure",), "max"),
    "cycle": (("cycle",), "max"),
    "stability": (("stability",), "max"),
    "max(structure, cycle)": (("structure", "cycle"), "max"),
    "max(structure, stability)": (("structure", "stability"), "max"),
    "mean(structure, cycle)": (("structure", "cycle"), "mean"),
    "max(all)": (("structure", "cycle", "stability"), "max"),
}


def variant_map(signals: dict[str, np.ndarray], variant: str, direction: str, head: np.ndarray) -> np.ndarray:
    """The map of a combination of ``VARIANTS`` (zero outside the head)."""
    names, how = VARIANTS[variant]
    dmap, _ = combine_signals({n: signals[n] for n in names}, direction, head, how)
    dmap[~head] = 0.0
    return dmap


def clean_share(phantom: Phantom, direction: str, variant: str = "map") -> float:
    """The share of head voxels a ``variant`` map flags on the oracle's clean conversion of ``phantom``."""
    x, y, _, forward, backward = oracle_conversion(phantom, direction)
    head = head_mask(x)
    signals, _ = disagreement_signals(x, y, forward, backward, amp=False)
    return float(flag_mask(variant_map(signals, variant, direction, head), head).sum()) / max(int(head.sum()), 1)


def planted_scores(phantom: Phantom, direction: str, hidden: bool = False,
                   variants: tuple[str, ...] = tuple(VARIANTS)) -> dict[str, dict[str, Any]]:
    """kind -> {planted voxels, variant -> (voxel AUROC in the head, flagged-region Dice)} for each planted kind
    in the oracle's conversion of ``phantom`` (which must hold a lesion). The forward generator repeats the
    mistake under flips and shifts (`ConsistentMistake`); ``hidden``: the output also hides the input for a
    steganographic backward generator (`HiddenCopy`) that then reads it back perfectly."""
    x, y, _, forward, backward = oracle_conversion(phantom, direction)
    head = head_mask(x)
    scores: dict[str, dict[str, Any]] = {}
    for kind, (planted, region) in plant_cases(y, phantom.labels).items():
        output = hide(planted, x) if hidden else planted
        signals, _ = disagreement_signals(x, output, ConsistentMistake(forward, x, output - y),
                                          HiddenCopy() if hidden else backward, amp=False)
        row: dict[str, Any] = {"planted_voxels": int(region.sum())}
        for variant in variants:
            dmap = variant_map(signals, variant, direction, head)
            row[variant] = (voxel_auroc(dmap, region, head), region_dice(dmap, region, head))
        scores[kind] = row
    return scores
