"""Ignite metrics: FID / KID per translation direction, for MONAI evaluators (one float per metric name).

Per evaluation iteration the engine output is a dict with the batched tensors "real_ct", "real_mri",
"fake_ct", "fake_mri" (N x 1 x H x W in [-1, 1]) and the boolean N-vectors "ct_valid", "mri_valid" (the
evaluation dataset pads the shorter domain); a MONAI-decollated list of per-item dicts with those keys works
too. Direction "ct2mri" compares "fake_mri" items where "ct_valid" (their CT input was real) with "real_mri"
items where "mri_valid".

:class:`TranslationFeatures` collects the features of one direction once; :class:`TranslationFID` and
:class:`TranslationKID` are ``MetricsLambda`` s over it, so FID and KID of a direction share one feature pass
(ignite attaches a shared dependency once). :func:`translation_metrics` builds the five named metrics.
The real images' features are computed once per content: kept in memory per metric object, and, with a
``cache_dir``, on disk for every later evaluation of the same real images (:mod:`.feature_cache`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ignite.distributed as idist
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric, MetricsLambda
from ignite.metrics.metric import reinit__is_reduced
from torch import nn

from ctmri_monai import DIRECTIONS
from ctmri_monai.utils.hashing import update_digest

from .feature_cache import RealFeatureCache, feature_network_identity
from .features import module_device
from .frechet import frechet_distance, kernel_inception_distance

__all__ = [
    "DIRECTIONS",
    "KEY_METRIC",
    "TranslationFID",
    "TranslationFeatures",
    "TranslationKID",
    "TranslationOutputTransform",
    "translation_metrics",
]

KEY_METRIC = "fid_mean"

logger = logging.getLogger(__name__)


def _identity(x: Any) -> Any:
    return x


class TranslationOutputTransform:
    """Pick ``(fake, real, fake_valid, real_valid)`` of one direction from the evaluation output.

    Accepts the engine's dict of batched tensors or a decollated list of per-item dicts. Missing valid keys
    mean "all valid".
    """

    def __init__(self, direction: str = "ct2mri") -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        source, target = direction.split("2")
        self.direction = direction
        self.keys = (f"fake_{target}", f"real_{target}", f"{source}_valid", f"{target}_valid")

    def _pick(self, output: Any, key: str) -> Any:
        if isinstance(output, Mapping):
            return output.get(key)
        items = [o.get(key) for o in output]
        if any(i is None for i in items):
            return None
        return torch.stack([torch.as_tensor(i) for i in items])

    def __call__(self, output: Any) -> tuple[Any, Any, Any, Any]:
        if not isinstance(output, Mapping) and not (
            isinstance(output, Sequence) and len(output) > 0 and all(isinstance(o, Mapping) for o in output)
        ):
            raise TypeError(
                f"{self.direction}: expected the evaluation output dict (keys {self.keys}) or a list of such "
                f"dicts, got {type(output).__name__}"
            )
        fake, real, fake_valid, real_valid = (self._pick(output, k) for k in self.keys)
        if fake is None or real is None:
            raise KeyError(
                f"{self.direction}: the evaluation output lacks {self.keys[0]!r} or {self.keys[1]!r}"
            )
        return fake, real, fake_valid, real_valid


def _content_key(images: Any, valid: Any) -> str:
    """SHA-256 of a batch's pixels, shape, dtype and valid mask."""
    digest = hashlib.sha256()
    for value in (images, valid):
        if value is None:
            digest.update(b"none")
            continue
        update_digest(digest, torch.as_tensor(value))
    return digest.hexdigest()


class _Pending:
    """The valid real images of one batch (CPU copy) whose features wait for ``compute`` (and the disk cache)."""

    __slots__ = ("images", "key")

    def __init__(self, key: str, images: torch.Tensor) -> None:
        self.key, self.images = key, images


def _rows(entry: torch.Tensor | _Pending) -> int:
    return int(entry.images.shape[0] if isinstance(entry, _Pending) else entry.shape[0])


