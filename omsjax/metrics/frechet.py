"""The Fréchet distance between Gaussians fitted to two feature sets (FID's formula, in float64): `frechet_distance`
of two (mean, covariance) pairs, `feature_stats` of a feature set, `fd_from_features` of two."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.linalg

__all__ = ["frechet_distance", "feature_stats", "fd_from_features"]


def frechet_distance(mu1: Any, cov1: Any, mu2: Any, cov2: Any, eps: float = 1e-6) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2), in float64:
    ||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)).

    The matrix square root is `scipy.linalg.sqrtm` (real part taken); as in pytorch-fid, if the product is
    singular (or its root not finite), `eps * I` is added to both covariances and the root recomputed. Dead ReLU
    features make the classifier's covariances singular, so the shipped metric takes that path.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    d = mu1.shape[0]
    if mu1.ndim != 1 or mu2.shape != (d,):
        raise ValueError(f"means must be vectors of equal length, got {mu1.shape} and {mu2.shape}")
    if cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"covariances must have shape ({d}, {d}), got {cov1.shape} and {cov2.shape}")
    for name, a in (("mu1", mu1), ("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} has non-finite entries")
    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)  # scipy warns when the product is singular
        try:
            covmean = scipy.linalg.sqrtm(cov1 @ cov2)
            singular = not np.all(np.isfinite(covmean))
        except scipy.linalg.LinAlgWarning:
            singular = True
    if singular:
        offset = eps * np.eye(d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            covmean = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(np.real(covmean)))


def feature_stats(feats: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D]; needs N >= 2 and finite values."""
    f = np.asarray(feats, np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must have shape [N, D], got {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {f.shape[0]}")
    if not np.all(np.isfinite(f)):
        raise ValueError("features have non-finite entries")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fd_from_features(f1: Any, f2: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N1, D] and [N2, D]."""
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))
