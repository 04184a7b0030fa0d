"""Fréchet (FID) and kernel (KID) distances between two sets of feature vectors, in float64.

FID = ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)). The trace of the matrix square root is
computed without ``scipy.linalg.sqrtm``: with covariance factors S_a = P P^T and S_b = Q Q^T, the eigenvalues
of S_a S_b are the squared singular values of P^T Q, so tr((S_a S_b)^(1/2)) = sum of the singular values of
P^T Q (exact, real, and well defined for the rank-deficient covariances of fewer images than features). P is
the centred feature matrix / sqrt(n - 1) when n <= F, else the symmetric PSD square root of S_a (eigh).
For 744 x 2048 features this takes 0.13 s on a 2-core CPU (scripts/bench_fid.py; scipy's sqrtm of the
2048 x 2048 product is the slow, rank-sensitive path this avoids).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "frechet_distance",
    "kernel_inception_distance",
    "mmd2_unbiased",
    "polynomial_kernel",
]

Features = np.ndarray | torch.Tensor | Sequence


def _as_features(x: Features, name: str, min_rows: int = 2) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected features of shape (N, F), got {a.shape}")
    if a.shape[0] < min_rows:
        raise ValueError(f"{name}: need at least {min_rows} feature vectors, got {a.shape[0]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: features contain NaN or Inf")
    return a


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues -> 0)."""
    w, v = np.linalg.eigh(0.5 * (s + s.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _cov_factor(centered: np.ndarray) -> np.ndarray:
    """A matrix P (F x r) with P P^T equal to the sample covariance of the centred rows."""
    n, f = centered.shape
    if n <= f:
        return centered.T / np.sqrt(n - 1)
    return _psd_sqrt(centered.T @ centered / (n - 1))


def _trace_sqrt_product(p: np.ndarray, q: np.ndarray) -> float:
    """tr((P P^T Q Q^T)^(1/2)) = nuclear norm of P^T Q."""
    return float(np.linalg.svd(p.T @ q, compute_uv=False).sum())


def frechet_distance(feats_a: Features, feats_b: Features) -> float:
    """Fréchet distance (FID when the features are Inception pool features) between two feature sets (N, F).

    Float64 throughout; unbiased (n - 1) covariances as in the reference FID; needs >= 2 vectors per set.
    The result is clamped at 0 (it is a squared distance; rounding can give -1e-13 for identical sets).
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca, cb = a - mu_a, b - mu_b
    tr_a = float((ca * ca).sum()) / (a.shape[0] - 1)
    tr_b = float((cb * cb).sum()) / (b.shape[0] - 1)
    cross = _trace_sqrt_product(_cov_factor(ca), _cov_factor(cb))
    diff = mu_a - mu_b
    return max(float(diff @ diff) + tr_a + tr_b - 2.0 * cross, 0.0)


def polynomial_kernel(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> np.ndarray:
    """k(x, y) = (gamma <x, y> + coef0) ** degree, gamma defaulting to 1 / F (the KID kernel)."""
    g = 1.0 / x.shape[1] if gamma is None else gamma
    return (g * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(
    x: Features, y: Features, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> float:
    """Unbiased MMD^2 estimate between samples x (m, F) and y (n, F) with the polynomial kernel."""
    x, y = _as_features(x, "x"), _as_features(y, "y")
    m, n = x.shape[0], y.shape[0]
    kxx = polynomial_kernel(x, x, degree, gamma, coef0)
    kyy = polynomial_kernel(y, y, degree, gamma, coef0)
    kxy = polynomial_kernel(x, y, degree, gamma, coef0)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * kxy.mean()
    )


def kernel_inception_distance(
    feats_a: Features,
    feats_b: Features,
    subset_size: int = 1000,
    n_subsets: int = 100,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): mean and std of the unbiased polynomial-kernel MMD^2 over random subsets.

    Each of ``n_subsets`` draws ``m = min(subset_size, N_a, N_b)`` vectors without replacement from each set
    (numpy ``default_rng(seed)``, so the result is deterministic). When m equals both set sizes every draw is
    a permutation, so the estimate is computed once and std is 0. Std uses ddof=0 as clean-fid and
    torch-fidelity do.
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    m = min(int(subset_size), a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    if m == a.shape[0] == b.shape[0]:
        return mmd2_unbiased(a, b, degree, gamma, coef0), 0.0
    rng = np.random.default_rng(seed)
    vals = np.array(
        [
            mmd2_unbiased(
                a[rng.choice(a.shape[0], m, replace=False)],
                b[rng.choice(b.shape[0], m, replace=False)],
                degree,
                gamma,
                coef0,
            )
            for _ in range(max(int(n_subsets), 1))
        ]
    )
    return float(vals.mean()), float(vals.std())
