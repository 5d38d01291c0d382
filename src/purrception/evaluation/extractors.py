"""Feature extractors that FID and friends are computed in, behind one small interface.

- ``digits``: the embedded protocol. Penultimate features (128-d) of a small classifier trained on the embedded
  *held-out* split (``evaluation.classifier``), and its predicted class for the class-accuracy score.
- ``folder``: any labelled folder. Penultimate features (128-d) of a judge trained on a class-balanced part of the
  folder (``evaluation.folder_judge``), its predicted class, and the rest of the folder as the reference.
- ``inception``: the paper's protocol (App. C): torch-fidelity's FID Inception-v3, 2048-d pool features and
  1008-way unbiased logits (Inception Score), from a local weight file.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from purrception.data.embedded import NUM_CLASSES
from purrception.evaluation.classifier import CLASSIFIER_VERSION, classifier_info, load_or_train_classifier
from purrception.evaluation.folder_judge import JUDGE_VERSION, FolderSplit, load_or_train_judge
from purrception.evaluation.inception import (
    FEATURE_DIM,
    INCEPTION_SHA256_PREFIX,
    LOGITS_DIM,
    images_to_uint8_rgb,
    load_fid_inception,
)
from purrception.evaluation.references import ArrayReference, ReferenceSource
from purrception.hashing import sha256_module, sha256_parts
from purrception.io import cache_root

__all__ = ["Extracted", "FeatureExtractor", "DigitFeatures", "FolderFeatures", "InceptionFeatures"]


@dataclass
class Extracted:
    """What an extractor reads from a batch of images."""

    features: np.ndarray                    # (N, F) float64: FID, precision / recall
    logits: np.ndarray | None = None        # (N, C) float64: Inception Score
    predicted: np.ndarray | None = None     # (N,) class ids in the generator's label space: class accuracy

    @staticmethod
    def concat(parts: list["Extracted"]) -> "Extracted":
        def cat(name: str) -> np.ndarray | None:
            arrays = [getattr(p, name) for p in parts]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)

        return Extracted(cat("features"), cat("logits"), cat("predicted"))


class FeatureExtractor(abc.ABC):
    """Maps uint8 images to :class:`Extracted`; its fingerprint keys the reference-statistics cache."""

    name: ClassVar[str]
    #: 1: reads ``(N, H, W)`` grey images; 3: ``(N, H, W, 3)`` RGB
    channels: ClassVar[int]

    @abc.abstractmethod
    def extract(self, images: np.ndarray) -> Extracted:
        """uint8 images -> features (and logits / predictions where the extractor has them)."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """16 hex digits identifying the weights and the preprocessing."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON facts for the report (name, feature width, fingerprint, provenance)."""

    @property
    def num_classes(self) -> int | None:
        """The classes its predictions name (checked against the generator's), or None when it predicts none."""
        return None

    def own_reference(self) -> ReferenceSource | None:
        """The reference set that belongs to this extractor (the folder protocol's rest), or None."""
        return None

    @property
    def judge_facts(self) -> dict[str, Any] | None:
        """What the classifier behind the predictions was trained on and how well it reads real images, or None."""
        return None


class DigitFeatures(FeatureExtractor):
    """The embedded protocol's judge: the cached digit classifier (trained on the held-out split on first use)."""

    name = "digits"
    channels = 1

    def __init__(self, cache_dir: str | Path):
        self.cache_dir = cache_root(cache_dir)
        self.classifier = load_or_train_classifier(self.cache_dir)
        self._fingerprint = sha256_module(self.classifier, f"digits-classifier-v{CLASSIFIER_VERSION}")

    def extract(self, images: np.ndarray) -> Extracted:
        return Extracted(self.classifier.features(images), predicted=self.classifier.predict(images))

    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "feature_dim": int(self.classifier.feature_dim), "fingerprint": self._fingerprint,
                "layer": "penultimate (after ReLU)", "classifier": classifier_info(self.cache_dir)}

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def judge_facts(self) -> dict[str, Any]:
        return classifier_info(self.cache_dir)


class FolderFeatures(FeatureExtractor):
    """The folder protocol's judge (trained on a part of the folder on first use, cached) and the rest as reference."""

    name = "folder"

    def __init__(self, split: FolderSplit, cache_dir: str | Path):
        self.split = split
        self.channels = split.channels
        self.judge, self.facts = load_or_train_judge(split, cache_dir)
        self._fingerprint = sha256_module(self.judge, f"folder-judge-v{JUDGE_VERSION}")

    def extract(self, images: np.ndarray) -> Extracted:
        return Extracted(self.judge.features(images), predicted=self.judge.predict(images))

    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "feature_dim": int(self.judge.feature_dim), "fingerprint": self._fingerprint,
                "layer": "penultimate (after ReLU)", "judge": self.facts, "folder": self.split.description}

    @property
    def num_classes(self) -> int:
        return self.split.num_classes

    @property
    def judge_facts(self) -> dict[str, Any]:
        return self.facts

    def own_reference(self) -> ReferenceSource:
        rest = ~self.split.judge_mask
        return ArrayReference(self.split.images[rest], "folder-rest", self.split.fingerprint(),
                              {"path": self.split.description["root"], "judge_part": int(self.split.judge_mask.sum())})


class InceptionFeatures(FeatureExtractor):
    """torch-fidelity's FID Inception-v3 from a local file, run on ``device`` in batches of ``batch_size``."""

    name = "inception"
    channels = 3
    preprocessing = "tf1-bilinear-299, (x-128)/128"

    def __init__(self, weights_path: str | Path, device: str | torch.device = "cpu", batch_size: int = 100):
        self.path = Path(weights_path)
        self.model, self.sha256 = load_fid_inception(self.path)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.batch_size = batch_size
        self._fingerprint = sha256_parts(f"{self.sha256}|{self.preprocessing}", length=16)

    @torch.no_grad()
    def extract(self, images: np.ndarray) -> Extracted:
        x = images_to_uint8_rgb(images)
        feats, logits = [], []
        for start in range(0, x.shape[0], self.batch_size):
            f, lg = self.model(x[start : start + self.batch_size].to(self.device))
            feats.append(f.double().cpu())
            logits.append(lg.double().cpu())
        empty = torch.zeros((0, FEATURE_DIM), dtype=torch.float64)
        return Extracted(torch.cat(feats or [empty]).numpy(),
                         logits=torch.cat(logits or [torch.zeros((0, LOGITS_DIM), dtype=torch.float64)]).numpy())

    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "feature_dim": FEATURE_DIM, "fingerprint": self._fingerprint,
                "weights": str(self.path), "weights_sha256": self.sha256,
                "torch_fidelity_weights": self.sha256.startswith(INCEPTION_SHA256_PREFIX),
                "preprocessing": self.preprocessing, "layer": "2048-d pool (FID, P/R); unbiased 1008 logits (IS)"}
