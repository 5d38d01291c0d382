"""``purr tokenizer train | encode | decode``: the small VQ tokenizer of the embedded data, and any tokenizer's
encode / decode on arrays stored in ``.npz`` files."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from purrception.cli.common import add_tokenizer_kind_arg, positive_int, refuse_existing
from purrception.data.embedded import load_embedded_mnist
from purrception.data.embedded_shards import encode_array
from purrception.errors import PurrError
from purrception.pixels import tensor_to_images
from purrception.sampling.grid import image_grid, save_png, save_samples_npz
from purrception.tokenizers.small_vq import SmallVQConfig
from purrception.tokenizers.store import load_tokenizer, save_tokenizer
from purrception.tokenizers.train import TokenizerTrainConfig, evaluate_tokenizer, train_small_vq

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tokenizer", help="train the embedded VQ tokenizer; encode / decode arrays")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    sub.required = True

    t = sub.add_parser("train", help="train the small VQ tokenizer on the embedded train split")
    t.add_argument("--out", required=True, help="new folder for config.json + model.safetensors")
    t.add_argument("--steps", type=positive_int, default=1000)
    t.add_argument("--codebook-size", type=positive_int, default=SmallVQConfig.codebook_size)
    t.add_argument("--latent-dim", type=positive_int, default=SmallVQConfig.latent_dim)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=run_train)

    e = sub.add_parser("encode", help="images -> codes (.npz with 'codes' and, if known, 'labels')")
    e.add_argument("--tokenizer", required=True, help="tokenizer folder or pretrained checkpoint file")
    add_tokenizer_kind_arg(e)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--embedded", choices=["train", "heldout", "all"], help="an embedded MNIST split")
    src.add_argument("--images", help=".npz with uint8 'images' (N,H,W) or (N,H,W,C), e.g. samples.npz")
    e.add_argument("--out", required=True, help="new .npz file for the codes")
    e.set_defaults(func=run_encode)

    d = sub.add_parser("decode", help="codes or continuous latents (.npz) -> images (.npz and a PNG grid)")
    d.add_argument("--tokenizer", required=True)
    add_tokenizer_kind_arg(d)
    d.add_argument("--input", required=True, help=".npz with int 'codes' (N,h,w) or float 'latents' (N,d,h,w)")
    d.add_argument("--out", required=True, help="new .npz for the images; a grid PNG is written beside it")
    d.set_defaults(func=run_decode)


def run_train(args: argparse.Namespace) -> int:
    out = refuse_existing(args.out)
    model_cfg = SmallVQConfig(codebook_size=args.codebook_size, latent_dim=args.latent_dim)
    tokenizer = train_small_vq(load_embedded_mnist("train").images, model_cfg,
                               TokenizerTrainConfig(steps=args.steps, seed=args.seed))
    metrics = evaluate_tokenizer(tokenizer, load_embedded_mnist("heldout").images)
    save_tokenizer(tokenizer, out, metrics={"heldout": metrics})
    print(json.dumps({"tokenizer": str(out), "heldout": metrics}, indent=2))
    return 0


def _load_npz(path: str) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise PurrError(f"input file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise PurrError(f"cannot read {p} as .npz ({err})") from None


def run_encode(args: argparse.Namespace) -> int:
    out = refuse_existing(args.out)
    tokenizer = load_tokenizer(args.tokenizer, args.tokenizer_kind)
    labels = None
    if args.embedded:
        split = load_embedded_mnist(args.embedded)
        images, labels = split.images, split.labels
    else:
        data = _load_npz(args.images)
        if "images" not in data:
            raise PurrError(f"{args.images} has no 'images' array (found: {', '.join(data) or 'nothing'})")
        images, labels = data["images"], data.get("labels")
    expected = (tokenizer.image_size, tokenizer.image_size)
    if images.dtype != np.uint8 or tuple(images.shape[1:3]) != expected:
        raise PurrError(f"images must be uint8 (N, {expected[0]}, {expected[1]}[, C]) for this tokenizer; "
                        f"got {images.dtype} {images.shape}")
    codes = encode_array(tokenizer, images)
    arrays = {"codes": codes} if labels is None else {"codes": codes, "labels": np.asarray(labels)}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    log.info("wrote %d code grids of shape %s to %s", len(codes), codes.shape[1:], out)
    return 0


@torch.no_grad()
def run_decode(args: argparse.Namespace) -> int:
    out = refuse_existing(args.out)
    tokenizer = load_tokenizer(args.tokenizer, args.tokenizer_kind)
    data = _load_npz(args.input)
    h, w = tokenizer.latent_shape
    if "codes" in data:
        codes = torch.from_numpy(data["codes"].astype(np.int64))
        if codes.ndim != 3 or tuple(codes.shape[1:]) != (h, w):
            raise PurrError(f"codes must have shape (N, {h}, {w}) for this tokenizer, got {tuple(codes.shape)}")
        if codes.min() < 0 or codes.max() >= tokenizer.codebook_size:
            raise PurrError(f"codes must lie in [0, {tokenizer.codebook_size}) for this tokenizer")
        latents = tokenizer.lookup(codes)
    elif "latents" in data:
        latents = torch.from_numpy(data["latents"].astype(np.float32))
        if latents.ndim != 4 or tuple(latents.shape[1:]) != (tokenizer.latent_dim, h, w):
            raise PurrError(f"latents must have shape (N, {tokenizer.latent_dim}, {h}, {w}), "
                            f"got {tuple(latents.shape)}")
    else:
        raise PurrError(f"{args.input} has neither 'codes' nor 'latents' (found: {', '.join(data) or 'nothing'})")
    images = np.concatenate([tensor_to_images(tokenizer.decode_latents(latents[i : i + 256]))
                             for i in range(0, len(latents), 256)])
    save_samples_npz(out, images, data.get("labels", np.full(len(images), -1)))
    save_png(out.with_suffix(".png"), image_grid(images[:100], rows=max(1, min(10, len(images) // 10))), scale=2)
    log.info("decoded %d images to %s (+ grid %s)", len(images), out, out.with_suffix(".png"))
    return 0
