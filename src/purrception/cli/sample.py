"""``purr sample CHECKPOINT_OR_RUN_OR_PIPELINE``: generate images for chosen classes; PNGs, a grid, ``samples.npz``.

A thin layer over :class:`~purrception.pipeline.PurrceptionPipeline`. With ``--uncertainty-times`` (and optionally
``--topk K --position R,C``) it also reads the categorical posterior along each trajectory
(``generation.uncertainty``): ``NNNNN_classY_uncertainty.png`` shows the image next to its per-position entropy
maps (0 .. log K on the magma colormap, one per time), ``NNNNN_classY_top{K}.png`` the image decoded with the
position's code replaced by each of the top-K candidates of the final posterior, and ``uncertainty.npz`` holds the
numbers.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path
from typing import Sequence

import numpy as np

from purrception.cli.common import add_generator_args, positive_int, sampler_from_args
from purrception.errors import PurrError
from purrception.generation.generate import balanced_labels, check_labels, repeat_labels
from purrception.generation.uncertainty import entropy_heatmap
from purrception.io import atomic_write
from purrception.pipeline import PipelineOutput, PurrceptionPipeline
from purrception.sampling.grid import image_grid, save_png, save_sample_folder
from purrception.sampling.settings import SamplerSettings

__all__ = ["register", "sample_argv", "sample_command"]

log = logging.getLogger(__name__)


def _number(value: float) -> str:
    """The shortest text that reads back as exactly this float (``0.8``, ``1.0``, ``1e-05``)."""
    return repr(float(value))


def sample_argv(source: str, sampler: SamplerSettings, out: str, classes: Sequence[int] | None = None,
                num: int | None = None, seed: int = 0, uncertainty_times: Sequence[float] | None = None,
                topk: int = 0, position: tuple[int, int] | None = None) -> list[str]:
    """The arguments of ``purr sample`` (after ``purr``) that make these images: every sampler setting spelled out
    (a schedule by its spec), ``classes`` (``None``: every class, balanced), and with ``uncertainty_times`` (and
    ``topk``, ``position``) the same entropy maps and top-k strips.

    Raises:
        PurrError: when ``sampler`` holds a knob no command line can name (a callable that is not a Schedule).
    """
    knobs = sampler.record()
    argv = ["sample", str(source), "--out", str(out),
            "--classes", "all" if classes is None else ",".join(str(int(c)) for c in classes)]
    if num is not None:
        argv += ["--num", str(int(num))]
    argv += ["--seed", str(int(seed)), "--sample-steps", str(knobs["sample_steps"]), "--solver", knobs["solver"]]
    for flag, name in (("--tau", "tau"), ("--cfg-scale", "cfg_scale")):
        value = knobs[name]
        argv += [flag, value if isinstance(value, str) else _number(value)]
    if uncertainty_times is not None:
        argv += ["--uncertainty-times", ",".join(_number(t) for t in uncertainty_times)]
        if position is not None and topk > 0:
            argv += ["--topk", str(int(topk)), "--position", f"{position[0]},{position[1]}"]
    return argv


def sample_command(*args, **kwargs) -> str:
    """:func:`sample_argv` as one quoted shell line, ``purr sample ...``; what ``purr app`` shows and downloads."""
    return "purr " + shlex.join(sample_argv(*args, **kwargs))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="generate images from a checkpoint")
    p.add_argument("checkpoint", help="checkpoint file, run folder (its newest checkpoint) or saved pipeline folder")
    p.add_argument("--out", required=True, help="new folder for PNGs, grid.png and samples.npz")
    p.add_argument("--classes", default="all", help="comma-separated class ids, or 'all' (balanced; default)")
    p.add_argument("--num", type=positive_int, default=None, help="number of images (default: 8 per class)")
    add_generator_args(p)
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


def _labels(args: argparse.Namespace, pipe: PurrceptionPipeline) -> np.ndarray:
    num_classes = pipe.num_classes
    if args.num is not None:
        pipe.check_fits(args.num)  # before the labels of an impossible request are allocated
    if args.classes == "all":
        return balanced_labels(args.num or 8 * num_classes, num_classes)
    try:
        classes = np.array([int(c) for c in args.classes.split(",") if c.strip()], dtype=np.int64)
    except ValueError:
        raise PurrError(f"--classes must be comma-separated integers or 'all', got {args.classes!r}") from None
    if classes.size == 0:
        raise PurrError("--classes is empty; give class ids like 0,3,7 or 'all'")
    check_labels(classes, num_classes)
    return repeat_labels(classes, args.num or 8 * len(classes))


def _save_uncertainty(out: Path, result: PipelineOutput, codebook_size: int, position: tuple[int, int] | None) -> None:
    """Entropy panels, top-k strips and ``uncertainty.npz`` (see the module docstring)."""
    trace, images, labels = result.uncertainty, result.pixels, result.labels
    rgb = images if images.ndim == 4 else np.repeat(images[..., None], 3, axis=-1)
    size = rgb.shape[1:3]
    max_entropy = float(np.log(codebook_size))
    entropy = trace.entropy.numpy()
    for i, label in enumerate(labels if trace.times else []):
        maps = [entropy_heatmap(entropy[i, j], max_entropy, size) for j in range(len(trace.times))]
        save_png(out / f"{i:05d}_class{label}_uncertainty.png", np.concatenate([rgb[i], *maps], axis=1), scale=4)
    extra: dict[str, np.ndarray] = {}
    if result.candidates is not None:
        k = result.candidates.shape[1]
        for i, label in enumerate(labels):
            save_png(out / f"{i:05d}_class{label}_top{k}.png", image_grid(result.candidates[i], rows=1), scale=4)
        extra = {"topk_codes": trace.topk_codes.numpy(), "topk_probs": trace.topk_probs.numpy(),
                 "position": np.asarray(position), "final_time": np.asarray(trace.final_time)}
    arrays = {"entropy": entropy, "times": np.asarray(trace.times), "labels": labels, "codes": trace.codes.numpy(),
              "max_entropy": np.asarray(max_entropy), **extra}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(out / "uncertainty.npz", write)


def run(args: argparse.Namespace) -> int:
    sampler = sampler_from_args(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise PurrError(f"`out` {out} is a file, not a folder; choose another `out` (nothing was written)")
    if out.exists() and any(out.iterdir()):
        raise PurrError(f"{out} exists and is not empty; choose another --out (nothing was overwritten)")
    if (args.topk is None) != (args.position is None):
        raise PurrError("--topk and --position go together: e.g. --topk 5 --position 3,3")
    pipe = PurrceptionPipeline.from_pretrained(args.checkpoint, args.device, args.tokenizer, args.tokenizer_kind,
                                               args.method)
    labels = _labels(args, pipe)
    result = pipe(class_labels=labels, num_per_class=1, num_inference_steps=sampler.sample_steps, tau=sampler.tau,
                  guidance_scale=sampler.cfg_scale, solver=sampler.solver, seed=args.seed, batch_size=args.batch_size,
                  uncertainty_times=args.uncertainty_times, topk=args.topk or 0, position=args.position,
                  progress=True)
    out.mkdir(parents=True, exist_ok=True)
    images = result.pixels
    save_sample_folder(out, images, labels)
    if result.uncertainty is not None:
        _save_uncertainty(out, result, pipe.method.codebook_size, args.position)
    log.info("wrote %d images, grid.png and samples.npz to %s (sample_steps %d, solver %s, tau %s, cfg_scale %s)",
             len(images), out, sampler.sample_steps, sampler.solver, sampler.tau, sampler.cfg_scale)
    return 0
