"""Fréchet distance between feature Gaussians, and the on-disk cache of reference statistics.

FID (Heusel et al., 2017; the metric of paper Sec. 4 and App. C) fits a Gaussian ``N(mu, Sigma)`` to the features of
each image set and reports

    ``FID = ||mu_1 - mu_2||^2 + tr(Sigma_1) + tr(Sigma_2) - 2 tr((Sigma_1 Sigma_2)^{1/2})``.

``Sigma`` is the unbiased sample covariance (``ddof = 1``), as in torch-fidelity. The trace of the matrix square root
is computed as ``tr((S_1^{1/2} S_2 S_1^{1/2})^{1/2})``: the same eigenvalues as ``S_1 S_2``, but of a symmetric PSD
matrix, so ``eigh`` is exact and stable (no complex parts to discard).

A reference set's features are cached in ``CACHE/fid-reference/<source fingerprint>-<extractor fingerprint>.npz``
(``mu``, ``sigma``, the features as float32 for precision/recall, and a JSON description), so the 50k ImageNet
validation images pass through Inception once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from purrception.errors import PurrError
from purrception.io import atomic_write, cache_root

__all__ = ["FeatureStats", "feature_stats", "frechet_distance", "fid_from_features", "ReferenceFeatures",
           "reference_cache_path", "save_reference", "load_reference", "load_or_compute_reference"]

log = logging.getLogger(__name__)

CACHE_SUBDIR = "fid-reference"
_CACHE_VERSION = 1


@dataclass(frozen=True)
class FeatureStats:
    """Mean ``(F,)`` and covariance ``(F, F)`` (float64) of ``count`` feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int


def feature_stats(features: np.ndarray) -> FeatureStats:
    """Fit the FID Gaussian: mean and unbiased covariance of ``features`` ``(N, F)``, in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise PurrError(f"FID needs at least 2 feature vectors of shape (N, F); got {x.shape}")
    return FeatureStats(x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1]),
                        int(x.shape[0]))


def _sqrt_psd(sym: np.ndarray) -> np.ndarray:
    """Principal square root of a symmetric PSD matrix (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((sym + sym.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between ``N(a.mu, a.sigma)`` and ``N(b.mu, b.sigma)`` (the FID formula above)."""
    if a.mu.shape != b.mu.shape:
        raise PurrError(f"feature sizes differ ({a.mu.shape[0]} vs {b.mu.shape[0]}): the reference statistics "
                        f"were made with another feature extractor; recompute them")
    diff = a.mu - b.mu
    root = _sqrt_psd(a.sigma)
    middle = root @ b.sigma @ root
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * tr_covmean)


def fid_from_features(x: np.ndarray, y: np.ndarray) -> float:
    """FID between two feature sets ``(N, F)`` and ``(M, F)``."""
    return frechet_distance(feature_stats(x), feature_stats(y))


@dataclass
class ReferenceFeatures:
    """Features of a reference image set and their Gaussian, with where they came from."""

    features: np.ndarray  # (N, F) float32
    stats: FeatureStats
    info: dict[str, Any] = field(default_factory=dict)


def reference_cache_path(cache_dir: str | Path, source_fingerprint: str, extractor_fingerprint: str) -> Path:
    """Where the reference of ``source`` under ``extractor`` is cached (both fingerprints name the file)."""
    return cache_root(cache_dir) / CACHE_SUBDIR / f"{source_fingerprint}-{extractor_fingerprint}.npz"


def save_reference(path: str | Path, ref: ReferenceFeatures) -> None:
    """Write a reference atomically as ``.npz`` (plain arrays and a JSON string: readable without pickle)."""
    info = json.dumps({"cache_version": _CACHE_VERSION, **ref.info}, sort_keys=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, mu=ref.stats.mu, sigma=ref.stats.sigma, count=np.int64(ref.stats.count),
                     features=np.asarray(ref.features, dtype=np.float32), info=np.array(info))

    atomic_write(path, write)


def load_reference(path: str | Path) -> ReferenceFeatures:
    """Read a reference written by :func:`save_reference` (``allow_pickle=False``)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            info = json.loads(str(data["info"]))
            stats = FeatureStats(data["mu"].astype(np.float64), data["sigma"].astype(np.float64), int(data["count"]))
            features = data["features"]
    except (OSError, ValueError, KeyError) as err:
        raise PurrError(f"cached reference {path} is unreadable ({err}); delete it to recompute") from None
    if info.get("cache_version") != _CACHE_VERSION:
        raise PurrError(f"cached reference {path} has an old format; delete it to recompute")
    return ReferenceFeatures(features, stats, info)


def load_or_compute_reference(cache_dir: str | Path, source_fingerprint: str, extractor_fingerprint: str,
                              compute: Callable[[], tuple[np.ndarray, dict[str, Any]]]) -> ReferenceFeatures:
    """The cached reference for this (source, extractor) pair, computing and caching it on a miss.

    Args:
        cache_dir: cache root (the file goes under ``fid-reference/``).
        source_fingerprint: fingerprint of the reference images (see ``evaluation.references``).
        extractor_fingerprint: fingerprint of the feature extractor's weights and preprocessing.
        compute: returns ``(features (N, F), info)`` when the cache misses.
    """
    path = reference_cache_path(cache_dir, source_fingerprint, extractor_fingerprint)
    if path.is_file():
        log.info("reusing reference statistics %s", path)
        return load_reference(path)
    features, info = compute()
    ref = ReferenceFeatures(np.asarray(features, dtype=np.float32), feature_stats(features),
                            {**info, "source_fingerprint": source_fingerprint,
                             "extractor_fingerprint": extractor_fingerprint})
    save_reference(path, ref)
    log.info("cached reference statistics of %d images in %s", ref.stats.count, path)
    return ReferenceFeatures(ref.features, ref.stats, {"cache_version": _CACHE_VERSION, **ref.info})
