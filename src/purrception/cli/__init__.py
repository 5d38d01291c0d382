"""The ``purr`` command: one parser, one module per subcommand group, each a thin layer over the library.

Every module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its subcommands and sets
``func=handler`` on them; a handler takes the parsed ``argparse.Namespace`` and returns an exit code.
User errors (:class:`~purrception.errors.PurrError`) print one line and exit with status 2. Under torchrun only
rank 0 logs below WARNING.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys

from purrception.distributed import launch_rank
from purrception.errors import PurrError

__all__ = ["main", "build_parser", "log_level", "COMMAND_MODULES"]

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = "purr " + shlex.join(argv)  # for files that say how they were made
    _configure_logging(args.verbose, launch_rank())
    try:
        return int(args.func(args) or 0)
    except PurrError as err:
        print(f"purr: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("purr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
