"""What the folder protocol gives real images: the FID floor at N and the class-accuracy ceiling of a labelled folder.

Scores N real images of the folder exactly as ``purr eval --protocol folder`` scores N samples (class ``i mod C`` for
image ``i``, the judge's features, FID / precision / recall against the rest of the folder, class accuracy), drawn
from each part of the folder's split:

- ``judge part``: images the judge trained on (disjoint from the reference; its class accuracy is optimistic);
- ``rest``: images of the reference itself (FID biased low by the overlap);
- with ``--tokenizer TOK``, the same rest images after a round trip through the tokenizer (encode, decode): what a
  generator that reproduced the data's codes exactly would score.

Usage: ``python bench/folder_floor.py --folder DIR [--size 32] [--channels 3] [-n 300] [--tokenizer TOK]``
(``--folder emoji``: the embedded emoji folder, exported to the cache once).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from purrception.data.datasets import get_dataset
from purrception.evaluation.evaluate import EvalSettings, reference_features, score
from purrception.evaluation.extractors import FolderFeatures
from purrception.evaluation.folder_judge import split_folder
from purrception.generation.generate import balanced_labels
from purrception.io import default_cache_dir
from purrception.pixels import images_to_tensor, tensor_to_images
from purrception.tokenizers.store import load_tokenizer


def draw(labels: np.ndarray, part: np.ndarray, n: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` images of ``part``: image ``i`` of class ``i mod C``, without repeats while a class lasts."""
    rng = np.random.default_rng(seed)
    pools = {c: list(rng.permutation(np.flatnonzero(part & (labels == c)))) for c in range(num_classes)}
    wanted = balanced_labels(n, num_classes)
    short = [c for c in range(num_classes) if len(pools[c]) < int((wanted == c).sum())]
    if short:
        raise SystemExit(f"class {short[0]} has {len(pools[short[0]])} images in this part, fewer than -n {n} asks "
                         f"for ({int((wanted == short[0]).sum())}); lower -n")
    return np.array([pools[int(c)].pop() for c in wanted])


def round_trip(tokenizer, images: np.ndarray, batch: int = 100) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            codes = tokenizer.encode(images_to_tensor(images[i:i + batch]))
            out.append(tensor_to_images(tokenizer.decode(codes)))
    return np.concatenate(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--folder", required=True, help="a labelled image folder, or 'emoji'")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("-n", "--num-images", type=int, default=300)
    p.add_argument("--tokenizer", default=None, help="also score the rest images after a tokenizer round trip")
    args = p.parse_args()
    cache = default_cache_dir()
    folder = get_dataset("emoji").reference(cache) if args.folder == "emoji" else args.folder
    split = split_folder(folder, args.size, args.channels)
    extractor = FolderFeatures(split, cache)
    reference = reference_features(extractor.own_reference(), extractor, cache)
    settings = EvalSettings(num_samples=args.num_images)
    wanted = balanced_labels(args.num_images, split.num_classes)
    parts = {"judge part": split.judge_mask, "rest": ~split.judge_mask}
    images = {name: split.images[draw(split.labels, mask, args.num_images, split.num_classes)]
              for name, mask in parts.items()}
    if args.tokenizer:
        images["rest, tokenizer round trip"] = round_trip(load_tokenizer(args.tokenizer), images["rest"])
    for name, batch in images.items():
        metrics = score(extractor.extract(batch), wanted, reference, settings)
        print(json.dumps({"folder": str(folder), "images": name, "n": args.num_images,
                          "judge_accuracy_on_rest": extractor.facts.get("accuracy_on_rest"),
                          **{k: round(float(v), 4) for k, v in metrics.items()}}))


if __name__ == "__main__":
    main()
