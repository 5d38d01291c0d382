"""Encoding arrays of images with a tokenizer, and the embedded data set straight into token shards.

The embedded tokenizer and its shards are made once and cached (``purrception.io.default_cache_dir``), keyed by
their configuration, so that ``demo``, ``train`` and ``study`` share them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from purrception.data.embedded import NUM_CLASSES, load_embedded_mnist
from purrception.data.shards import TokenShards, write_token_shards
from purrception.pixels import images_to_tensor
from purrception.tokenizers.base import VQTokenizer
from purrception.tokenizers.recipe import TokenizerRecipe
from purrception.tokenizers.store import CONFIG_NAME, load_tokenizer
from purrception.tokenizers.train import TokenizerTrainConfig, fit_tokenizer

__all__ = ["encode_array", "write_embedded_shards", "cached_tokenizer", "ensure_embedded_tokenizer",
           "ensure_embedded_shards", "DIGITS_RECIPE"]

log = logging.getLogger(__name__)

#: the embedded digits' tokenizer: ``conv-vq`` at its defaults (28x28 grey -> 7x7 codes, K = 128, d = 4, width 16),
#: 1,500 steps of 8 images at lr 3e-3 (small batches: see ``FOLDER_RECIPE``)
DIGITS_RECIPE = TokenizerRecipe("conv-vq", {"image_size": 28, "image_channels": 1},
                                TokenizerTrainConfig(steps=1500, batch_size=8, lr=3e-3))


@torch.no_grad()
def encode_array(tokenizer: VQTokenizer, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """uint8 images ``(N, H, W[, C])`` -> codes ``(N, h, w)`` int64, batch by batch."""
    chunks = [tokenizer.encode(images_to_tensor(images[i : i + batch_size])).cpu().numpy()
              for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks)


def write_embedded_shards(tokenizer: VQTokenizer, split: str, folder: str | Path,
                          tokenizer_path: str | None) -> TokenShards:
    """Encode the embedded MNIST ``split`` and write it as token shards at ``folder``."""
    data = load_embedded_mnist(split)
    codes = encode_array(tokenizer, data.images)
    write_token_shards(folder, codes, data.labels, tokenizer.codebook.cpu().numpy(), tokenizer.identity(),
                       NUM_CLASSES, source={"dataset": "embedded-mnist", "split": split,
                                            "tokenizer_path": tokenizer_path},
                       preprocessing={"resolution": tokenizer.image_size, "scale": "[-1, 1]", "flip": False})
    return TokenShards.open(folder)


def cached_tokenizer(cache_dir: Path, recipe: TokenizerRecipe, fit: Callable[[Path], Path]) -> Path:
    """The tokenizer folder of ``recipe`` under ``cache_dir``: reused once finished, else made by ``fit(folder)``
    (which resumes an interrupted first training there).

    Args:
        cache_dir: where cached tokenizers live.
        recipe: the kind, architecture and training config; the folder is ``tokenizer-<recipe.cache_key()>``.
        fit: trains the recipe's tokenizer into the folder it is given and returns that folder.
    """
    folder = Path(cache_dir) / f"tokenizer-{recipe.cache_key()}"
    if (folder / CONFIG_NAME).is_file():
        log.info("reusing cached tokenizer %s", folder)
        return folder
    log.info("training a %s tokenizer (%d steps; cached in %s)", recipe.kind, recipe.train.steps, folder)
    return fit(folder)


def ensure_embedded_tokenizer(cache_dir: Path, steps: int | None = None, progress: bool = True, device: str = "cpu",
                              recipe: TokenizerRecipe = DIGITS_RECIPE) -> Path:
    """The embedded digits' tokenizer: trained on the train split once (resuming an interrupted first training),
    measured on the held-out split, then reused.

    Args:
        cache_dir: where cached tokenizers live.
        steps: training steps; ``None``: the recipe's.
        progress: show a progress bar.
        device: where to train.
        recipe: the tokenizer to make (:data:`DIGITS_RECIPE`; its config must take 28x28 grey images).
    """
    if steps is not None:
        recipe = recipe.with_train(steps=steps)
    model_cfg, train_cfg = recipe.model_config(), recipe.train
    return cached_tokenizer(cache_dir, recipe, lambda folder: fit_tokenizer(
        load_embedded_mnist("train").images, load_embedded_mnist("heldout").images, folder, model_cfg, train_cfg,
        record={"type": "embedded-mnist", "split": "train"}, progress=progress, device=device))


def ensure_embedded_shards(cache_dir: Path, tokenizer_dir: Path, split: str = "train") -> TokenShards:
    """Token shards of an embedded split made by the tokenizer at ``tokenizer_dir`` (encoded once, cached)."""
    tokenizer = load_tokenizer(tokenizer_dir)
    folder = cache_dir / f"shards-{tokenizer.identity().codebook_sha256}-{split}"
    if (folder / "manifest.json").is_file():
        return TokenShards.open(folder)
    log.info("encoding the embedded %s split into %s", split, folder)
    return write_embedded_shards(tokenizer, split, folder, str(tokenizer_dir))
