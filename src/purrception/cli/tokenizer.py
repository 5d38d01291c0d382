"""``purr tokenizer train | encode | decode``: train a VQ tokenizer on an image folder (or the embedded digits), and
any tokenizer's encode / decode on arrays stored in ``.npz`` files."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from purrception.cli.common import add_tokenizer_kind_arg, positive_float, positive_int, refuse_existing, seed_int
from purrception.data.embedded import load_embedded_mnist
from purrception.data.embedded_shards import DIGITS_RECIPE, encode_array
from purrception.data.tokenizer_folder import FOLDER_RECIPE, train_tokenizer_on_folder
from purrception.errors import PurrError
from purrception.io import atomic_write
from purrception.pixels import tensor_to_images
from purrception.sampling.grid import image_grid, save_png, save_samples_npz
from purrception.tokenizers.recipe import TokenizerRecipe
from purrception.tokenizers.registry import DEFAULT_TRAINABLE_KIND, trainable_kinds
from purrception.tokenizers.store import CONFIG_NAME, load_tokenizer
from purrception.tokenizers.train import RECONSTRUCTION_LOSSES, TokenizerTrainConfig, fit_tokenizer

log = logging.getLogger(__name__)

#: architecture options of ``purr tokenizer train``: config field -> flag (each applies to the kinds that have it)
ARCHITECTURE_FLAGS = {"downsample": "--downsample", "codebook_size": "--codebook-size", "latent_dim": "--latent-dim",
                      "width": "--width"}


def _default(recipe: TokenizerRecipe, name: str) -> object:
    """A recipe's value of a config setting, for help texts."""
    return getattr(recipe.model_config(check=False), name, "?")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tokenizer", help="train a VQ tokenizer (an image folder or the embedded digits); "
                                                       "encode / decode arrays")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    sub.required = True

    t = sub.add_parser(
        "train", help="train a VQ tokenizer on an image folder (or, without --images, the embedded digits)",
        description="Train a VQ tokenizer (by default conv-vq: a convolutional VQ autoencoder with an EMA codebook "
                    "on the sphere and dead-code restarts) on an image folder, resumably: re-running the same "
                    "command continues a killed run. The folder OUT gets config.json (architecture, held-out "
                    "metrics) and model.safetensors, which purr encode, train, sample and eval take.")
    kinds = "; ".join(f"{name} = {kind.summary}" for name, kind in trainable_kinds().items())
    t.add_argument("--kind", choices=list(trainable_kinds()), default=DEFAULT_TRAINABLE_KIND, metavar="NAME",
                   help=f"tokenizer architecture (default {DEFAULT_TRAINABLE_KIND}): {kinds}. The defaults below are "
                        f"{DEFAULT_TRAINABLE_KIND}'s; another kind keeps those of its settings it shares and takes its "
                        "own defaults for the rest")
    t.add_argument("--images", default=None, metavar="DIR",
                   help="image folder: DIR/<class>/*.png|jpg|..., or a flat folder with --labels; without it, the "
                        "embedded MNIST train split (28x28 grey)")
    t.add_argument("--labels", default=None, metavar="FILE",
                   help="for a flat --images folder: lines '<relative path>,<label>'")
    t.add_argument("--out", required=True, help="tokenizer folder to create (or an unfinished run to resume)")
    t.add_argument("--resolution", type=positive_int, default=None, metavar="R",
                   help="image side the tokenizer works at, 16-256, a multiple of --downsample; images are resized "
                        "(shorter side) and centre-cropped to it (default: the folder's most common shorter side)")
    t.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="1 = grey, 3 = RGB (default: 1 if every image is grey, else 3)")
    t.add_argument("--downsample", type=positive_int, default=None, metavar="F",
                   help=f"downsampling factor: an RxR image becomes (R/F)x(R/F) codes (default "
                        f"{_default(FOLDER_RECIPE, 'downsample')}; --kind lists what each kind takes)")
    t.add_argument("--codebook-size", type=positive_int, default=None, metavar="K",
                   help=f"number of codes K (default {_default(FOLDER_RECIPE, 'codebook_size')}; "
                        f"{_default(DIGITS_RECIPE, 'codebook_size')} for the embedded digits)")
    t.add_argument("--latent-dim", type=positive_int, default=None, metavar="D",
                   help=f"dimension d of each code vector (default {_default(FOLDER_RECIPE, 'latent_dim')})")
    t.add_argument("--width", type=positive_int, default=None,
                   help=f"channels of the first convolution; later stages have 2x and 4x (default "
                        f"{_default(FOLDER_RECIPE, 'width')}; {_default(DIGITS_RECIPE, 'width')} for the embedded "
                        "digits)")
    t.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help=f"training steps (default {FOLDER_RECIPE.train.steps}; {DIGITS_RECIPE.train.steps} for the "
                        "embedded digits)")
    t.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"images per step (default {FOLDER_RECIPE.train.batch_size}; {DIGITS_RECIPE.train.batch_size} "
                        "for the embedded digits)")
    t.add_argument("--lr", type=positive_float, default=None,
                   help=f"peak learning rate, warmed up then cosine-decayed (default {FOLDER_RECIPE.train.lr:g}; "
                        f"{DIGITS_RECIPE.train.lr:g} for the embedded digits)")
    t.add_argument("--loss", choices=list(RECONSTRUCTION_LOSSES), default=TokenizerTrainConfig.loss,
                   help="reconstruction loss on pixels: mse (L2) or l1 (default mse)")
    t.add_argument("--checkpoint-every", type=positive_int, default=TokenizerTrainConfig.checkpoint_every,
                   metavar="N", help="write the resumable state every N steps (default "
                                     f"{TokenizerTrainConfig.checkpoint_every})")
    t.add_argument("--seed", type=seed_int, default=0, help="seeds the weights, the batches and the held-out split")
    t.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    t.add_argument("--workers", type=int, default=0, help="image-reading worker processes (default 0)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
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
    embedded = args.images is None
    if embedded and (args.labels or args.resolution or args.channels):
        raise PurrError("--labels, --resolution and --channels go with --images (the embedded digits are 28x28 grey)")
    recipe = (DIGITS_RECIPE if embedded else FOLDER_RECIPE).for_kind(args.kind)
    given = {name: getattr(args, name) for name in ARCHITECTURE_FLAGS if getattr(args, name) is not None}
    foreign = [ARCHITECTURE_FLAGS[name] for name in given if name not in recipe.entry.config_fields]
    if foreign:
        raise PurrError(f"{', '.join(foreign)} does not apply to tokenizer kind {args.kind} (its settings: "
                        f"{', '.join(recipe.entry.config_fields)}); drop it")
    recipe = recipe.with_overrides(**given).with_train(
        steps=args.steps or recipe.train.steps, batch_size=args.batch_size or recipe.train.batch_size,
        lr=args.lr or recipe.train.lr, seed=args.seed,
        loss=args.loss, checkpoint_every=args.checkpoint_every)
    model_cfg, train_cfg = recipe.model_config(check=embedded), recipe.train
    progress = not args.no_progress
    if embedded:
        out = fit_tokenizer(load_embedded_mnist("train").images, load_embedded_mnist("heldout").images, args.out,
                            model_cfg, train_cfg, record={"type": "embedded-mnist", "split": "train"},
                            progress=progress, device=args.device)
    else:
        out = train_tokenizer_on_folder(args.images, args.out, model_cfg, train_cfg, labels_file=args.labels,
                                        resolution=args.resolution, channels=args.channels,
                                        workers=max(0, args.workers), progress=progress, device=args.device)
    meta = json.loads((out / CONFIG_NAME).read_text())
    print(json.dumps({"tokenizer": str(out), "config": meta["config"], "metrics": meta["metrics"]}, indent=2))
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
    out = out if out.suffix == ".npz" else out.with_name(out.name + ".npz")  # where np.savez(out) wrote before

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez adds no suffix to it
            np.savez(f, **arrays)

    atomic_write(out, write)
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
