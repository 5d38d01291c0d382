"""``purr sample CHECKPOINT``: generate images for chosen classes; PNGs, a grid and ``samples.npz``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from purrception.cli.common import add_sampler_args, positive_int, sampler_from_args
from purrception.data.shards import check_same_tokenizer
from purrception.errors import PurrError
from purrception.sampling.generate import balanced_labels, check_labels, generate_images
from purrception.sampling.grid import image_grid, save_png, save_samples_npz
from purrception.tokenizers.base import VQTokenizer
from purrception.tokenizers.store import load_tokenizer
from purrception.training.checkpoint import Checkpoint, load_checkpoint
from purrception.training.loop import latest_checkpoint

__all__ = ["register", "resolve_checkpoint", "tokenizer_for"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="generate images from a checkpoint")
    p.add_argument("checkpoint", help="checkpoint file, or a run folder (its newest checkpoint)")
    p.add_argument("--out", required=True, help="new folder for PNGs, grid.png and samples.npz")
    p.add_argument("--classes", default="all", help="comma-separated class ids, or 'all' (balanced; default)")
    p.add_argument("--num", type=positive_int, default=None, help="number of images (default: 8 per class)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default=None, help="assert the checkpoint's method")
    p.add_argument("--tokenizer", default=None, help="tokenizer path (default: the one recorded in the checkpoint)")
    p.add_argument("--tokenizer-kind", default=None, help="kind of a pretrained tokenizer checkpoint file")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="cpu")
    add_sampler_args(p)
    p.set_defaults(func=run)


def resolve_checkpoint(path: str, expect_method: str | None = None) -> Checkpoint:
    """A checkpoint file, or the newest checkpoint of a run folder."""
    p = Path(path)
    if p.is_dir():
        newest = latest_checkpoint(p)
        if newest is None:
            raise PurrError(f"run folder {p} has no checkpoints yet")
        p = newest
    return load_checkpoint(p, expect_method)


def tokenizer_for(ckpt: Checkpoint, path: str | None, kind: str | None) -> VQTokenizer:
    """Load the tokenizer that decodes ``ckpt``'s codes and check it is the one the model was trained on."""
    path = path or ckpt.tokenizer_path
    if not path:
        raise PurrError("the checkpoint records no tokenizer path; pass --tokenizer")
    tokenizer = load_tokenizer(path, kind)
    check_same_tokenizer(ckpt.tokenizer_identity, tokenizer.identity(), f"tokenizer {path}")
    return tokenizer


def _labels(args: argparse.Namespace, num_classes: int) -> np.ndarray:
    if args.classes == "all":
        return balanced_labels(args.num or 8 * num_classes, num_classes)
    try:
        classes = np.array([int(c) for c in args.classes.split(",") if c.strip()], dtype=np.int64)
    except ValueError:
        raise PurrError(f"--classes must be comma-separated integers or 'all', got {args.classes!r}") from None
    if classes.size == 0:
        raise PurrError("--classes is empty; give class ids like 0,3,7 or 'all'")
    check_labels(classes, num_classes)
    num = args.num or 8 * len(classes)
    return np.resize(np.repeat(classes, -(-num // len(classes))), num)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise PurrError(f"{out} exists and is not empty; choose another --out (nothing was overwritten)")
    ckpt = resolve_checkpoint(args.checkpoint, args.method)
    tokenizer = tokenizer_for(ckpt, args.tokenizer, args.tokenizer_kind)
    labels = _labels(args, ckpt.num_classes)
    sampler = sampler_from_args(args)
    method, model = ckpt.build_method().to(args.device), ckpt.build_model(ema=True).to(args.device)
    tokenizer.to(args.device)
    images = generate_images(method, model, tokenizer, labels, sampler, args.seed, args.batch_size,
                             device=args.device, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        save_png(out / f"{i:05d}_class{label}.png", image)
    order = np.argsort(labels, kind="stable")
    rows = len(np.unique(labels))
    save_png(out / "grid.png", image_grid(images[order], rows=rows), scale=2)
    save_samples_npz(out / "samples.npz", images, labels)
    log.info("wrote %d images, grid.png and samples.npz to %s", len(images), out)
    return 0
