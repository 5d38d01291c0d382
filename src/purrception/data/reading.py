"""Reading an :class:`~purrception.data.images.ImageSource` through the one preprocessing rule, in batches.

Both ``purr encode`` (:mod:`purrception.data.encode`) and :func:`read_images` (e.g. for training a tokenizer on a
folder) read through :func:`read_batches`, so both preprocess with :func:`~purrception.data.images.prepare_image`,
log each distinct conversion once (:class:`~purrception.data.images.ConversionLog`) and stop at an unreadable image
with one line naming the file. DataLoader workers are optional; they return errors and image origins as data, and
the main process raises and logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from purrception.data.images import ConversionLog, ImageOrigin, ImageSource, image_origin, prepare_image
from purrception.errors import PurrError

__all__ = ["MAX_READ_BYTES", "read_batches", "read_images"]

#: The most bytes :func:`read_images` allocates by default (8 GiB).
MAX_READ_BYTES = 8 * 2**30

_READ_BATCH = 64


@dataclass(frozen=True)
class _Unreadable:
    """An image that could not be read, carried out of a DataLoader worker as data.

    torch re-raises a worker's exception as a new one whose message is the worker's whole traceback; returning
    the error instead lets the main process raise the one-line :class:`PurrError` the reader made.
    """

    message: str


_Item = tuple[np.ndarray, int, ImageOrigin]


class _Images(Dataset):
    """Item ``i``: the preprocessed uint8 image, its label and its :class:`ImageOrigin` (or an :class:`_Unreadable`)."""

    def __init__(self, source: ImageSource, size: int, channels: int):
        self.source, self.size, self.channels = source, size, channels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> _Item | _Unreadable:
        try:
            img = self.source.load(index)
        except PurrError as err:
            return _Unreadable(str(err))
        return prepare_image(img, self.size, self.channels), int(self.source.labels[index]), image_origin(img)


def _collate(items: list[_Item | _Unreadable]) -> tuple[np.ndarray, np.ndarray, list[ImageOrigin]] | _Unreadable:
    """``(images, labels, origins)`` of the batch, or the first :class:`_Unreadable` in it."""
    for item in items:
        if isinstance(item, _Unreadable):
            return item
    images, labels, origins = zip(*items)
    return np.stack(images), np.array(labels, dtype=np.int64), list(origins)


def read_batches(source: ImageSource, size: int, channels: int, batches: list[list[int]], *,
                 workers: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images, labels)`` for each list of indices in ``batches``, in order.

    Args:
        source: the images.
        size, channels: the target of :func:`~purrception.data.images.prepare_image` (``channels`` 1 or 3).
        batches: lists of item indices.
        workers: DataLoader worker processes (0: read in this process).

    Yields:
        uint8 ``(B, size, size)`` or ``(B, size, size, 3)`` images and their int64 ``(B,)`` labels.

    Raises:
        PurrError: an image cannot be read (one line naming the file).
    """
    conversions = ConversionLog(size, channels)
    loader = DataLoader(_Images(source, size, channels), batch_sampler=batches, num_workers=workers,
                        collate_fn=_collate)
    for batch in loader:
        if isinstance(batch, _Unreadable):
            raise PurrError(batch.message)
        images, labels, origins = batch
        conversions.note(origins)
        yield images, labels


def read_images(source: ImageSource, size: int, channels: int, workers: int = 0, progress: bool = False, *,
                max_bytes: int = MAX_READ_BYTES) -> np.ndarray:
    """Every image of ``source``, preprocessed as ``purr encode`` does, in one uint8 array.

    Args:
        source: the images (e.g. :func:`~purrception.data.images.folder_source`); labels are not returned.
        size: the side of the square images.
        channels: 1 (grey) or 3 (RGB).
        workers: DataLoader worker processes (0: read in this process).
        progress: show a progress bar.
        max_bytes: refuse to read more than this many bytes of pixels.

    Returns:
        ``(N, size, size)`` for one channel, ``(N, size, size, 3)`` for three, in the source's order.

    Raises:
        PurrError: the images would take more than ``max_bytes``, ``channels`` is not 1 or 3, or an image cannot
            be read.
    """
    if channels not in (1, 3):
        raise PurrError(f"`channels` must be 1 or 3, got {channels}")
    if size < 1:
        raise PurrError(f"`size` must be positive, got {size}")
    n = len(source)
    need = n * size * size * channels
    if need > max_bytes:
        raise PurrError(f"reading {n} images at {size}x{size}x{channels} needs {need / 2**30:.1f} GiB, over the "
                        f"{max_bytes / 2**30:.1f} GiB limit; use a smaller `resolution` or a subset of the images")
    out = np.empty((n, size, size) if channels == 1 else (n, size, size, 3), dtype=np.uint8)
    batches = [list(range(s, min(s + _READ_BATCH, n))) for s in range(0, n, _READ_BATCH)]
    with tqdm(total=n, unit="img", desc="read images", disable=not progress, dynamic_ncols=True) as bar:
        start = 0
        for images, _ in read_batches(source, size, channels, batches, workers=workers):
            out[start : start + len(images)] = images
            start += len(images)
            bar.update(len(images))
    return out
