"""SHA-256 digests in one place: of files, tensors, modules, and sequences of byte / string / array parts.

Every fingerprint the project writes down (cache folder names, shard manifests, checkpoint identities, evaluation
reports) is computed here. The byte streams fed to SHA-256 are fixed: digests made by earlier versions keep
matching, so caches and manifests already on disk stay valid (the tests pin a few of them).

A *part* is ``bytes`` (fed as is), ``str`` (fed as UTF-8) or a numpy array (fed as its C-order bytes, the same
bytes as ``array.tobytes()``). ``length`` cuts the hex digest to its first ``length`` characters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["Part", "sha256_parts", "sha256_iter", "sha256_lines", "sha256_file", "sha256_tensor", "sha256_module"]

Part = bytes | str | np.ndarray


def _as_buffer(part: Part) -> bytes | memoryview:
    if isinstance(part, str):
        return part.encode("utf-8", "surrogateescape")  # a file name that is not UTF-8: its own bytes
    if isinstance(part, np.ndarray):
        return memoryview(np.ascontiguousarray(part)).cast("B")  # C-order bytes, no copy when already contiguous
    if isinstance(part, (bytes, bytearray, memoryview)):
        return part
    raise TypeError(f"cannot hash a {type(part).__name__}; pass bytes, str or a numpy array")


def _cut(digest: str, length: int | None) -> str:
    return digest if length is None else digest[:length]


def sha256_iter(parts: Iterable[Part], length: int | None = None) -> str:
    """Hex SHA-256 of ``parts`` fed one after another (the digest of their concatenation)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(_as_buffer(part))
    return _cut(h.hexdigest(), length)


def sha256_parts(*parts: Part, length: int | None = None) -> str:
    """``sha256_parts(a, b)`` is the hex SHA-256 of ``a`` then ``b`` (see :func:`sha256_iter`)."""
    return sha256_iter(parts, length)


def sha256_lines(lines: Iterable[str], prefix: Part = b"", length: int | None = None) -> str:
    """Hex SHA-256 of ``prefix`` then every line followed by ``"\\n"``."""
    return sha256_iter(_with_newlines(prefix, lines), length)


def _with_newlines(prefix: Part, lines: Iterable[str]) -> Iterator[Part]:
    yield prefix
    for line in lines:
        yield line
        yield b"\n"


def sha256_file(path: str | Path, chunk: int = 1 << 22, length: int | None = None) -> str:
    """Hex SHA-256 of a file's bytes, read ``chunk`` bytes at a time (the full 64 digits by default)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return _cut(h.hexdigest(), length)


def _float32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


def sha256_tensor(t: torch.Tensor, length: int | None = 16) -> str:
    """Hex SHA-256 of a tensor's contents as float32 (whatever its dtype, device or strides); 16 digits by default."""
    return sha256_parts(_float32(t), length=length)


def sha256_module(module: nn.Module, extra: str = "", length: int | None = 16) -> str:
    """Hex SHA-256 of ``extra`` then, per state-dict entry, its name, ``str(shape tuple)`` and float32 contents."""

    def parts() -> Iterator[Part]:
        yield extra
        for name, tensor in module.state_dict().items():
            yield name
            yield str(tuple(tensor.shape))
            yield _float32(tensor)  # one tensor's float32 copy alive at a time

    return sha256_iter(parts(), length)
