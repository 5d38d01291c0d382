"""Pixels in one place: uint8 images <-> float tensors in ``[-1, 1]``, and which files count as images.

Every module that reads, writes, encodes or compares images goes through these, so a folder that encodes is
also a folder that evaluates, and a decoded sample is quantised the same way everywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

__all__ = ["IMAGE_SUFFIXES", "is_image_file", "list_image_files", "scan_image_files", "images_to_tensor",
           "tensor_to_images"]

log = logging.getLogger(__name__)

#: File suffixes (lower case) read as images by every folder reader.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


def is_image_file(path: Path) -> bool:
    """A regular file whose suffix is in :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def scan_image_files(folder: Path, within: Path | None = None) -> tuple[list[Path], list[Path]]:
    """The image files under ``folder`` (recursively, sorted by path) and the other regular files found there.

    The second list is what a folder reader skips (``notes.txt``, ``.DS_Store``, ``Thumbs.db``, ...), for it to say
    so. Nothing outside ``within`` (default: ``folder``) is ever listed: a symbolic link whose target lies outside it
    is in neither list (one warning counts them), and linked folders are not descended into, so a link loop ends
    nowhere.
    """
    root = Path(within if within is not None else folder).resolve()
    images, others, escaping = [], [], []
    for p in sorted(Path(folder).rglob("*")):
        if p.is_symlink() and not p.resolve().is_relative_to(root):
            escaping.append(p)
        elif is_image_file(p):
            images.append(p)
        elif p.is_file():
            others.append(p)
    if escaping:
        log.warning("%d symbolic link(s) under %s point outside %s and are not followed (e.g. %r); copy the files "
                    "in, or read the folder they live in", len(escaping), folder, root, escaping[0].name)
    return images, others


def list_image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder``, recursively, sorted by path."""
    return scan_image_files(folder)[0]


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W)`` or ``(N, H, W, C)`` -> float ``(N, C, H, W)`` in ``[-1, 1]``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float ``(N, C, H, W)`` in ``[-1, 1]`` -> uint8 ``(N, H, W)`` (one channel) or ``(N, H, W, C)``."""
    u8 = ((x.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu()
    return (u8[:, 0] if u8.shape[1] == 1 else u8.permute(0, 2, 3, 1)).numpy()
