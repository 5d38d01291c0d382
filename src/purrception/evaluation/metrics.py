"""Scores beside FID: Inception Score, k-NN precision / recall, and class accuracy of conditional samples.

- Inception Score (Salimans et al., 2016), as torch-fidelity computes it: the samples are shuffled with
  ``RandomState(seed).permutation``, cut into ``splits`` equal chunks, and each chunk scores
  ``exp(mean_x KL(p(y|x) || p(y)))`` with ``p(y)`` the chunk's mean prediction; the mean and std over chunks are
  reported.
- Improved precision / recall (Kynkäänniemi et al., 2019): each set's manifold is the union of balls around its
  features with radius the distance to the k-th nearest neighbour (k = 3) within the set; precision is the fraction
  of generated features inside the real manifold, recall the fraction of real features inside the generated one.
"""

from __future__ import annotations

import numpy as np
import torch

from purrception.errors import PurrError

__all__ = ["inception_score", "knn_radii", "manifold_coverage", "precision_recall", "class_accuracy"]


def inception_score(logits: np.ndarray, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """Mean and std of the Inception Score over ``splits`` chunks of ``logits`` ``(N, C)``."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    n = logits.shape[0]
    if logits.ndim != 2 or n < splits:
        raise PurrError(f"the Inception Score needs at least {splits} samples of shape (N, C); "
                        f"got {tuple(logits.shape)}")
    logits = logits[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    log_p = logits.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        chunk = log_p[i * n // splits : (i + 1) * n // splits]
        log_q = chunk.exp().mean(dim=0, keepdim=True).log()               # log p(y) of the chunk
        kl = (chunk.exp() * (chunk - log_q)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


def knn_radii(features: torch.Tensor, k: int = 3, chunk: int = 4096) -> torch.Tensor:
    """Distance from every row to its k-th nearest *other* row ``(N,)`` (the row itself is the 0-th neighbour)."""
    if features.shape[0] <= k:
        raise PurrError(f"k-NN radii with k={k} need more than {k} samples; got {features.shape[0]}")
    return torch.cat([torch.cdist(features[i : i + chunk], features).kthvalue(k + 1, dim=1).values
                      for i in range(0, features.shape[0], chunk)])


def manifold_coverage(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int = 4096) -> float:
    """Fraction of ``queries`` within ``radii[j]`` of some ``support[j]``."""
    inside = [(torch.cdist(queries[i : i + chunk], support) <= radii[None, :]).any(dim=1)
              for i in range(0, queries.shape[0], chunk)]
    return float(torch.cat(inside).double().mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, device: str | torch.device = "cpu",
                     chunk: int = 4096) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` ``(M, F)`` against ``real`` ``(N, F)`` with k-NN manifolds."""
    r = torch.as_tensor(np.asarray(real, dtype=np.float32), device=device)
    f = torch.as_tensor(np.asarray(fake, dtype=np.float32), device=device)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise PurrError(f"precision/recall needs two (N, F) feature sets of one width; got {tuple(r.shape)} "
                        f"and {tuple(f.shape)}")
    precision = manifold_coverage(f, r, knn_radii(r, k, chunk), chunk)
    recall = manifold_coverage(r, f, knn_radii(f, k, chunk), chunk)
    return precision, recall


def class_accuracy(predicted: np.ndarray, requested: np.ndarray) -> float:
    """Fraction of samples whose predicted class is the class they were generated for."""
    predicted, requested = np.asarray(predicted), np.asarray(requested)
    if predicted.shape != requested.shape or predicted.size == 0:
        raise PurrError(f"class accuracy needs equal, non-empty label arrays; "
                        f"got {predicted.shape} and {requested.shape}")
    return float((predicted == requested).mean())
