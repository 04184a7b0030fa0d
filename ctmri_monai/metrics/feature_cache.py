"""On-disk cache of the real images' FID features, keyed by the images' content and the feature network.

FID / KID compare the features of generated images with those of a fixed set of real images; every validation
and evaluation on the same data would run the feature network (Inception-v3: the slow part on a CPU) on the same
real images again. :class:`RealFeatureCache` keeps their features in one file per (real image set, feature
network): ``<folder>/real-<key>.pt``, a ``torch.save`` of ``{"format", "key", "network", "features"}`` with the
features a float64 (N, F) tensor, read with ``weights_only=True``. The key (:func:`real_set_key`) is a SHA-256
over

* the images: per process, a SHA-256 over the SHA-256 of every batch the metric received (pixels, dtype, shape,
  valid mask, in order), gathered from every process in rank order (so the world size is part of it);
* the feature network's identity (:func:`feature_network_identity`): the SHA-256 of its weights file (Inception)
  or state dict, its input resize and range, and the device type (GPU convolutions round differently).

Files are written atomically (``ctmri_monai.io.atomic.atomic_write``: temporary name, then rename), so
concurrent writers of the same key cannot leave a half-written file; the last one wins with the same content.
A file that cannot be read or does not hold what its name promises is a miss: the features are recomputed and
the file replaced, never an error. Nothing is ever deleted: remove the folder to reclaim the space (about
2048 x 8 bytes per real image with Inception).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from torch import nn

from ctmri_monai.io.atomic import atomic_write
from ctmri_monai.utils.hashing import state_dict_sha256

from .features import module_device

__all__ = ["CACHE_FORMAT", "RealFeatureCache", "feature_network_identity", "real_set_key"]

logger = logging.getLogger(__name__)

#: Version of the key and of the file layout; bump it to orphan every file written before.
CACHE_FORMAT = 1


def feature_network_identity(extractor: Callable[[torch.Tensor], torch.Tensor]) -> str | None:
    """A text that changes whenever the features of ``extractor`` would; None when there is none to be had.

    An extractor with a ``cache_identity()`` method (``InceptionFeatures``, ``RandomFeatures``) gives its own;
    another ``nn.Module`` (e.g. a wrapper) is its class, the SHA-256 of its state dict, its device type and the
    identities of the submodules that have one. A plain function has no identity: its features are not cached.
    """
    own = getattr(extractor, "cache_identity", None)
    if callable(own):
        return str(own())
    if not isinstance(extractor, nn.Module):
        return None
    inner = [str(m.cache_identity()) for m in extractor.modules() if callable(getattr(m, "cache_identity", None))]
    cls = type(extractor)
    return (
        f"{cls.__module__}.{cls.__qualname__}(state_sha256={state_dict_sha256(extractor.state_dict())}, "
        f"device={module_device(extractor).type}, inner={inner})"
    )


def real_set_key(rank_digests: Sequence[str], network: str) -> str:
    """SHA-256 hex key of a real image set (one content digest per process, in rank order) and a network."""
    text = json.dumps({"format": CACHE_FORMAT, "network": network, "images": list(rank_digests)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class RealFeatureCache:
    """Real-image features in ``folder`` (created on the first write), one ``real-<key>.pt`` file per key."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder).expanduser()

    def path(self, key: str) -> Path:
        """The file of ``key``."""
        return self.folder / f"real-{key}.pt"

    def load(self, key: str, rows: int | None = None) -> torch.Tensor | None:
        """The float64 (N, F) features stored under ``key`` (N == ``rows`` when given), or None.

        A missing file is a silent miss; an unreadable one, or one whose content does not match (another key,
        another shape, non-finite values), is a miss with a warning (it is overwritten after recomputing).
        """
        file = self.path(key)
        if not file.is_file():
            return None
        try:
            data = torch.load(file, map_location="cpu", weights_only=True)
            feats = data["features"] if isinstance(data, dict) else None
            problem = _problem(data, feats, key, rows)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a miss, never an error
            problem = f"{type(exc).__name__}: {str(exc)[:200]}"
        if problem:
            logger.warning("FID feature cache %s is unusable (%s): recomputing the real-image features", file, problem)
            return None
        return feats

    def lookup(self, digest: str, rows: int, network: str) -> tuple[str, torch.Tensor | None, torch.Tensor | None]:
        """Collective (every process calls it): (key, stored, local) of the real set whose images this process
        digested as ``digest`` (``rows`` valid images) and of the other processes' sets.

        ``stored``: the gathered features from the file, used only when every process read it (else None);
        ``local``: this process's rows of it.
        """
        key = real_set_key([str(d) for d in idist.all_gather(digest)], network)
        if idist.get_world_size() > 1:
            key = str(idist.broadcast(key, src=0))  # one key, even if the processes' identities differed
        counts = [int(r) for r in idist.all_gather(int(rows))]
        stored = self.load(key, rows=sum(counts))
        if int(idist.all_reduce(int(stored is not None), op="MIN")) != 1 or stored is None:
            return key, None, None
        rank = idist.get_rank()
        if rank == 0:
            logger.info("real-image features from cache %s", self.path(key))
        offset = sum(counts[:rank])
        return key, stored, stored[offset:offset + int(rows)]

    def store(self, key: str, features: torch.Tensor, network: str, seconds: float = float("nan")) -> None:
        """Rank 0 writes the gathered real ``features`` computed in ``seconds`` under ``key`` (others return)."""
        if idist.get_rank() != 0 or features.shape[0] == 0:
            return
        file = self.save(key, features, network)
        if file is not None:
            logger.info("real-image features computed (%d images, %.1f s) and stored in %s",
                        features.shape[0], seconds, file)

    def save(self, key: str, features: torch.Tensor, network: str) -> Path | None:
        """Write ``features`` (float64 on the CPU) under ``key`` atomically; returns the file, None when writing
        failed (a warning: the evaluation goes on without the cache)."""
        file = self.path(key)
        data: dict[str, Any] = {"format": CACHE_FORMAT, "key": key, "network": network,
                                "features": features.detach().to("cpu", torch.float64).contiguous()}
        try:
            atomic_write(file, lambda tmp: torch.save(data, tmp))
        except (OSError, RuntimeError) as exc:
            logger.warning("could not write the FID feature cache %s (%s: %s)", file, type(exc).__name__, exc)
            return None
        return file


def _problem(data: Any, feats: Any, key: str, rows: int | None) -> str | None:
    """Why a loaded cache entry is not the features of ``key`` (None when it is)."""
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or data.get("key") != key:
        return "not a cache entry of this key and format"
    if not isinstance(feats, torch.Tensor) or feats.dtype != torch.float64 or feats.ndim != 2:
        return "features are not a float64 (N, F) tensor"
    if rows is not None and feats.shape[0] != rows:
        return f"{feats.shape[0]} feature rows for {rows} real images"
    if not bool(torch.isfinite(feats).all()):
        return "non-finite features"
    return None
