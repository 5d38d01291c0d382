"""Token shards: codes + labels on disk with a manifest naming the tokenizer that made them.

Layout of a shard folder::

    manifest.json   format, tokenizer identity, latent shape, count, dtype, preprocessing, source
    codes.npy       (N, h, w) smallest unsigned integer type that holds K
    labels.npy      (N,) int64 class ids
    codebook.npy    (K, d) float32 codebook E as the flow sees it (checked against the manifest's hash)

Reading (and training on) shards needs no tokenizer: ``codes.npy`` is memory-mapped, so ImageNet-sized shards
(1.28M x 32 x 32 uint16 = 2.6 GB) are never loaded into RAM whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from purrception.errors import PurrError
from purrception.io import atomic_save_json, atomic_write, load_json, sha256_of_tensor
from purrception.tokenizers.base import TokenizerIdentity

__all__ = ["TokenShards", "write_token_shards", "codes_dtype_for", "check_same_tokenizer"]

FORMAT = "purrception-shards"
MANIFEST = "manifest.json"


def codes_dtype_for(codebook_size: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds indices ``0 .. K-1``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise PurrError(f"codebook size {codebook_size} is too large for uint32 codes")


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def write_token_shards(folder: str | Path, codes: np.ndarray, labels: np.ndarray, codebook: np.ndarray,
                       identity: TokenizerIdentity, num_classes: int, source: dict[str, Any],
                       preprocessing: dict[str, Any]) -> Path:
    """Write codes ``(N, h, w)`` and labels ``(N,)``; the manifest is written last and marks completion."""
    folder = Path(folder)
    codes = np.asarray(codes)
    labels = np.asarray(labels, dtype=np.int64)
    if codes.ndim != 3 or labels.shape != (codes.shape[0],):
        raise PurrError(f"codes must be (N, h, w) and labels (N,); got {codes.shape} and {labels.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= identity.codebook_size):
        raise PurrError(f"codes outside [0, {identity.codebook_size}) for tokenizer {identity.describe()}")
    folder.mkdir(parents=True, exist_ok=True)
    _save_npy(folder / "codes.npy", codes.astype(codes_dtype_for(identity.codebook_size)))
    _save_npy(folder / "labels.npy", labels)
    _save_npy(folder / "codebook.npy", np.asarray(codebook, dtype=np.float32))
    atomic_save_json(folder / MANIFEST, {
        "format": FORMAT,
        "version": 1,
        "tokenizer": identity.to_dict(),
        "num_items": int(codes.shape[0]),
        "latent_shape": list(codes.shape[1:]),
        "codes_dtype": str(codes_dtype_for(identity.codebook_size)),
        "num_classes": int(num_classes),
        "source": source,
        "preprocessing": preprocessing,
    })
    return folder


@dataclass
class TokenShards:
    """A shard folder opened for reading; ``codes`` is a read-only memory map."""

    folder: Path
    manifest: dict[str, Any]
    codes: np.ndarray
    labels: np.ndarray
    codebook: np.ndarray

    @classmethod
    def open(cls, folder: str | Path) -> "TokenShards":
        folder = Path(folder)
        if not folder.is_dir():
            raise PurrError(f"token shards not found: {folder} (make them with `purr encode`)")
        manifest = load_json(folder / MANIFEST, "shard manifest")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise PurrError(f"{folder} is not a purrception shard folder (bad manifest); re-run `purr encode`")
        try:
            codes = np.load(folder / "codes.npy", mmap_mode="r")
            labels = np.load(folder / "labels.npy")
            codebook = np.load(folder / "codebook.npy")
        except (OSError, ValueError) as err:
            raise PurrError(f"cannot read shards in {folder}: {err}; re-run `purr encode`") from None
        n = int(manifest["num_items"])
        if codes.shape[0] != n or labels.shape != (n,) or list(codes.shape[1:]) != list(manifest["latent_shape"]):
            raise PurrError(f"shards in {folder} are inconsistent with their manifest (truncated?); re-run `purr encode`")
        shards = cls(folder, manifest, codes, labels, codebook)
        found = sha256_of_tensor(torch.from_numpy(codebook))
        if found != shards.identity.codebook_sha256:
            raise PurrError(f"codebook.npy in {folder} does not match its manifest's hash; re-run `purr encode`")
        return shards

    @property
    def identity(self) -> TokenizerIdentity:
        return TokenizerIdentity.from_dict(self.manifest["tokenizer"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def latent_shape(self) -> tuple[int, int]:
        h, w = self.manifest["latent_shape"]
        return int(h), int(w)

    def __len__(self) -> int:
        return int(self.codes.shape[0])


def check_same_tokenizer(expected: TokenizerIdentity, found: TokenizerIdentity, where: str) -> None:
    """Refuse codes made by a different tokenizer than the one a checkpoint was trained with."""
    if expected != found:
        raise PurrError(f"{where} was made by tokenizer {found.describe()}, "
                        f"but this run uses {expected.describe()}; re-encode with the matching tokenizer")
