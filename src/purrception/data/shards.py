"""Token shards: codes + labels on disk with a manifest naming the tokenizer that made them.

Layout of a shard folder::

    manifest.json   format, tokenizer identity, latent shape, count, dtype, preprocessing, source
    codes.npy       (N, h, w) smallest unsigned integer type that holds K
    labels.npy      (N,) int64 class ids
    codebook.npy    (K, d) float32 codebook E as the flow sees it (checked against the manifest's hash)

Reading (and training on) shards needs no tokenizer: ``codes.npy`` is memory-mapped, so ImageNet-sized shards
(1.28M x 32 x 32 uint16 = 2.6 GB) are never loaded into RAM whole.

Large encodes are written in *parts* (``<folder>/.parts/part-NNNNNN.npz``, each written atomically, by one rank)
and merged by :func:`merge_token_parts`, which streams them into ``codes.npy`` through a temporary file and writes
the manifest last: a folder with a manifest is always complete, and a crash at any point leaves either the parts
(to resume from) or the finished shards.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from purrception.errors import PurrError
from purrception.formats import read_version
from purrception.hashing import sha256_tensor
from purrception.io import atomic_save_json, atomic_write, load_json, reserve_space
from purrception.tokenizers.base import TokenizerIdentity

__all__ = ["TokenShards", "write_token_shards", "codes_dtype_for", "check_same_tokenizer", "parts_dir", "part_path",
           "write_token_part", "read_token_part", "merge_token_parts"]

log = logging.getLogger(__name__)

FORMAT = "purrception-shards"
MANIFEST = "manifest.json"
#: format version of ``manifest.json`` (read by :func:`purrception.formats.read_version`)
SHARDS_VERSION = 1


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
    _write_manifest(folder, identity, codes.shape[0], codes.shape[1:], num_classes, source, preprocessing)
    return folder


def _write_manifest(folder: Path, identity: TokenizerIdentity, num_items: int, latent_shape: Any, num_classes: int,
                    source: dict[str, Any], preprocessing: dict[str, Any]) -> None:
    atomic_save_json(folder / MANIFEST, {
        "format": FORMAT,
        "version": SHARDS_VERSION,
        "tokenizer": identity.to_dict(),
        "num_items": int(num_items),
        "latent_shape": [int(s) for s in latent_shape],
        "codes_dtype": str(codes_dtype_for(identity.codebook_size)),
        "num_classes": int(num_classes),
        "source": source,
        "preprocessing": preprocessing,
    })


# ---- parts: resumable, multi-rank writing ---------------------------------------------------------------------
PARTS_DIR = ".parts"


def parts_dir(folder: str | Path) -> Path:
    """Where the parts of an unfinished encode into ``folder`` live."""
    return Path(folder) / PARTS_DIR


def part_path(folder: str | Path, index: int) -> Path:
    """File of part ``index`` of the shard folder ``folder``."""
    return parts_dir(folder) / f"part-{index:06d}.npz"


def write_token_part(folder: str | Path, index: int, codes: np.ndarray, labels: np.ndarray,
                     codebook_size: int) -> Path:
    """Atomically write part ``index``: codes ``(n, h, w)`` (as :func:`codes_dtype_for`) and labels ``(n,)``."""
    codes = np.asarray(codes)
    labels = np.asarray(labels, dtype=np.int64)
    if codes.ndim != 3 or labels.shape != (codes.shape[0],):
        raise PurrError(f"part codes must be (n, h, w) and labels (n,); got {codes.shape} and {labels.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise PurrError(f"codes outside [0, {codebook_size}) in part {index}")
    path = part_path(folder, index)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, codes=codes.astype(codes_dtype_for(codebook_size)), labels=labels)

    atomic_write(path, write)
    return path


def read_token_part(folder: str | Path, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes and labels of part ``index``; a damaged part is a :class:`PurrError` naming the file."""
    path = part_path(folder, index)
    try:
        with np.load(path) as data:
            codes, labels = data["codes"], data["labels"]
    except (OSError, ValueError, KeyError) as err:
        raise PurrError(f"cannot read part {path} ({err}); delete it and re-run `purr encode` to redo it") from None
    if codes.ndim != 3 or labels.shape != (codes.shape[0],):
        raise PurrError(f"part {path} is malformed; delete it and re-run `purr encode` to redo it")
    return codes, labels


