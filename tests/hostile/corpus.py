"""Generators of hostile files, made at test time (no binaries are committed): :func:`png_claiming` writes a
valid PNG header over almost no data, :func:`bomb_png` a real image whose pixel count is past Pillow's safety limit
but whose file is tiny, :func:`non_utf8_name` a file whose name is not UTF-8."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

__all__ = ["png_bytes", "png_claiming", "bomb_png", "snapshot", "non_utf8_name"]


def png_bytes(size: tuple[int, int] = (12, 12), mode: str = "L", value: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` 8-bit grey pixels, followed by almost no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


def bomb_png(side: int = 10_000) -> bytes:
    """A complete 1-bit PNG of ``side x side`` pixels (100 M by default, past Pillow's 89 M warning limit) that
    compresses to about 12 kB: decoding it would take ``side**2`` bytes once converted to grey."""
    row = b"\0" + b"\0" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file under ``folder`` with its bytes (None when the folder does not exist)."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def non_utf8_name(folder: Path, stem: bytes, data: bytes) -> Path:
    """Write ``data`` under a file name that is not UTF-8 (``stem`` + ``.png``); skip where the filesystem refuses."""
    name = os.fsencode(folder) + b"/" + stem + b".png"
    try:
        with open(name, "wb") as f:
            f.write(data)
    except (OSError, ValueError) as err:
        pytest.skip(f"this filesystem refuses non-UTF-8 file names ({err})")
    return Path(os.fsdecode(name))