class TranslationFeatures(Metric):
    """Collect features of the valid fake and real images of one direction; ``compute()`` -> (fake, real).

    ``update((fake, real[, fake_valid, real_valid]))``: images N x C x H x W (or N x H x W) in [-1, 1]; valid
    masks are boolean N-vectors (``None``: all valid). Features are stored on the CPU as float32 and returned
    as float64 tensors (N_fake, F), (N_real, F), gathered over all processes with ``ignite.distributed``
    (world size 1: no communication). ``compute`` is cached until the next ``update``/``reset``.

    ``cache_real``: keep the features of real batches by content (SHA-256 of the pixels and mask) across
    ``reset``, so repeated validations on the same data run the feature network on the real images once (the
    feature network must stay fixed, as FID's does). ``cache_dir`` (with ``cache_real``): also keep the features
    of the whole real set on disk (:class:`~ctmri_monai.metrics.feature_cache.RealFeatureCache`), keyed by the
    content of every process's real batches and the feature network's identity, so later evaluations (other
    processes, other runs) on the same real images skip them. Then the real images of batches not in memory are
    kept (CPU copy) until ``compute``, which looks the gathered set up on every process: only when every process
    finds the file are its features used; otherwise they are computed, and rank 0 writes the file.
    """

    def __init__(
        self,
        feature_extractor: Callable[[torch.Tensor], torch.Tensor],
        output_transform: Callable = _identity,
        device: str | torch.device = "cpu",
        cache_real: bool = True,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.feature_extractor = feature_extractor
        self.cache_real = bool(cache_real)
        self.disk_cache: RealFeatureCache | None = None
        if self.cache_real and cache_dir:
            if feature_network_identity(feature_extractor) is None:
                logger.warning("the feature extractor %r has no identity (not an nn.Module, no cache_identity()): "
                               "real-image features are not cached on disk", feature_extractor)
            else:
                self.disk_cache = RealFeatureCache(cache_dir)
        self._real_cache: dict[str, torch.Tensor | None] = {}
        self._fake: list[torch.Tensor] = []
        self._real: list[torch.Tensor | _Pending] = []
        self._real_digest = hashlib.sha256()
        self._version = 0
        self._cached: tuple[torch.Tensor, torch.Tensor] | None = None
        super().__init__(output_transform=output_transform, device=device, skip_unrolling=True)

    @property
    def version(self) -> int:
        """Changes whenever the collected features change (lets dependants cache their results)."""
        return self._version

    @reinit__is_reduced
    def reset(self) -> None:
        self._fake, self._real = [], []
        self._real_digest = hashlib.sha256()
        self._cached = None
        self._version += 1

    @staticmethod
    def _select(images: Any, valid: Any) -> torch.Tensor | None:
        """The valid images as a plain N x C x H x W tensor, or None when there are none."""
        x = torch.as_tensor(images)
        x = x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else x
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if valid is not None:
            keep = torch.as_tensor(valid).reshape(-1).to(device=x.device, dtype=torch.bool)
            if keep.numel() != x.shape[0]:
                raise ValueError(f"valid mask has {keep.numel()} items for a batch of {x.shape[0]} images")
            x = x[keep]
        return None if x.shape[0] == 0 else x.detach()

    def _extract(self, x: torch.Tensor) -> torch.Tensor:
        fe = self.feature_extractor
        if isinstance(fe, nn.Module):
            x = x.to(module_device(fe, default=x.device))
        with torch.no_grad():
            feats = fe(x)
        return feats.detach().reshape(feats.shape[0], -1).to("cpu", torch.float32)

    def _features(self, images: Any, valid: Any) -> torch.Tensor | None:
        x = self._select(images, valid)
        return None if x is None else self._extract(x)

    def _real_entry(self, images: Any, valid: Any) -> torch.Tensor | _Pending | None:
        """Features of a real batch (memory cache, or computed now), or its images pending for ``compute``."""
        if not self.cache_real:
            return self._features(images, valid)
        key = _content_key(images, valid)
        self._real_digest.update(key.encode())
        if key in self._real_cache:
            return self._real_cache[key]
        if self.disk_cache is None:
            self._real_cache[key] = self._features(images, valid)
            return self._real_cache[key]
        x = self._select(images, valid)
        if x is None:
            self._real_cache[key] = None
            return None
        return _Pending(key, x.to("cpu", copy=True))

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        if len(output) not in (2, 4):
            raise ValueError(
                f"expected (fake, real) or (fake, real, fake_valid, real_valid), got {len(output)} items"
            )
        fake, real = output[0], output[1]
        fake_valid, real_valid = (output[2], output[3]) if len(output) == 4 else (None, None)
        fake_feats = self._features(fake, fake_valid)
        if fake_feats is not None:
            self._fake.append(fake_feats)
        real_entry = self._real_entry(real, real_valid)
        if real_entry is not None:
            self._real.append(real_entry)
        self._cached = None
        self._version += 1

    def _resolve(self) -> list[torch.Tensor]:
        """Compute the features of the pending real batches (once per content); the local real features."""
        for i, entry in enumerate(self._real):
            if isinstance(entry, _Pending):
                if self._real_cache.get(entry.key) is None:
                    self._real_cache[entry.key] = self._extract(entry.images)
                self._real[i] = self._real_cache[entry.key]
        return self._real  # type: ignore[return-value]

    def _fill(self, local: torch.Tensor) -> None:
        """Take the pending real batches' features from ``local``, this process's rows of the cached set."""
        start = 0
        for i, entry in enumerate(self._real):
            rows = _rows(entry)
            if isinstance(entry, _Pending):
                self._real[i] = self._real_cache[entry.key] = local[start:start + rows].float()
            start += rows

    def _real_features(self) -> torch.Tensor:
        """The gathered real features: from memory, from the disk cache, or computed (and then stored)."""
        pending = sum(isinstance(e, _Pending) for e in self._real)
        if self.disk_cache is None or int(idist.all_reduce(pending)) == 0:
            return self._gather(self._resolve())
        network = feature_network_identity(self.feature_extractor) or ""
        local_rows = sum(_rows(e) for e in self._real)
        key, stored, local = self.disk_cache.lookup(self._real_digest.hexdigest(), local_rows, network)
        if stored is not None and local is not None:
            self._fill(local)
            return stored
        start = time.perf_counter()
        real = self._gather(self._resolve())
        self.disk_cache.store(key, real, network, seconds=time.perf_counter() - start)
        return real

    @staticmethod
    def _gather(chunks: list[torch.Tensor]) -> torch.Tensor:
        local = torch.cat(chunks) if chunks else torch.zeros(0, 0)
        if idist.get_world_size() == 1:
            return local.double()
        dev = idist.device()
        shapes = idist.all_gather(torch.tensor(list(local.shape), device=dev)).reshape(-1, 2).cpu()
        width = int(shapes[:, 1].max())  # processes without features send (0, width)
        shapes[:, 1] = torch.where(shapes[:, 0] == 0, width, shapes[:, 1])
        if local.shape[0] == 0:
            local = torch.zeros(0, width)
        parts = idist.all_gather_tensors_with_shapes(local.to(dev), shapes.tolist())
        return torch.cat([p.cpu() for p in parts]).double()

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cached is None:
            fake, real = self._gather(self._fake), self._real_features()
            if fake.shape[0] < 2 or real.shape[0] < 2:
                raise NotComputableError(
                    f"FID/KID need at least 2 valid fake and 2 valid real images, got {fake.shape[0]} and "
                    f"{real.shape[0]}"
                )
            self._cached = (fake, real)
        return self._cached


def _collector(
    features: TranslationFeatures | None,
    feature_extractor: Callable | None,
    output_transform: Callable,
    device: Any,
    cache_dir: str | os.PathLike | None = None,
) -> TranslationFeatures:
    if features is not None:
        return features
    if feature_extractor is None:
        raise ValueError("give a feature_extractor (or a shared TranslationFeatures as features=)")
    return TranslationFeatures(feature_extractor, output_transform, device=device, cache_dir=cache_dir)


class _CachedLambda(MetricsLambda):
    """MetricsLambda over one TranslationFeatures whose float result is cached per collected feature set."""

    def __init__(self, fn: Callable, features: TranslationFeatures) -> None:
        self.features = features
        self._cache: tuple[int, float] | None = None
        super().__init__(fn, features)

    def compute(self) -> float:
        version = self.features.version
        if self._cache is None or self._cache[0] != version:
            self._cache = (version, float(super().compute()))
        return self._cache[1]


class TranslationFID(_CachedLambda):
    """FID between fake and real images of one direction (Ignite metric, ``compute()`` -> float).

    Args:
        feature_extractor: images in [-1, 1] -> (N, F) features, e.g. ``InceptionFeatures()`` (or
            ``RandomFeatures()`` for tests). Not needed when ``features`` is given.
        output_transform: engine output -> (fake, real, fake_valid, real_valid), e.g.
            ``TranslationOutputTransform("ct2mri")``.
        kid_subset_size, kid_subsets: settings of the companion metric from :meth:`kid`.
        features: a shared :class:`TranslationFeatures` (then feature_extractor/output_transform are unused).
        device: device of the internal collector metric (ignite's ``device``).
        cache_dir: folder of the on-disk cache of the real images' features (see :class:`TranslationFeatures`);
            None: memory only.
    """

    def __init__(
        self,
        feature_extractor: Callable | None = None,
        output_transform: Callable = _identity,
        kid_subset_size: int = 100,
        kid_subsets: int = 100,
        features: TranslationFeatures | None = None,
        device: str | torch.device = "cpu",
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.kid_subset_size = int(kid_subset_size)
        self.kid_subsets = int(kid_subsets)
        super().__init__(_fid_of_pair, _collector(features, feature_extractor, output_transform, device, cache_dir))

    def kid(self, **kwargs: Any) -> TranslationKID:
        """The KID metric of the same direction sharing this metric's features (no second feature pass)."""
        kwargs.setdefault("subset_size", self.kid_subset_size)
        kwargs.setdefault("n_subsets", self.kid_subsets)
        return TranslationKID(features=self.features, **kwargs)


class TranslationKID(_CachedLambda):
    """KID (mean unbiased polynomial MMD^2 over subsets) of one direction; ``compute()`` -> float.

    ``return_std=True`` makes it report the standard deviation over subsets instead of the mean. Other
    arguments as :class:`TranslationFID` and :func:`~ctmri_monai.metrics.frechet.kernel_inception_distance`.
    """

    def __init__(
        self,
        feature_extractor: Callable | None = None,
        output_transform: Callable = _identity,
        subset_size: int = 100,
        n_subsets: int = 100,
        degree: int = 3,
        gamma: float | None = None,
        coef0: float = 1.0,
        seed: int = 0,
        return_std: bool = False,
        features: TranslationFeatures | None = None,
        device: str | torch.device = "cpu",
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.kid_kwargs = dict(
            subset_size=int(subset_size),
            n_subsets=int(n_subsets),
            degree=degree,
            gamma=gamma,
            coef0=coef0,
            seed=seed,
        )
        self.return_std = bool(return_std)
        super().__init__(
            self._kid_of_pair, _collector(features, feature_extractor, output_transform, device, cache_dir)
        )

    def _kid_of_pair(self, pair: tuple[torch.Tensor, torch.Tensor]) -> float:
        mean, std = kernel_inception_distance(pair[0], pair[1], **self.kid_kwargs)
        return std if self.return_std else mean


def _fid_of_pair(pair: tuple[torch.Tensor, torch.Tensor]) -> float:
    return frechet_distance(pair[0], pair[1])


def _mean(*values: float) -> float:
    return float(sum(values) / len(values))


def translation_metrics(
    feature_extractor: Callable[[torch.Tensor], torch.Tensor],
    kid_subset_size: int = 100,
    kid_subsets: int = 100,
    directions: Sequence[str] = DIRECTIONS,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Metric]:
    """Named metrics to attach to an evaluator that outputs the evaluation dict described in this module.

    Returns ``{"fid_ct2mri", "kid_ct2mri", "fid_mri2ct", "kid_mri2ct", "fid_mean"}`` (for the default
    directions): per direction one shared feature collector, FID and KID over it; ``fid_mean`` is a
    ``MetricsLambda`` of the FIDs, the natural MONAI ``key_metric`` (lower is better: the CycleGAN evaluator's
    default ``metric_cmp_fn`` is `ctmri_monai.engines.evaluator.lower_is_better`; and
    ``key_metric_negative_sign=True`` in ``CheckpointSaver``).
    ``cache_dir``: folder of the on-disk cache of the real images' features, shared by every evaluation that
    names it (None: real features are kept in memory only, per metric object).
    """
    metrics: dict[str, Metric] = {}
    fids = []
    for d in directions:
        fid = TranslationFID(
            feature_extractor, TranslationOutputTransform(d), kid_subset_size, kid_subsets, device=device,
            cache_dir=cache_dir,
        )
        metrics[f"fid_{d}"] = fid
        metrics[f"kid_{d}"] = fid.kid()
        fids.append(fid)
    metrics[KEY_METRIC] = MetricsLambda(_mean, *fids)
    return metrics
