"""Training a VQ tokenizer on an image folder (``purr tokenizer train --images DIR``).

The folder is read as ``purr encode`` reads it (class sub-folders, or flat + labels file) and with the same
preprocessing, at the resolution and channels the tokenizer will have, so that ``purr encode`` on the same folder
later sees exactly the pixels the tokenizer trained on. A class-balanced share of the folder is held out for the
reconstruction metrics recorded in the tokenizer's ``config.json``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from purrception.data.images import GREY_MODES, ImageSource, folder_source
from purrception.data.reading import read_images
from purrception.errors import PurrError
from purrception.splits import balanced_holdout
from purrception.tokenizers.base import TrainableTokenizer
from purrception.tokenizers.recipe import TokenizerRecipe
from purrception.tokenizers.registry import kind_for_config
from purrception.tokenizers.train import TokenizerTrainConfig, fit_tokenizer

__all__ = ["infer_image_format", "train_tokenizer_on_folder", "HELDOUT_FRACTION", "HELDOUT_MAX", "FOLDER_RECIPE",
           "FOLDER_DEFAULTS", "FOLDER_STEPS"]

log = logging.getLogger(__name__)

#: share of every class held out for the tokenizer's metrics, and the most images held out in all
HELDOUT_FRACTION, HELDOUT_MAX = 0.1, 1000
#: the tokenizer for an image folder, sized for 2 CPU cores at 32x32: ``conv-vq`` with K = 512 and width 16, 2,000
#: steps of 16 images at lr 3e-3 (small batches reach a better reconstruction per image seen on a CPU, where a step's
#: cost is proportional to its images; BENCHMARKS.md, "CPU budget"). The resolution and channels come from the
#: folder; the embedded digits use ``DIGITS_RECIPE``.
FOLDER_RECIPE = TokenizerRecipe("conv-vq", {"codebook_size": 512, "width": 16},
                                TokenizerTrainConfig(steps=2000, batch_size=16, lr=3e-3))
#: :data:`FOLDER_RECIPE`'s config overrides and steps, by their earlier names
FOLDER_DEFAULTS: dict[str, Any] = dict(FOLDER_RECIPE.overrides)
FOLDER_STEPS = FOLDER_RECIPE.train.steps


def infer_image_format(source: ImageSource, downsample: int, sample: int = 256,
                       size_range: tuple[int, int] = TrainableTokenizer.image_size_range) -> tuple[int, int]:
    """A resolution and channel count that fit the folder: ``(R, C)``.

    ``R`` is the most common shorter side among up to ``sample`` images spread over the folder, rounded down to a
    multiple of ``downsample`` and kept within the tokenizer's ``size_range`` (inclusive); ``C`` is 1 when every
    sampled image is grey, else 3. Only image headers are read.
    """
    step = max(1, len(source) // sample)
    sides, grey = Counter(), True
    for i in range(0, len(source), step):
        size, mode = _header(source, i)
        sides[min(size)] += 1
        grey &= mode in GREY_MODES
    side = sides.most_common(1)[0][0]
    size = max(size_range[0], min(size_range[1], side)) // downsample * downsample
    return size, 1 if grey else 3


def _header(source: ImageSource, index: int) -> tuple[tuple[int, int], str]:
    """``((width, height), mode)`` of an image, reading only its header where it is a file."""
    if source.files is None:
        img = source.load(index)
        return img.size, img.mode
    path = source.files[index]
    try:
        with Image.open(path) as img:
            return img.size, img.mode
    except (OSError, ValueError) as err:
        raise PurrError(f"cannot read image {path}: {err}; remove or fix the file") from None


def train_tokenizer_on_folder(images: str | Path, out: str | Path, model_config: Any,
                              train_config: TokenizerTrainConfig, *, labels_file: str | Path | None = None,
                              resolution: int | None = None, channels: int | None = None, workers: int = 0,
                              progress: bool = True, device: str = "cpu") -> Path:
    """Read the folder ``images``, hold out a class-balanced share, and train a tokenizer into ``out``.

    Args:
        images: the image folder.
        out: the tokenizer folder to create (or an unfinished run there to resume).
        model_config: the architecture, a config of any trainable kind (e.g. ``FOLDER_RECIPE.model_config()``); its
            ``image_size`` / ``image_channels`` are replaced by ``resolution`` / ``channels``.
        train_config: the recipe.
        labels_file: ``<path>,<label>`` lines for a flat folder.
        resolution: the tokenizer's image side; ``None`` infers it from the folder (:func:`infer_image_format`).
        channels: 1 or 3; ``None`` infers it from the folder.
        workers: image-reading worker processes.
        progress: show progress bars.
        device: where to train.
    """
    kind = kind_for_config(model_config)
    source = folder_source(images, labels_file)
    inferred = (infer_image_format(source, model_config.downsample, size_range=kind.model_class.image_size_range)
                if None in (resolution, channels) else None)
    if inferred is not None:
        log.info("from the folder's images: resolution %d, %d channel(s) (set --resolution / --channels to choose)",
                 *inferred)
    size = resolution if resolution is not None else inferred[0]
    chans = channels if channels is not None else inferred[1]
    model_config = replace(model_config, image_size=size, image_channels=chans)
    model_config.check()
    pixels = read_images(source, size, chans, workers=workers, progress=progress)
    heldout = balanced_holdout(source.labels, HELDOUT_FRACTION, seed=train_config.seed, max_total=HELDOUT_MAX)
    record: dict[str, Any] = {key: source.description[key] for key in
                              ("type", "layout", "root", "num_images", "class_names", "fingerprint")}
    record["heldout_images"] = int(heldout.sum())
    log.info("training on %d images, measuring on %d held-out ones", int((~heldout).sum()), int(heldout.sum()))
    return fit_tokenizer(pixels[~heldout], pixels[heldout], out, model_config, train_config, record=record,
                         progress=progress, device=device)

