"""Encoding arrays of images with a tokenizer, and the embedded data set straight into token shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from purrception.data.embedded import NUM_CLASSES, load_embedded_mnist
from purrception.data.shards import TokenShards, write_token_shards
from purrception.tokenizers.base import VQTokenizer
from purrception.tokenizers.train import images_to_tensor

__all__ = ["encode_array", "write_embedded_shards"]


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
