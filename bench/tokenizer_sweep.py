"""Tokenizer throughput and reconstruction vs codebook size K, downsampling F, dead-code restarts and the lookup
(l2-normalised on the sphere, or Euclidean), on colour data.

Trains ``conv-vq`` tokenizers side by side in one run, on the same images, with the same recipe, and prints one
Markdown table: training images/s, held-out reconstruction MSE (pixels in [-1, 1]) and PSNR, codebook usage and
perplexity. The data is the embedded Twemoji at 32x32 (the ``colour`` extra), or any labelled ``--folder``; 10% of
every class is held out (:func:`purrception.splits.balanced_holdout`).

Usage: ``python bench/tokenizer_sweep.py [--steps 300] [--folder DIR] [--size 32] [--only K=4096 ...]``. Dead-code
restarts can only fire once a never-used row's EMA count has decayed below the threshold (about 350 steps at decay
0.99 and threshold 0.03), so compare restarts on and off with ``--steps 1000`` or more.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch

from purrception.data.tokenizer_folder import FOLDER_DEFAULTS
from purrception.splits import balanced_holdout
from purrception.tokenizers.conv_vq import ConvVQConfig
from purrception.tokenizers.train import TokenizerTrainConfig, evaluate_tokenizer, train_tokenizer

#: (label, overrides of the folder defaults): F at the default K, K at F = 4, restarts off at a large K, and the
#: Euclidean lookup at the default and a large K
VARIANTS = [
    ("F=2 K=512", {"downsample": 2}),
    ("F=4 K=512", {"downsample": 4}),
    ("F=8 K=512", {"downsample": 8}),
    ("F=4 K=64", {"codebook_size": 64}),
    ("F=4 K=4096", {"codebook_size": 4096}),
    ("F=4 K=4096, no restarts", {"codebook_size": 4096, "dead_code_threshold": 0.0}),
    ("F=4 K=512, Euclidean lookup", {"l2_normalize": False}),
    ("F=4 K=4096, Euclidean lookup", {"codebook_size": 4096, "l2_normalize": False}),
]


def load_images(folder: str | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB ``(N, size, size, 3)`` images and their labels, preprocessed as ``purr encode`` does."""
    if folder is None:
        from PIL import Image

        from purrception.data.emoji import load_embedded_emoji
        from purrception.data.images import prepare_image

        data = load_embedded_emoji()
        return np.stack([prepare_image(Image.fromarray(im), size, 3) for im in data.images]), data.labels
    from purrception.data.images import folder_source
    from purrception.data.reading import read_images

    source = folder_source(folder)
    return read_images(source, size, 3), source.labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per tokenizer (default 300)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--folder", default=None, help="a labelled image folder instead of the embedded emoji")
    parser.add_argument("--size", type=int, default=32, help="image side (default 32)")
    parser.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                        help="run only the variants whose label contains one of these texts")
    args = parser.parse_args()
    images, labels = load_images(args.folder, args.size)
    heldout = balanced_holdout(labels, 0.1, seed=0)
    base = replace(ConvVQConfig(**FOLDER_DEFAULTS), image_size=args.size, image_channels=3)
    recipe = TokenizerTrainConfig(steps=args.steps, batch_size=args.batch_size)
    rows = []
    print(f"{len(images)} images at {args.size}x{args.size} RGB ({int(heldout.sum())} held out); "
          f"{args.steps} steps of {args.batch_size}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| tokenizer | latent | images/s | held-out MSE | PSNR dB | codes used | perplexity |")
    print("|---|---|---|---|---|---|---|")
    for label, overrides in VARIANTS:
        if args.only and not any(text in label for text in args.only):
            continue
        config = replace(base, **overrides)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        tok = train_tokenizer(images[~heldout], config, recipe, progress=False)
        seconds = time.perf_counter() - t0
        m = evaluate_tokenizer(tok, images[heldout])
        side = args.size // config.downsample
        row = {"tokenizer": label, "latent": f"{side}x{side}", "images_per_s": args.steps * args.batch_size / seconds,
               **m}
        rows.append(row)
        print(f"| {label} | {row['latent']} | {row['images_per_s']:.0f} | {m['recon_mse']:.4f} | {m['psnr_db']:.2f} "
              f"| {m['codes_used_fraction']:.3f} | {m['perplexity']:.1f} |", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
