"""``purr edit CHECKPOINT_OR_RUN_OR_PIPELINE --input IMAGES --out DIR``: inpaint, outpaint or vary images.

A thin layer over :meth:`~purrception.pipeline.PurrceptionPipeline.inpaint` and
:meth:`~purrception.pipeline.PurrceptionPipeline.variations` (generation/editing.py). ``--keep REGION`` or
``--mask MASK.png`` (white = keep, at the tokenizer's resolution) says what to keep, ``--strength S`` makes a
variation (with or without a kept region). Inputs are read by :mod:`purrception.data.edit_inputs`. Writes
``NNNNN_srcIIIII_classY.png`` per completion (``classnone``: unconditional), ``grid.png`` (one row per source:
source | mask | completions) and ``samples.npz`` (``images``, ``labels`` — the class each completion was asked
for, the model's ``num_classes`` meaning unconditional —, ``source_index`` and ``keep``, the code-grid masks).
"""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path

from purrception.cli.common import add_generator_args, positive_int
from purrception.data.edit_inputs import read_edit_inputs
from purrception.data.images import read_image_file
from purrception.errors import PurrError
from purrception.generation.editing import REGIONS, EditOutput, edit_grid
from purrception.pipeline import PurrceptionPipeline
from purrception.sampling.grid import save_png, save_samples_npz
from purrception.sampling.settings import SamplerSettings

__all__ = ["register", "edit_argv", "edit_command"]

log = logging.getLogger(__name__)


def _number(value: float) -> str:
    """The shortest text that reads back as exactly this float (``0.8``, ``1.0``, ``1e-05``)."""
    return repr(float(value))


def edit_argv(source: str, sampler: SamplerSettings, image: str, out: str, keep: str, class_label: int | None,
              num_per_image: int = 1, seed: int = 0) -> list[str]:
    """The arguments of ``purr edit`` (after ``purr``) that make the same completions of the one image file
    ``image``: ``keep`` a region, ``class_label`` a class id or ``None`` (unconditional, ``--classes none``), every
    sampler setting spelled out (a schedule by its spec).

    Raises:
        PurrError: when ``sampler`` holds a knob no command line can name (a callable that is not a Schedule).
    """
    knobs = sampler.record()
    argv = ["edit", str(source), "--input", str(image), "--out", str(out), "--keep", str(keep),
            "--classes", "none" if class_label is None else str(int(class_label)),
            "--num-per-image", str(int(num_per_image)), "--seed", str(int(seed)),
            "--sample-steps", str(knobs["sample_steps"]), "--solver", knobs["solver"]]
    for flag, name in (("--tau", "tau"), ("--cfg-scale", "cfg_scale")):
        value = knobs[name]
        argv += [flag, value if isinstance(value, str) else _number(value)]
    return argv


def edit_command(*args, **kwargs) -> str:
    """:func:`edit_argv` as one quoted shell line, ``purr edit ...``; what ``purr app``'s Edit tab shows."""
    return "purr " + shlex.join(edit_argv(*args, **kwargs))

def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("edit", help="inpaint, outpaint or vary images with a trained generator",
                              description="Regenerate part of each input image (--keep / --mask) or make variations "
                                          "of it (--strength), for any method.")
    p.add_argument("checkpoint", help="checkpoint file, run folder (its newest checkpoint) or saved pipeline folder")
    p.add_argument("--input", required=True,
                   help="image folder (class sub-folders give each image its class), one image file, or an .npz "
                        "with 'images' (uint8 NxHxW or NxHxWx3) and optional 'labels'")
    p.add_argument("--out", required=True, help="new (or empty) folder for PNGs, grid.png and samples.npz")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--keep", default=None, metavar="REGION",
                      help=f"what to keep: {', '.join(REGIONS)}, a pixel box x0,y0,x1,y1 at the tokenizer's "
                           "resolution, or not:REGION for its complement (not:centre inpaints the centre)")
    what.add_argument("--mask", default=None, metavar="MASK.png",
                      help="keep mask image at the tokenizer's resolution: white keeps, black regenerates")
    p.add_argument("--strength", type=_strength, default=None,
                   help="make variations: run the last strength x steps of the grid from the noised image "
                        "(1 = sample afresh, near 0 = the image itself)")
    p.add_argument("--classes", default="own",
                   help="class of the completions: 'own' (each image's class, unconditional where it has none; "
                        "default), 'none' (unconditional), one class, or one class per image (comma-separated ids "
                        "or names)")
    p.add_argument("--num-per-image", type=positive_int, default=1, help="completions per image (default 1)")
    add_generator_args(p)
    p.set_defaults(func=run)


def _class_labels(text: str, own: list[int | None], class_names: list[str]) -> list[int | None]:
    """``--classes`` -> one class id (or ``None``) per image."""
    if text == "own":
        return own
    if text == "none":
        return [None] * len(own)
    values: list[int | None] = []
    for token in (t.strip() for t in text.split(",") if t.strip()):
        if token in class_names:
            values.append(class_names.index(token))
        elif token.lstrip("-").isdigit():
            values.append(int(token))
        else:
            raise PurrError(f"--classes entry {token!r} is neither a class name nor an id of this model "
                            f"(ids 0..{len(class_names) - 1}); or use 'own' or 'none'")
    if len(values) == 1:
        return values * len(own)
    if len(values) != len(own):
        raise PurrError(f"--classes gives {len(values)} classes for {len(own)} images; give one, or one per image")
    return values


def _save(out: Path, result: EditOutput, null_class: int) -> None:
    for k, (image, label, source) in enumerate(zip(result.pixels, result.labels, result.source_index)):
        name = "none" if label == null_class else str(label)
        save_png(out / f"{k:05d}_src{source:05d}_class{name}.png", image)
    save_png(out / "grid.png", edit_grid(result), scale=2)
    save_samples_npz(out / "samples.npz", result.pixels, result.labels, source_index=result.source_index,
                     keep=result.keep)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PurrError(f"{out} exists and is not an empty folder; choose another --out (nothing was overwritten)")
    if args.keep is None and args.mask is None and args.strength is None:
        raise PurrError("say what to do: --keep REGION or --mask MASK.png (inpaint / outpaint), and / or --strength S "
                        "(variations)")
    if args.mask is not None and not Path(args.mask).is_file():
        raise PurrError(f"--mask {args.mask} not found")
    pipe = PurrceptionPipeline.from_pretrained(args.checkpoint, args.device, args.tokenizer, args.tokenizer_kind,
                                               args.method)
    inputs = read_edit_inputs(args.input, pipe.class_names, pipe.num_classes)
    keep = read_image_file(Path(args.mask)) if args.mask is not None else args.keep
    labels = _class_labels(args.classes, inputs.labels, pipe.class_names)
    knobs = dict(class_labels=labels, num_per_image=args.num_per_image, num_inference_steps=args.sample_steps,
                 tau=args.tau, guidance_scale=args.cfg_scale, solver=args.solver, seed=args.seed,
                 batch_size=args.batch_size,
                 progress=True)
    if args.strength is None:
        result = pipe.inpaint(inputs.images, keep, **knobs)
    else:
        result = pipe.variations(inputs.images, args.strength, keep=keep, **knobs)
    out.mkdir(parents=True, exist_ok=True)
    _save(out, result, pipe.num_classes)
    log.info("wrote %d completions of %d images, grid.png and samples.npz to %s (%d sample steps from step %d, "
             "solver %s)", len(result.pixels), len(inputs), out, args.sample_steps, result.first_step, args.solver)
    return 0
