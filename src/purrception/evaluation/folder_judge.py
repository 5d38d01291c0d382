"""The folder protocol's judge: a classifier trained once on a class-balanced part of a labelled image folder.

The folder is read as ``purr encode`` reads it (class sub-folders, or flat + labels file), preprocessed to the
generator's resolution and channels, so the judge sees the pixels the generator learnt from. It is split in two:

- the *judge part*, :data:`JUDGE_SHARE` (half) of every class (at least :data:`JUDGE_MIN_PER_CLASS` where the class has
  more, at most :data:`JUDGE_MAX` images in all, seed 0), trains the classifier;
- the *rest* is the FID reference, and the judge's accuracy on it is reported beside every score (how far to trust
  its class accuracy on samples).

Per-class shares matter: class sub-folders list files sorted by class, so "the second half" would hold out the last
classes only. The judge and its facts are cached under ``cache_dir/folder-judge-<key>/`` (safetensors + JSON; nothing
pickled), ``key`` a hash of the judge part's pixels and labels and the recipe, so a changed folder trains a new judge.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from purrception.data.images import folder_source
from purrception.data.reading import read_images
from purrception.errors import PurrError
from purrception.evaluation.classifier import ImageJudge, fit_judge
from purrception.hashing import sha256_parts
from purrception.io import atomic_save_json, atomic_write, cache_root, load_json
from purrception.splits import balanced_holdout

__all__ = ["FolderJudge", "FolderSplit", "split_folder", "load_or_train_judge", "JUDGE_SHARE", "JUDGE_MAX",
           "JUDGE_MIN_PER_CLASS", "JUDGE_STEPS", "JUDGE_VERSION"]

log = logging.getLogger(__name__)

#: share of every class that trains the judge, the least per class, and the most in all
JUDGE_SHARE, JUDGE_MIN_PER_CLASS, JUDGE_MAX = 0.5, 5, 5000
#: optimiser steps of batch 64 (the epochs follow from the judge part's size)
JUDGE_STEPS = 1200
#: bump when the architecture or the recipe changes: it is part of the cache key
JUDGE_VERSION = 1
_SEED = 1234
#: the judge reads at most this side; larger images are average-pooled by 2 until they fit (CPU cost)
_MAX_SIDE = 64


class FolderJudge(ImageJudge):
    """Three conv stages (16, 32, 64 channels), 4x4 average pooling, a 128-d penultimate layer, ``num_classes`` out.

    Reads uint8 ``(N, S, S)`` grey or ``(N, S, S, 3)`` RGB images of the side it was built for.
    """

    feature_dim = 128

    def __init__(self, image_size: int, channels: int, num_classes: int):
        super().__init__()
        self.image_size, self.channels, self.num_classes = image_size, channels, num_classes
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        )
        self.fc = nn.Linear(64 * 16, self.feature_dim)
        self.out = nn.Linear(self.feature_dim, num_classes)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        images = np.asarray(images)
        want = (self.image_size, self.image_size) + (() if self.channels == 1 else (3,))
        if images.shape[1:] != want:
            raise PurrError(f"the folder judge reads images of shape (N, {', '.join(map(str, want))}), got "
                            f"{images.shape}; evaluate with the folder the generator was trained on")
        x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)
        x = x[:, None] if self.channels == 1 else x.permute(0, 3, 1, 2)
        while x.shape[-1] > _MAX_SIDE:
            x = F.avg_pool2d(x, 2)
        return x.contiguous()


@dataclass
class FolderSplit:
    """A labelled folder at one resolution, split into the judge part and the rest (the FID reference)."""

    images: np.ndarray          # uint8 (N, S, S) or (N, S, S, 3), in the folder's order
    labels: np.ndarray          # int64 (N,)
    class_names: list[str]
    judge_mask: np.ndarray      # bool (N,): True for the judge part
    description: dict[str, Any]

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else 3

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """Hash of the pixels, labels and split: names the reference statistics of the rest."""
        return sha256_parts(f"folder-split-v{JUDGE_VERSION}", self.images, self.labels, self.judge_mask, length=16)


def split_folder(folder: str | Path, image_size: int, channels: int, labels_file: str | Path | None = None,
                 workers: int = 0, progress: bool = False) -> FolderSplit:
    """Read ``folder`` at ``image_size`` / ``channels`` (as ``purr encode`` would) and split it.

    Raises:
        PurrError: the folder is unreadable, has one class, or a class has fewer than two images.
    """
    source = folder_source(folder, labels_file)
    if source.num_classes < 2:
        raise PurrError(f"the folder protocol needs at least 2 classes in {folder} (class accuracy of one class "
                        f"says nothing); use the inception protocol for an unlabelled folder")
    counts = np.bincount(source.labels, minlength=source.num_classes)
    if counts.min() < 2:
        small = source.class_names[int(counts.argmin())]
        raise PurrError(f"class {small!r} of {folder} has {int(counts.min())} image(s); the folder protocol needs at "
                        f"least 2 per class (one to train the judge, one to score against)")
    images = read_images(source, image_size, channels, workers=workers, progress=progress)
    mask = balanced_holdout(source.labels, JUDGE_SHARE, seed=0, min_per_class=JUDGE_MIN_PER_CLASS,
                            max_total=JUDGE_MAX)
    description = {key: source.description[key] for key in ("layout", "root", "num_images", "fingerprint")}
    return FolderSplit(images, source.labels, list(source.class_names), mask, description)


def _epochs(count: int) -> int:
    return max(1, math.ceil(JUDGE_STEPS / math.ceil(count / 64)))


def _cache_folder(split: FolderSplit, cache_dir: str | Path) -> Path:
    part = split.judge_mask
    key = sha256_parts(f"v{JUDGE_VERSION}-steps{JUDGE_STEPS}-s{_SEED}", split.images[part], split.labels[part],
                       "\0".join(split.class_names), length=12)
    return cache_root(cache_dir) / f"folder-judge-{key}"


def load_or_train_judge(split: FolderSplit, cache_dir: str | Path) -> tuple[FolderJudge, dict[str, Any]]:
    """The cached judge of ``split`` (trained on its judge part on first use) and its facts.

    The facts (``judge.json``) include its accuracy on the rest of the folder, which it never saw.
    """
    folder = _cache_folder(split, cache_dir)
    weights, meta = folder / "model.safetensors", folder / "judge.json"

    def build() -> FolderJudge:
        return FolderJudge(split.image_size, split.channels, split.num_classes)

    model = build()
    if weights.is_file() and meta.is_file():
        try:
            model.load_state_dict(load_file(str(weights)))
            return model.eval(), load_json(meta, "folder judge info")
        except Exception as err:  # a truncated or foreign file: train a fresh one
            log.warning("cached folder judge in %s is unreadable (%s); retraining", folder, err)
    part = split.judge_mask
    log.info("training the folder judge on %d images of %d classes (once; cached in %s)", int(part.sum()),
             split.num_classes, folder)
    model = fit_judge(build, split.images[part], split.labels[part], _epochs(int(part.sum())), _SEED,
                      max_shift=max(1, split.image_size // 16), pad_mode="replicate")
    rest = ~part
    accuracy = float((model.predict(split.images[rest]) == split.labels[rest]).mean())
    log.info("folder judge accuracy on the rest of the folder (never seen by it): %.4f", accuracy)
    facts = {"version": JUDGE_VERSION, "trained_on": int(part.sum()), "rest": int(rest.sum()),
             "accuracy_on_rest": accuracy, "steps": JUDGE_STEPS, "seed": _SEED, "image_size": split.image_size,
             "channels": split.channels, "class_names": split.class_names}
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp))
    atomic_save_json(meta, facts)
    return model, facts
