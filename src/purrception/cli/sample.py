"""``purr sample CHECKPOINT``: generate images for chosen classes; PNGs, a grid and ``samples.npz``.

With ``--uncertainty-times`` (and optionally ``--topk K --position R,C``) it also reads the categorical posterior
along each trajectory (``sampling.uncertainty``): ``NNNNN_classY_uncertainty.png`` shows the image next to its
per-position entropy maps (0 .. log K on the magma colormap, one per time), ``NNNNN_classY_top{K}.png`` the image
decoded with the position's code replaced by each of the top-K candidates of the final posterior, and
``uncertainty.npz`` holds the numbers.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from purrception.cli.common import add_sampler_args, add_tokenizer_kind_arg, positive_int, sampler_from_args
from purrception.errors import PurrError
from purrception.io import atomic_write
from purrception.generation.generate import balanced_labels, check_labels, generate_images
from purrception.sampling.grid import image_grid, save_png, save_samples_npz
from purrception.generation.uncertainty import UncertaintyTrace, candidate_codes, entropy_heatmap, trace_labels
from purrception.tokenizers.base import VQTokenizer
from purrception.pixels import tensor_to_images
from purrception.tokenizers.store import load_matching_tokenizer
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
    add_tokenizer_kind_arg(p)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="cpu")
    add_sampler_args(p)
    p.add_argument("--uncertainty-times", type=_times, default=None, metavar="T1,T2,...",
                   help="save per-position posterior entropy maps at these times in [0, 1] (purrception only)")
    p.add_argument("--topk", type=positive_int, default=None,
                   help="decode each image with --position's code replaced by the final posterior's top-k codes")
    p.add_argument("--position", type=_position, default=None, metavar="ROW,COL",
                   help="latent position for --topk (row, column of the code grid)")
    p.set_defaults(func=run)


def _times(text: str) -> list[float]:
    try:
        times = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated times like 0.25,0.5,0.9, got {text!r}") from None
    if not times or any(not 0.0 <= t <= 1.0 for t in times):
        raise argparse.ArgumentTypeError(f"times must be comma-separated numbers in [0, 1], got {text!r}")
    return times


def _position(text: str) -> tuple[int, int]:
    try:
        row, col = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROW,COL like 3,4, got {text!r}") from None
    if row < 0 or col < 0:
        raise argparse.ArgumentTypeError(f"ROW,COL must be non-negative, got {text!r}")
    return row, col


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
    return load_matching_tokenizer(path, ckpt.tokenizer_identity, kind)


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


def _save_uncertainty(out: Path, trace: UncertaintyTrace, images: np.ndarray, labels: np.ndarray,
                      tokenizer: VQTokenizer, codebook_size: int, position: tuple[int, int] | None,
                      batch_size: int, device: str) -> None:
    """Entropy panels, top-k strips and ``uncertainty.npz`` (see the module docstring)."""
    rgb = images if images.ndim == 4 else np.repeat(images[..., None], 3, axis=-1)
    size = rgb.shape[1:3]
    max_entropy = float(np.log(codebook_size))
    entropy = trace.entropy.numpy()
    for i, label in enumerate(labels if trace.times else []):
        maps = [entropy_heatmap(entropy[i, j], max_entropy, size) for j in range(len(trace.times))]
        save_png(out / f"{i:05d}_class{label}_uncertainty.png", np.concatenate([rgb[i], *maps], axis=1), scale=4)
    extra: dict[str, np.ndarray] = {}
    if trace.topk_codes.shape[1] and position is not None:
        k = trace.topk_codes.shape[1]
        swapped = candidate_codes(trace.codes, position, trace.topk_codes).flatten(0, 1)      # (N*k, h, w)
        decoded = np.concatenate([tensor_to_images(tokenizer.decode(swapped[j:j + batch_size].to(device)))
                                  for j in range(0, len(swapped), batch_size)])
        decoded = decoded.reshape(len(labels), k, *decoded.shape[1:])
        for i, label in enumerate(labels):
            save_png(out / f"{i:05d}_class{label}_top{k}.png", image_grid(decoded[i], rows=1), scale=4)
        extra = {"topk_codes": trace.topk_codes.numpy(), "topk_probs": trace.topk_probs.numpy(),
                 "position": np.asarray(position), "final_time": np.asarray(trace.final_time)}
    arrays = {"entropy": entropy, "times": np.asarray(trace.times), "labels": labels, "codes": trace.codes.numpy(),
              "max_entropy": np.asarray(max_entropy), **extra}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(out / "uncertainty.npz", write)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise PurrError(f"{out} exists and is not empty; choose another --out (nothing was overwritten)")
    if (args.topk is None) != (args.position is None):
        raise PurrError("--topk and --position go together: e.g. --topk 5 --position 3,3")
    ckpt = resolve_checkpoint(args.checkpoint, args.method)
    tokenizer = tokenizer_for(ckpt, args.tokenizer, args.tokenizer_kind)
    labels = _labels(args, ckpt.num_classes)
    sampler = sampler_from_args(args)
    method, model = ckpt.build_method().to(args.device), ckpt.build_model(ema=True).to(args.device)
    tokenizer.to(args.device)
    trace = None
    if args.uncertainty_times is not None or args.topk is not None:
        trace = trace_labels(method, model, labels, sampler, args.seed, tokenizer.snap, args.uncertainty_times or [],
                             args.topk or 0, args.position, args.batch_size, args.device, progress=True)
        images = np.concatenate([tensor_to_images(tokenizer.decode(trace.codes[i:i + args.batch_size].to(args.device)))
                                 for i in range(0, len(labels), args.batch_size)])
    else:
        images = generate_images(method, model, tokenizer, labels, sampler, args.seed, args.batch_size,
                                 device=args.device, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        save_png(out / f"{i:05d}_class{label}.png", image)
    order = np.argsort(labels, kind="stable")
    rows = len(np.unique(labels))
    save_png(out / "grid.png", image_grid(images[order], rows=rows), scale=2)
    save_samples_npz(out / "samples.npz", images, labels)
    if trace is not None:
        _save_uncertainty(out, trace, images, labels, tokenizer, method.codebook_size, args.position,
                          args.batch_size, args.device)
    log.info("wrote %d images, grid.png and samples.npz to %s (steps %d, solver %s, tau %s, cfg %s)",
             len(images), out, sampler.steps, sampler.solver, sampler.tau, sampler.cfg_scale)
    return 0
