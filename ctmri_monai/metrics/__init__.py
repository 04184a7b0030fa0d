"""Metrics for CT <-> MRI translation: feature extractors, FID / KID, Ignite metrics, paired MAE/PSNR/SSIM,
through-plane consistency and structure preservation of slice-wise converted volumes."""

from __future__ import annotations

from .consistency import (
    CONSISTENCY_DIRECTIONS,
    consistency_metrics,
    ngf_alignment,
    z_edge_correlation,
    z_gradient_correlation,
    z_roughness_ratio,
)
from .feature_cache import RealFeatureCache, feature_network_identity, real_set_key
from .features import (
    FID_INSTALL_HINT,
    FeatureNetworkNotFoundError,
    InceptionFeatures,
    RandomFeatures,
    default_inception_path,
    load_feature_network,
    module_device,
    weights_sha256,
)
from .frechet import (
    frechet_distance,
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
    "CONSISTENCY_DIRECTIONS",
    "CT_DATA_RANGE",
    "CT_HU_RANGE",
    "DIRECTIONS",
    "FID_INSTALL_HINT",
    "KEY_METRIC",
    "FeatureNetworkNotFoundError",
    "InceptionFeatures",
    "RandomFeatures",
    "RealFeatureCache",
    "TranslationFID",
    "TranslationFeatures",
    "TranslationKID",
    "TranslationOutputTransform",
    "consistency_metrics",
    "default_inception_path",
    "feature_network_identity",
    "frechet_distance",
    "kernel_inception_distance",
    "load_feature_network",
    "mae",
    "mmd2_unbiased",
    "module_device",
    "ngf_alignment",
    "paired_metrics",
    "polynomial_kernel",
    "psnr",
    "real_set_key",
    "ssim",
    "translation_metrics",
    "weights_sha256",
    "z_edge_correlation",
    "z_gradient_correlation",
    "z_roughness_ratio",
]
