"""Choosing the FID feature network from a bundle config."""

from __future__ import annotations

import os

import torch
from torch import nn

from ctmri_monai.metrics.features import InceptionFeatures, RandomFeatures

FEATURE_KINDS = ("inception", "random")


def build_feature_extractor(
    kind: str = "inception", path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """ "inception": the standard FID network (installed ``[fid]`` extra, or ``path``); "random": a tiny stand-in.

    A user ``path`` always means a TorchScript feature network with Inception's input conventions.
    """
    if kind == "inception" or path:
        return InceptionFeatures(path=path, device=device)
    if kind == "random":
        return RandomFeatures().to(device)
    raise ValueError(f"unknown feature network {kind!r}; expected one of {FEATURE_KINDS} or a path")
