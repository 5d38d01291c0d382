"""Writing generated images: PNG grids and the ``samples.npz`` exchange format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from purrception.io import atomic_write

__all__ = ["image_grid", "save_png", "save_samples_npz", "save_sample_folder"]


def image_grid(images: np.ndarray, rows: int, pad: int = 2, pad_value: int = 0) -> np.ndarray:
    """uint8 ``(N, H, W[, C])`` with ``N = rows * cols`` -> one ``(rows*(H+pad)+pad, ...)`` image, row-major."""
    n, h, w = images.shape[:3]
    cols = -(-n // rows)
    channels = images.shape[3:] if images.ndim == 4 else ()
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, *channels), pad_value, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = images[k]
    return grid


def save_png(path: str | Path, image: np.ndarray, scale: int = 1) -> None:
    """Save a uint8 image (grey or RGB) as PNG, optionally upscaled by ``scale`` (nearest), atomically."""
    img = Image.fromarray(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def save_samples_npz(path: str | Path, images: np.ndarray, labels: np.ndarray, **extra: np.ndarray) -> None:
    """``images`` uint8 ``(N, H, W[, C])`` and ``labels`` (requested class of each) plus any extra arrays."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, images=np.asarray(images, dtype=np.uint8), labels=np.asarray(labels, dtype=np.int64), **extra)

    atomic_write(path, write)


def save_sample_folder(folder: str | Path, images: np.ndarray, labels: np.ndarray) -> None:
    """What ``purr sample`` writes for ``images``: ``NNNNN_classY.png`` per image, ``grid.png`` (one row per
    class, 2x) and ``samples.npz``, into an existing ``folder``."""
    folder = Path(folder)
    for i, (image, label) in enumerate(zip(images, labels)):
        save_png(folder / f"{i:05d}_class{label}.png", image)
    order = np.argsort(labels, kind="stable")
    save_png(folder / "grid.png", image_grid(images[order], rows=len(np.unique(labels))), scale=2)
    save_samples_npz(folder / "samples.npz", images, labels)
