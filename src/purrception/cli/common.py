"""Argument helpers shared by several subcommands (one definition per option)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from purrception.errors import PurrError
from purrception.sampling.schedules import SHAPES
from purrception.sampling.settings import SamplerSettings
from purrception.sampling.solvers import SOLVERS
from purrception.tokenizers.registry import pretrained_kinds

__all__ = ["positive_int", "positive_float", "seed_int", "integer_or_text", "DeprecatedAlias", "add_sample_steps_arg",
           "add_sampler_args", "add_generator_args", "sampler_from_args", "add_tokenizer_kind_arg", "refuse_existing"]

log = logging.getLogger(__name__)


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


def integer_or_text(text: str) -> int | str:
    """An argparse ``type`` that only converts: integer text -> ``int``, anything else unchanged, for a value whose
    rule lives in the library (``SamplerSettings`` refuses ``"abc"`` and ``0`` with one line naming the field)."""
    try:
        return int(text)
    except ValueError:
        return text


class DeprecatedAlias(argparse.Action):
    """An old spelling of a flag, kept for one release: it sets the new flag's ``dest`` and logs a warning that names
    the new flag. Add it after the new flag, so that messages (``purrception.cli.flag_message``) name the new one."""

    def __init__(self, option_strings: list[str], dest: str, new_flag: str = "", **kwargs) -> None:
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        log.warning("%s is deprecated and will be removed in the next release; use %s", option_string, self.new_flag)
        setattr(namespace, self.dest, values)


def add_sample_steps_arg(parser: argparse.ArgumentParser, default: int, alias: bool = True) -> None:
    """``--sample-steps`` (``SamplerSettings.sample_steps``), and with ``alias`` its deprecated spelling
    ``--steps``."""
    parser.add_argument("--sample-steps", type=integer_or_text, default=default,
                        help=f"integration steps T of the sampler (default {default})")
    if alias:
        parser.add_argument("--steps", dest="sample_steps", type=integer_or_text, action=DeprecatedAlias,
                            new_flag="--sample-steps", help="deprecated spelling of --sample-steps")


def add_sampler_args(parser: argparse.ArgumentParser, sample_steps: int = 100) -> None:
    """``--sample-steps --tau --cfg-scale --solver`` with the paper's defaults (Euler, 100 steps, tau 1, no CFG), and
    the deprecated ``--steps``. The values are checked by :class:`SamplerSettings` (:func:`sampler_from_args`)."""
    shapes = "|".join(SHAPES)
    add_sample_steps_arg(parser, sample_steps)
    parser.add_argument("--tau", default=1.0,
                        help=f"softmax temperature, eq. 15: a number > 0 or a schedule {shapes}:START:END over t "
                             "(e.g. linear:1.2:0.6; default 1.0)")
    parser.add_argument("--cfg-scale", default=1.0,
                        help=f"classifier-free guidance scale (1 = off): a number or {shapes}:START:END")
    parser.add_argument("--solver", default="euler",
                        help=f"ODE solver: {', '.join(SOLVERS)}; adaptive ones take NAME:TOL, e.g. dopri5:1e-4 "
                             "(dopri5, bosh3, adaptive_heun need torchdiffeq; default euler)")


def sampler_from_args(args: argparse.Namespace) -> SamplerSettings:
    """The checked :class:`SamplerSettings` of :func:`add_sampler_args`' flags (a bad value: a PurrError naming the
    field, which ``purr`` prints as its flag)."""
    return SamplerSettings(sample_steps=args.sample_steps, tau=args.tau, cfg_scale=args.cfg_scale, solver=args.solver)


def add_generator_args(parser: argparse.ArgumentParser) -> None:
    """The options of every command that samples a trained generator (``purr sample``, ``purr edit``): ``--seed
    --method --tokenizer --tokenizer-kind --batch-size --device`` and the sampler's knobs (:func:`add_sampler_args`)."""
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--method", default=None, help="assert the checkpoint's method")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer path (default: the one recorded in the checkpoint)")
    add_tokenizer_kind_arg(parser)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--device", default="cpu")
    add_sampler_args(parser)


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
