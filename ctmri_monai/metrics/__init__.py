"""Metrics for CT <-> MRI translation: feature extractors, FID / KID, Ignite metrics, paired MAE/PSNR/SSIM."""

from __future__ import annotations

from .features import (
    FID_INSTALL_HINT,
    FeatureNetworkNotFoundError,
    InceptionFeatures,
    RandomFeatures,
    clear_feature_network_cache,
    default_inception_path,
    load_feature_network,
    module_device,
)
from .frechet import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_stats,
    kernel_inception_distance,
    mmd2_unbiased,
    polynomial_kernel,
)
from .ignite_metrics import (
    DIRECTIONS,
    KEY_METRIC,
    TranslationFeatures,
    TranslationFID,
    TranslationKID,
    TranslationOutputTransform,
    translation_metrics,
)
from .paired import CT_DATA_RANGE, CT_HU_RANGE, mae, paired_metrics, psnr, ssim

__all__ = [
    "CT_DATA_RANGE",
    "CT_HU_RANGE",
    "DIRECTIONS",
    "FID_INSTALL_HINT",
    "KEY_METRIC",
    "FeatureNetworkNotFoundError",
    "InceptionFeatures",
    "RandomFeatures",
    "TranslationFID",
    "TranslationFeatures",
    "TranslationKID",
    "TranslationOutputTransform",
    "clear_feature_network_cache",
    "default_inception_path",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_stats",
    "kernel_inception_distance",
    "load_feature_network",
    "mae",
    "mmd2_unbiased",
    "module_device",
    "paired_metrics",
    "polynomial_kernel",
    "psnr",
    "ssim",
    "translation_metrics",
]
