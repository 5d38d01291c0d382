"""Argument helpers shared by several subcommands (one definition per option)."""

from __future__ import annotations

import argparse
from pathlib import Path

from purrception.errors import PurrError
from purrception.sampling.schedules import SHAPES, Schedule, parse_schedule
from purrception.sampling.settings import SamplerSettings
from purrception.sampling.solvers import SOLVERS
from purrception.tokenizers.registry import pretrained_kinds

__all__ = ["positive_int", "positive_float", "seed_int", "schedule_arg", "add_sampler_args", "sampler_from_args",
           "add_tokenizer_kind_arg", "refuse_existing"]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def seed_int(text: str) -> int:
    """A random seed: an integer from 0 to 2**63 - 1 (what numpy's and torch's seeding both take)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"a seed must be an integer from 0 to 2**63 - 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def schedule_arg(name: str, positive: bool = False):
    """An argparse ``type``: a number or ``SHAPE:START:END`` (see ``sampling.schedules``); bad specs exit 2."""

    def parse(text: str) -> float | Schedule:
        try:
            return parse_schedule(text, name, positive)
        except PurrError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def add_sampler_args(parser: argparse.ArgumentParser, steps: int = 100) -> None:
    """``--steps --tau --cfg-scale --solver`` with the paper's defaults (Euler, 100 steps, tau 1, no CFG)."""
    shapes = "|".join(SHAPES)
    parser.add_argument("--steps", type=positive_int, default=steps, help=f"integration steps T (default {steps})")
    parser.add_argument("--tau", type=schedule_arg("--tau", positive=True), default=1.0,
                        help=f"softmax temperature, eq. 15: a number or a schedule {shapes}:START:END over t "
                             "(e.g. linear:1.2:0.6; default 1.0)")
    parser.add_argument("--cfg-scale", type=schedule_arg("--cfg-scale"), default=1.0,
                        help=f"classifier-free guidance scale (1 = off): a number or {shapes}:START:END")
    parser.add_argument("--solver", default="euler",
                        help=f"ODE solver: {', '.join(SOLVERS)}; adaptive ones take NAME:TOL, e.g. dopri5:1e-4 "
                             "(dopri5, bosh3, adaptive_heun need torchdiffeq; default euler)")


def sampler_from_args(args: argparse.Namespace) -> SamplerSettings:
    return SamplerSettings(steps=args.steps, tau=args.tau, cfg_scale=args.cfg_scale, solver=args.solver)


def add_tokenizer_kind_arg(parser: argparse.ArgumentParser) -> None:
    """``--tokenizer-kind``, choosing among the pretrained kinds of the tokenizer registry
    (``tokenizers.registry.pretrained_kinds``)."""
    kinds = pretrained_kinds()
    files = ", ".join(f"{name}: {kind.file.file_name}" for name, kind in kinds.items())
    parser.add_argument("--tokenizer-kind", choices=list(kinds), default=None,
                        help=f"kind of a pretrained tokenizer checkpoint file ({files})")


def refuse_existing(path: str | Path, flag: str = "--out") -> Path:
    """Never overwrite a user's file: refuse an output path that already exists."""
    path = Path(path)
    if path.exists():
        raise PurrError(f"{path} already exists; choose another {flag} (nothing was overwritten)")
    return path