def merge_token_parts(folder: str | Path, part_sizes: list[int], latent_shape: tuple[int, int],
                      codebook: np.ndarray, identity: TokenizerIdentity, num_classes: int, source: dict[str, Any],
                      preprocessing: dict[str, Any], keep_parts: bool = False) -> Path:
    """Stream parts ``0 .. len(part_sizes)-1`` into one shard folder; the manifest is written last.

    ``codes.npy`` is filled through a memory map of a temporary file and renamed into place, so memory stays
    bounded by one part (plus the int64 labels). The parts are removed once the manifest exists.

    Args:
        folder: the shard folder holding ``.parts/``.
        part_sizes: number of items every part must hold, in order.
        latent_shape: ``(h, w)`` of one item.
        codebook: ``(K, d)`` codebook as the flow sees it.
        identity: the tokenizer that made the codes.
        num_classes: number of classes of the labels.
        source: description of the input data (recorded in the manifest).
        preprocessing: description of the preprocessing (recorded in the manifest).
        keep_parts: leave ``.parts/`` in place.

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    total = int(sum(part_sizes))
    dtype = codes_dtype_for(identity.codebook_size)
    labels = np.empty(total, dtype=np.int64)

    def write_codes(tmp: str) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(total, *latent_shape))
        reserve_space(tmp)  # a full disk is an OSError here, not a SIGBUS while writing through the map
        start = 0
        for index, size in enumerate(part_sizes):
            codes, part_labels = read_token_part(folder, index)
            if codes.shape != (size, *latent_shape):
                raise PurrError(f"part {part_path(folder, index)} holds codes of shape {codes.shape}, expected "
                                f"{(size, *latent_shape)}; delete it and re-run `purr encode`")
            out[start:start + size] = codes
            labels[start:start + size] = part_labels
            start += size
        out.flush()
        del out

    atomic_write(folder / "codes.npy", write_codes)
    _save_npy(folder / "labels.npy", labels)
    _save_npy(folder / "codebook.npy", np.asarray(codebook, dtype=np.float32))
    _write_manifest(folder, identity, total, latent_shape, num_classes, source, preprocessing)
    log.info("merged %d part(s) into %s: %d items, %s codes", len(part_sizes), folder, total, dtype)
    if not keep_parts:
        shutil.rmtree(parts_dir(folder), ignore_errors=True)
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
        read_version(manifest, "shard manifest", folder / MANIFEST, SHARDS_VERSION, "re-run `purr encode`")
        try:
            codes = np.load(folder / "codes.npy", mmap_mode="r")
            labels = np.load(folder / "labels.npy")
            codebook = np.load(folder / "codebook.npy")
        except (OSError, ValueError) as err:
            raise PurrError(f"cannot read shards in {folder}: {err}; re-run `purr encode`") from None
        try:
            n = int(manifest["num_items"])
            consistent = (codes.shape[0] == n and labels.shape == (n,)
                          and list(codes.shape[1:]) == list(manifest["latent_shape"]))
            shards = cls(folder, manifest, codes, labels, codebook)
            identity, num_classes = shards.identity, shards.num_classes
        except (KeyError, TypeError, ValueError) as err:
            raise PurrError(f"the manifest of {folder} is incomplete ({err}); re-run `purr encode`") from None
        if not consistent:
            raise PurrError(f"shards in {folder} are inconsistent with their manifest (truncated?); "
                            "re-run `purr encode`")
        found = sha256_tensor(torch.from_numpy(codebook))
        if found != identity.codebook_sha256:
            raise PurrError(f"codebook.npy in {folder} does not match its manifest's hash; re-run `purr encode`")
        _check_contents(folder, manifest, codes, labels, codebook, identity.codebook_size, num_classes)
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


#: rows of ``codes.npy`` read at a time when checking that every code is below K
_SCAN_ROWS = 1 << 14
#: ``codes.npy`` up to this size is scanned whole when opened; a larger one (ImageNet's is gigabytes, opened by every
#: process) is checked batch by batch as training reads it (``training.data.ShardBatches.get``)
SCAN_MAX_BYTES = 256 << 20


def _check_contents(folder: Path, manifest: dict[str, Any], codes: np.ndarray, labels: np.ndarray,
                    codebook: np.ndarray, k: int, num_classes: int) -> None:
    """Refuse shards whose files disagree with what their manifest says of them: the codebook's size, the codes'
    dtype and range ``[0, K)`` (scanned in blocks unless the dtype holds nothing else or the file is larger than
    :data:`SCAN_MAX_BYTES`), the labels' range."""
    fix = "re-run `purr encode`"
    if codebook.ndim != 2 or codebook.shape[0] != k:
        raise PurrError(f"codebook.npy in {folder} has shape {codebook.shape}, but the manifest's tokenizer has "
                        f"codebook_size {k}; {fix}")
    expected = codes_dtype_for(k)
    if codes.dtype != expected or manifest.get("codes_dtype") != str(expected):
        raise PurrError(f"codes.npy in {folder} is {codes.dtype} and the manifest's codes_dtype says "
                        f"{manifest.get('codes_dtype')!r}; codes of K = {k} are {expected}; {fix}")
    if k <= np.iinfo(expected).max and codes.nbytes <= SCAN_MAX_BYTES:  # the dtype can hold codes >= K
        for start in range(0, len(codes), _SCAN_ROWS):
            block = codes[start:start + _SCAN_ROWS]
            if block.size and int(block.max()) >= k:
                raise PurrError(f"codes.npy in {folder} holds codes outside [0, {k}) (e.g. {int(block.max())}); "
                                f"{fix}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise PurrError(f"labels.npy in {folder} holds class {int(labels.max())} (or a negative one), outside the "
                        f"manifest's num_classes {num_classes}; {fix}")


def check_same_tokenizer(expected: TokenizerIdentity, found: TokenizerIdentity, where: str) -> None:
    """Refuse codes made by a different tokenizer than the one a checkpoint was trained with."""
    if expected != found:
        raise PurrError(f"{where} was made by tokenizer {found.describe()}, "
                        f"but this run uses {expected.describe()}; re-encode with the matching tokenizer")
