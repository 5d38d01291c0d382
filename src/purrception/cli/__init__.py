"""The ``purr`` command: one parser, one module per subcommand group, each a thin layer over the library.

Every module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its subcommands and sets
``func=handler`` on them; a handler takes the parsed ``argparse.Namespace`` and returns an exit code.
User errors (:class:`~purrception.errors.PurrError`) print one line and exit with status 2; the parameters the
message names (in backticks, see :mod:`purrception.errors`) are rewritten into the invoked subcommand's flags by
:func:`flag_message`, the one place the CLI maps parameters to flags. Under torchrun only rank 0 logs below WARNING,
every process joins the job before the command runs, and a failure anywhere ends the job
(:mod:`purrception.distributed`): the first process to fail prints ``purr: error (rank R of W): ...`` and exits
with status 2 (a traceback, for what is not a user error), every other one at most ``purr: stopping: rank R
failed`` and exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import shlex
import sys
from typing import Callable, Sequence

from purrception import distributed
from purrception.distributed import launch_rank
from purrception.errors import PARAMETER, PurrError

__all__ = ["main", "build_parser", "log_level", "COMMAND_MODULES", "PARAMETER_FLAGS", "subcommand_parser",
           "flag_message", "explain_for"]

#: subcommand modules, in the order their commands appear in ``purr --help``
COMMAND_MODULES = [
    "purrception.cli.demo",
    "purrception.cli.data",
    "purrception.cli.tokenizer",
    "purrception.cli.encode",
    "purrception.cli.train",
    "purrception.cli.sample",
    "purrception.cli.edit",
    "purrception.cli.export",
    "purrception.cli.app",
    "purrception.cli.eval",
    "purrception.cli.study",
]


#: library parameters whose name is not the ``dest`` of the flag that sets them; used only where the invoked
#: subcommand has that flag
PARAMETER_FLAGS = {
    "num_inference_steps": "--sample-steps",
    "guidance_scale": "--cfg-scale",
    "class_labels": "--classes",
    "num_per_class": "--num",
    "num_images": "--num",
    "inception_path": "--inception",
    "run_dir": "--out",
    "folder": "--out",
    "tokenizer_path": "--tokenizer",
    "labels_file": "--labels",
}
#: the ``dest`` of a ``--set KEY=VALUE`` option: a parameter with a value that no flag sets becomes ``--set K=V``
OVERRIDES_DEST = "overrides"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="purr", description="Purrception: variational flow matching over VQ latents.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def log_level(verbose: bool, rank: int) -> int:
    """INFO (DEBUG with ``-v``) on rank 0; WARNING on the other ranks of a torchrun job, so each line appears once."""
    if rank != 0:
        return logging.WARNING
    return logging.DEBUG if verbose else logging.INFO


def _configure_logging(verbose: bool, rank: int) -> None:
    where = f" [rank {rank}]" if rank != 0 else ""
    logging.basicConfig(level=log_level(verbose, rank), datefmt="%H:%M:%S",
                        format=f"%(asctime)s %(levelname)s{where} %(name)s: %(message)s")


def subcommand_parser(parser: argparse.ArgumentParser, names: Sequence[str]) -> argparse.ArgumentParser:
    """The parser of a (nested) subcommand: ``["study", "temperature"]`` -> ``purr study temperature``'s."""
    for name in names:
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = subparsers.choices[name]
    return parser


def _invoked_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost subcommand parser that parsed ``args``."""
    while True:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or getattr(args, subparsers[0].dest, None) not in subparsers[0].choices:
            return parser
        parser = subparsers[0].choices[getattr(args, subparsers[0].dest)]


def _long_flag(action: argparse.Action) -> str | None:
    flags = [o for o in action.option_strings if o.startswith("--")]
    return flags[0] if flags else None


def flag_message(message: str, parsers: Sequence[argparse.ArgumentParser]) -> str:
    """A library message with the parameters it names (```name``` or ```name=VALUE```, see
    :mod:`purrception.errors`) written as the flags of ``parsers`` (the first parser that has one wins).

    A parameter is the ``dest`` of a flag (its first long option string), or a name in :data:`PARAMETER_FLAGS`
    whose flag one of the parsers has. ```name``` becomes ``--flag``; ```name=VALUE``` becomes ``--flag`` for an
    on/off flag given the value it sets (``resume=True`` -> ``--resume``) and ``--flag VALUE`` otherwise; a name with
    a value that no flag sets becomes ``--set name=VALUE`` where the parser has ``--set KEY=VALUE``. Any other
    parameter keeps its backticks.
    """
    by_dest: dict[str, argparse.Action] = {}
    by_flag: dict[str, argparse.Action] = {}
    overrides: str | None = None
    for parser in parsers:
        for action in parser._actions:
            flag = _long_flag(action)
            if flag is None:
                continue
            by_dest.setdefault(action.dest, action)
            by_flag.setdefault(flag, action)
            if action.dest == OVERRIDES_DEST and overrides is None:
                overrides = flag

    def rewrite(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        action = by_dest.get(name) or by_flag.get(PARAMETER_FLAGS.get(name, ""))
        if action is None:
            return f"{overrides} {name}={value}" if overrides and value is not None else match.group(0)
        flag = _long_flag(action)
        if value is None:
            return flag
        if action.nargs == 0 and value == str(action.const):
            return flag
        return f"{flag} {value}"

    return PARAMETER.sub(rewrite, message)


def explain_for(*parsers: argparse.ArgumentParser) -> Callable[[str], str]:
    """``message -> message`` with :func:`flag_message` for ``parsers``: what ``purr`` prints, and what ``purr app``
    hands its page for the errors it shows."""
    return lambda message: flag_message(message, parsers)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = "purr " + shlex.join(argv)  # for files that say how they were made
    _configure_logging(args.verbose, launch_rank())
    distributed.on_peer_failure(_print_stopping)
    try:
        if distributed.launch_world_size() > 1:  # join first, so that even a bad option is reported once
            distributed.init_distributed(getattr(args, "device", None))
        return int(args.func(args) or 0)
    except PurrError as err:
        _close_progress_bars()
        return _report_error(flag_message(str(err), [_invoked_parser(parser, args)]), err)
    except KeyboardInterrupt:
        _close_progress_bars()
        print("purr: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        stopped = distributed.peer_failure(err)
        if stopped is not None:
            _print_stopping(stopped)
            return 1
        distributed.claim_failure(type(err).__name__)
        raise
    finally:
        distributed.cleanup_distributed()


def _print_stopping(message: str) -> None:
    print(f"purr: stopping: {message}", file=sys.stderr, flush=True)


def _report_error(message: str, err: PurrError) -> int:
    """Print a user error once per job: by the first process to fail (naming its rank when there are several)."""
    world = distributed.launch_world_size()
    if world == 1:
        print(f"purr: error: {message}", file=sys.stderr)
        return 2
    stopped = distributed.peer_failure(err)
    if stopped is None and distributed.claim_failure(message):
        print(f"purr: error (rank {launch_rank()} of {world}): {message}", file=sys.stderr, flush=True)
        return 2
    _print_stopping(stopped or f"rank {distributed.failed_rank()} failed")
    return 1


def _close_progress_bars() -> None:
    """Close the progress bars an error left open, so that the message starts a line of its own (a bar's line
    ends without a newline while it runs)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
