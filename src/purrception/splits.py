"""Class-balanced held-out splits of a labelled list of items.

Inputs are often sorted by class (class sub-folders, the embedded digits), so a split that takes "the last 10%"
would hold out one class only. :func:`balanced_holdout` takes the same fraction of every class, each class's
members chosen by a seeded permutation, so the split depends only on the labels and the seed.
"""

from __future__ import annotations

import numpy as np

from purrception.errors import PurrError

__all__ = ["balanced_holdout"]


def balanced_holdout(labels: np.ndarray, fraction: float, seed: int = 0, *, min_per_class: int = 1,
                     max_total: int | None = None) -> np.ndarray:
    """A boolean mask over ``labels`` that holds out ``fraction`` of every class.

    Args:
        labels: int class ids ``(N,)``.
        fraction: share of each class to hold out, in ``(0, 1)``.
        seed: chooses which members of each class are held out.
        min_per_class: hold out at least this many of every class that has more than that many items (a class
            is never held out whole: at least one item stays on the other side).
        max_total: scale the per-class counts down so that at most about this many items are held out in all.

    Returns:
        ``mask`` ``(N,)`` bool, True for held-out items.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 < fraction < 1.0:
        raise PurrError(f"held-out fraction must lie strictly between 0 and 1, got {fraction}")
    classes, counts = np.unique(labels, return_counts=True)
    take = np.round(counts * fraction).astype(np.int64)
    if max_total is not None and take.sum() > max_total:
        take = np.floor(take * (max_total / take.sum())).astype(np.int64)
    take = np.clip(np.maximum(take, min_per_class), 0, counts - 1)
    rng = np.random.default_rng(seed)
    mask = np.zeros(labels.shape[0], dtype=bool)
    for cls, n in zip(classes, take):
        members = np.flatnonzero(labels == cls)
        mask[rng.permutation(members)[:n]] = True
    return mask
