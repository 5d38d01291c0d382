"""A small digit classifier for the embedded protocol, trained once on the *held-out* split and cached.

The generators train on the train split; the classifier never sees those images, so its accuracy on
generated digits (does it read the requested class?) and its penultimate features (for an FID on digits)
are honest judges. Its own accuracy on the real train split is reported beside every score.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from purrception.data.embedded import load_embedded_mnist
from purrception.errors import PurrError
from purrception.hashing import sha256_parts
from purrception.io import atomic_save_json, atomic_write, cache_root, load_json

__all__ = ["ImageJudge", "MnistClassifier", "fit_judge", "train_classifier", "load_or_train_classifier",
           "classifier_info", "CLASSIFIER_VERSION"]

log = logging.getLogger(__name__)

#: bump when the architecture or training recipe changes: it is part of the cache key.
CLASSIFIER_VERSION = 1
_EPOCHS = 30
_SEED = 1234


class ImageJudge(nn.Module):
    """A classifier that judges generated images: penultimate features for FID, its argmax for class accuracy.

    Subclasses define :meth:`prepare` (uint8 images -> network input, checking the layout) and
    :meth:`penultimate`; ``self.out`` maps the penultimate features to class logits.
    """

    feature_dim: int
    out: nn.Linear

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.penultimate(x))

    @torch.no_grad()
    def features(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
        """uint8 images -> penultimate features ``(N, feature_dim)`` float64."""
        self.eval()
        x = self.prepare(images)
        parts = [self.penultimate(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return torch.cat(parts).double().numpy()

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
        """uint8 images -> predicted class ids ``(N,)``."""
        self.eval()
        x = self.prepare(images)
        return torch.cat([self(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]).numpy()


class MnistClassifier(ImageJudge):
    """Two conv layers, a 128-d penultimate layer (the FID feature space) and a 10-way output."""

    feature_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # 14x14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # 7x7
        )
        self.fc = nn.Linear(64 * 7 * 7, self.feature_dim)
        self.out = nn.Linear(self.feature_dim, 10)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise PurrError(f"the digit classifier reads (N, 28, 28) grey images, got shape {images.shape}")
        return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)[:, None]


def _random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int, pad_mode: str) -> torch.Tensor:
    """Augmentation: translate each image by up to ``max_shift`` pixels; ``pad_mode`` "black" fills with -1,
    "replicate" repeats the border."""
    pad = (max_shift,) * 4
    padded = F.pad(x, pad, value=-1.0) if pad_mode == "black" else F.pad(x, pad, mode="replicate")
    height, width = x.shape[-2:]
    out = torch.empty_like(x)
    offsets = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=gen)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + height, dx : dx + width]
    return out


def fit_judge(build: Callable[[], ImageJudge], images: np.ndarray, labels: np.ndarray, epochs: int, seed: int,
              max_shift: int = 2, pad_mode: str = "black") -> ImageJudge:
    """Build a judge with ``build()`` (after seeding torch with ``seed``) and fit it: Adam 1e-3, batch 64,
    random shifts of up to ``max_shift`` pixels."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build()
    x = model.prepare(images)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 64):
            idx = perm[start : start + 64]
            loss = F.cross_entropy(model(_random_shift(x[idx], gen, max_shift, pad_mode)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def train_classifier(images: np.ndarray, labels: np.ndarray, epochs: int = _EPOCHS,
                     seed: int = _SEED) -> MnistClassifier:
    """Fit the digit classifier (:func:`fit_judge`: Adam, random shifts, batch 64)."""
    return fit_judge(MnistClassifier, images, labels, epochs, seed)


def _cache_key(heldout_labels: np.ndarray, heldout_images: np.ndarray) -> str:
    return sha256_parts(f"v{CLASSIFIER_VERSION}-e{_EPOCHS}-s{_SEED}", heldout_images, heldout_labels, length=12)


def _classifier_folder(cache_dir: str | Path) -> Path:
    """Where the classifier for the current held-out split and recipe is cached."""
    heldout = load_embedded_mnist("heldout")
    return cache_root(cache_dir) / f"classifier-{_cache_key(heldout.labels, heldout.images)}"


def load_or_train_classifier(cache_dir: str | Path) -> MnistClassifier:
    """The cached classifier for the embedded data, trained on the held-out split on first use.

    Its accuracy on the (unseen) train split is stored next to it, in ``classifier.json``.
    """
    folder = _classifier_folder(cache_dir)
    weights, meta = folder / "model.safetensors", folder / "classifier.json"
    model = MnistClassifier()
    if weights.is_file() and meta.is_file():
        try:
            model.load_state_dict(load_file(str(weights)))
            return model.eval()
        except Exception as err:
            log.warning("cached classifier in %s is unreadable (%s); retraining", folder, err)
    log.info("training the embedded digit classifier on the held-out split (once; cached in %s)", folder)
    heldout = load_embedded_mnist("heldout")
    model = train_classifier(heldout.images, heldout.labels)
    train = load_embedded_mnist("train")
    accuracy = float((model.predict(train.images) == train.labels).mean())
    log.info("classifier accuracy on the real train split (never seen by it): %.4f", accuracy)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp))
    atomic_save_json(meta, {"version": CLASSIFIER_VERSION, "trained_on": "embedded heldout split (1000 images)",
                            "accuracy_on_real_train_split": accuracy, "epochs": _EPOCHS, "seed": _SEED})
    return model


def classifier_info(cache_dir: str | Path) -> dict:
    """The ``classifier.json`` facts of the cached classifier (trains it first if needed)."""
    meta = _classifier_folder(cache_dir) / "classifier.json"
    if not meta.is_file():
        load_or_train_classifier(cache_dir)
    return load_json(meta, "classifier info")
