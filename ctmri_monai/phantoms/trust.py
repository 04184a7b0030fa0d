"""The planted-error proof of the disagreement map on phantoms: convert with the tissue oracle, plant each kind of
error (`ctmri_monai.phantoms.plant`), recompute the map and score it against the planted region.

Used by tests/test_disagreement.py (the proof) and scripts/bench_trust.py (the tables that chose the signals).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ctmri_monai.engines.disagreement import SIGNALS, combine_signals, disagreement_signals
from ctmri_monai.metrics.flagged import flag_mask, region_dice, voxel_auroc
from ctmri_monai.phantoms.oracle import hide, oracle_conversion
from ctmri_monai.phantoms.plant import ConsistentMistake, plant_cases
from ctmri_monai.phantoms.render import Phantom
from ctmri_monai.transforms.mask import head_mask

__all__ = ["VARIANTS", "benchmark_signals", "clean_share", "planted_scores", "variant_map"]

#: Ways to combine the signals that the benchmark compares: name -> (signals, how). "stability:flip" and
#: "stability:shift" are the stability signal from one move alone (one extra forward pass instead of two).
VARIANTS: dict[str, tuple[tuple[str, ...], str]] = {
    "map": (SIGNALS, "max"),  # the map as `disagreement_map` makes it
    "structure": (("structure",), "max"),
    "stability": (("stability",), "max"),
    "stability:flip": (("stability:flip",), "max"),
    "stability:shift": (("stability:shift",), "max"),
    "max(structure, stability:flip)": (("structure", "stability:flip"), "max"),
    "sum(structure, stability)": (SIGNALS, "sum"),
}


def benchmark_signals(source: np.ndarray, output: np.ndarray, forward: Any,
                      variants: tuple[str, ...] = tuple(VARIANTS), **run: Any) -> dict[str, np.ndarray]:
    """The map's signals (`disagreement_signals`) and, where ``variants`` need it, the stability signal of each
    move alone (two more passes); ``run`` as for `disagreement_signals`."""
    signals, _ = disagreement_signals(source, output, forward, **run)
    needed = {name for v in variants for name in VARIANTS[v][0]}
    for move in ("flip", "shift") if {"stability:flip", "stability:shift"} & needed else ():
        signals[f"stability:{move}"] = disagreement_signals(source, output, forward, moves=(move,), **run)[0][
            "stability"]
    return signals


def variant_map(signals: dict[str, np.ndarray], variant: str, direction: str, head: np.ndarray) -> np.ndarray:
    """The map of a combination of ``VARIANTS`` (zero outside the head); "stability:<move>" takes the stability
    signal's floor."""
    names, how = VARIANTS[variant]
    dmap, _ = combine_signals({n.split(":")[0]: signals[n] for n in names}, direction, head, how)
    dmap[~head] = 0.0
    return dmap


def clean_share(phantom: Phantom, direction: str, variant: str = "map") -> float:
    """The share of head voxels a ``variant`` map flags on the oracle's clean conversion of ``phantom``."""
    x, y, _, forward, _ = oracle_conversion(phantom, direction)
    head = head_mask(x)
    signals = benchmark_signals(x, y, forward, (variant,), amp=False)
    return float(flag_mask(variant_map(signals, variant, direction, head), head).sum()) / max(int(head.sum()), 1)


def planted_scores(phantom: Phantom, direction: str, hidden: bool = False,
                   variants: tuple[str, ...] = tuple(VARIANTS)) -> dict[str, dict[str, Any]]:
    """kind -> {planted voxels, variant -> (voxel AUROC in the head, flagged-region Dice)} for each planted kind
    in the oracle's conversion of ``phantom`` (which must hold a lesion). The forward generator repeats the
    mistake under flips and shifts (`ConsistentMistake`); ``hidden``: the output also hides the input below one
    grey level (`hide`, Chu et al. 2017), which the map must not notice."""
    x, y, _, forward, _ = oracle_conversion(phantom, direction)
    head = head_mask(x)
    scores: dict[str, dict[str, Any]] = {}
    for kind, (planted, region) in plant_cases(y, phantom.labels).items():
        output = hide(planted, x) if hidden else planted
        signals = benchmark_signals(x, output, ConsistentMistake(forward, x, output - y), variants, amp=False)
        row: dict[str, Any] = {"planted_voxels": int(region.sum())}
        for variant in variants:
            dmap = variant_map(signals, variant, direction, head)
            row[variant] = (voxel_auroc(dmap, region, head), region_dice(dmap, region, head))
        scores[kind] = row
    return scores
