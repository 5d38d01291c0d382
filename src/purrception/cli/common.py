"""Argument helpers shared by several subcommands (one definition per option)."""

from __future__ import annotations

import argparse
from pathlib import Path

from purrception.errors import PurrError
from purrception.flows.base import SamplerSettings

__all__ = ["positive_int", "positive_float", "add_sampler_args", "sampler_from_args", "refuse_existing"]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def add_sampler_args(parser: argparse.ArgumentParser, steps: int = 100) -> None:
    """``--steps --tau --cfg-scale --solver`` with the paper's defaults (Euler, 100 steps, tau 1, no CFG)."""
    parser.add_argument("--steps", type=positive_int, default=steps, help=f"integration steps T (default {steps})")
    parser.add_argument("--tau", type=positive_float, default=1.0, help="softmax temperature, eq. 15 (default 1.0)")
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    parser.add_argument("--solver", default="euler", help="ODE solver (default euler)")


def sampler_from_args(args: argparse.Namespace) -> SamplerSettings:
    return SamplerSettings(steps=args.steps, tau=args.tau, cfg_scale=args.cfg_scale, solver=args.solver)


def refuse_existing(path: str | Path, flag: str = "--out") -> Path:
    """Never overwrite a user's file: refuse an output path that already exists."""
    path = Path(path)
    if path.exists():
        raise PurrError(f"{path} already exists; choose another {flag} (nothing was overwritten)")
    return path
