"""The embedded emoji (``data.emoji``, the ``colour`` extra) as a cached image folder, its tokenizer and its shards.

The "your own images" route run on a folder the project makes itself: the emoji are exported once as a 32x32 RGB
class-folder image folder, a tokenizer is trained on it (``train_tokenizer_on_folder``) and it is encoded to token
shards (``encode_images``). Every stage is cached under a folder keyed by the images, so ``demo`` and ``study``
share them; the folder is also what the folder evaluation protocol takes as its reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from purrception.data.embedded_shards import cached_tokenizer
from purrception.data.shards import MANIFEST, TokenShards
from purrception.hashing import sha256_parts
from purrception.tokenizers.recipe import TokenizerRecipe
from purrception.tokenizers.store import load_tokenizer

__all__ = ["EMOJI_SIZE", "EmojiFolder", "ensure_emoji_folder", "ensure_emoji_tokenizer", "ensure_emoji_shards"]

log = logging.getLogger(__name__)

#: the image side the emoji are exported at (sized for 2 CPU cores)
EMOJI_SIZE = 32


@dataclass(frozen=True)
class EmojiFolder:
    """The exported emoji: ``images`` (one sub-folder per category) inside the cache folder ``root``."""

    root: Path
    images: Path
    class_names: tuple[str, ...]


def ensure_emoji_folder(cache_dir: Path) -> EmojiFolder:
    """The emoji exported as a ``EMOJI_SIZE`` RGB class-folder image folder (once; reused after)."""
    from purrception.data.emoji import load_embedded_emoji
    from purrception.data.export_folder import export_image_folder

    data = load_embedded_emoji()
    root = Path(cache_dir) / f"emoji-{EMOJI_SIZE}-{sha256_parts(data.images, data.labels, length=12)}"
    images = root / "images"
    if not images.is_dir():
        log.info("exporting the emoji as a %dx%d image folder (once; %s)", EMOJI_SIZE, EMOJI_SIZE, images)
        export_image_folder(data.images, data.labels, data.class_names, images, size=EMOJI_SIZE)
    return EmojiFolder(root, images, tuple(data.class_names))


def ensure_emoji_tokenizer(folder: EmojiFolder, steps: int | None = None, progress: bool = True,
                           device: str = "cpu", recipe: TokenizerRecipe | None = None) -> Path:
    """The tokenizer of the exported emoji, at ``EMOJI_SIZE`` RGB: trained once on the folder, then reused.

    Args:
        folder: the exported emoji.
        steps: training steps; ``None`` (or 0): the recipe's.
        progress: show progress bars.
        device: where to train.
        recipe: the tokenizer to make; ``None``: an image folder's (``FOLDER_RECIPE``).
    """
    from purrception.data.tokenizer_folder import FOLDER_RECIPE, train_tokenizer_on_folder

    recipe = (recipe or FOLDER_RECIPE).with_overrides(image_size=EMOJI_SIZE, image_channels=3)
    if steps:
        recipe = recipe.with_train(steps=steps)
    model_cfg, train_cfg = recipe.model_config(), recipe.train
    return cached_tokenizer(folder.root, recipe, lambda out: train_tokenizer_on_folder(
        folder.images, out, model_cfg, train_cfg, resolution=EMOJI_SIZE, channels=3, progress=progress,
        device=device))


def ensure_emoji_shards(folder: EmojiFolder, tokenizer_dir: Path, progress: bool = True) -> TokenShards:
    """Token shards of the exported emoji made by the tokenizer at ``tokenizer_dir`` (encoded once, cached)."""
    from purrception.data.encode import EncodeOptions, encode_images

    shard_dir = folder.root / f"shards-{load_tokenizer(tokenizer_dir).identity().codebook_sha256}"
    if not (shard_dir / MANIFEST).is_file():
        encode_images(tokenizer_dir, shard_dir, images=folder.images,
                      options=EncodeOptions(progress=progress, tokenizer_path=str(tokenizer_dir)))
    return TokenShards.open(shard_dir)
