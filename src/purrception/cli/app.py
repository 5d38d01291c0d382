"""``purr app RUN_OR_PIPELINE``: a local web page for sampling, with the posterior's uncertainty.

A thin layer over :mod:`purrception.app`: load the pipeline, then serve the page (gradio, the ``[app]`` extra,
imported only here) on ``--host``/``--port``, localhost by default. Nothing is fetched from the network.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import sys
from pathlib import Path

from purrception.cli.common import positive_int

__all__ = ["register", "MISSING_EXTRA", "gradio_installed"]

log = logging.getLogger(__name__)

MISSING_EXTRA = "purr app needs the [app] extra: pip install 'purrception[app]'"


def _port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("app", help="a local web page for sampling, with the posterior's uncertainty",
                              description="Serve a page with the sampler's knobs (classes, number, tau or a tau "
                                          "schedule, guidance, steps, solver, seed), a grid of results, the "
                                          "entropy maps and top-k codes of a clicked image, and downloads of the "
                                          "images and of the purr sample command that makes them; and an Edit tab "
                                          "that inpaints an image of the grid or an upload (purr edit), with the "
                                          "entropy maps of a clicked completion. Needs the [app] extra.")
    p.add_argument("source", metavar="RUN_OR_PIPELINE",
                   help="run folder (its newest checkpoint), checkpoint file or saved pipeline folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the page)")
    p.add_argument("--port", type=_port, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--max-images", type=positive_int, default=16,
                   help="largest grid (or number of completions) one request may ask for")
    p.add_argument("--max-steps", type=positive_int, default=64, help="most sample steps one request may ask for")
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def gradio_installed() -> bool:
    """Is gradio importable here (checked without importing it, which takes seconds)?"""
    try:
        return importlib.util.find_spec("gradio") is not None
    except (ImportError, ValueError):
        return False


def run(args: argparse.Namespace) -> int:
    if not gradio_installed():
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    from purrception.app.core import AppSession, Limits
    from purrception.cli import build_parser, explain_for, subcommand_parser
    from purrception.cli.edit import edit_command
    from purrception.cli.sample import sample_command
    from purrception.pipeline import PurrceptionPipeline

    limits = Limits(max_images=args.max_images, max_steps=args.max_steps)
    pipe = PurrceptionPipeline.from_pretrained(args.source, args.device)
    root = build_parser()
    # the page's errors name this command's flags and purr sample's and purr edit's, as its reproducing commands do
    explain = explain_for(*(subcommand_parser(root, [name]) for name in ("app", "sample", "edit")))
    session = AppSession(pipe, Path(args.source).resolve(), limits, command=sample_command, explain=explain,
                         edit_command=edit_command)
    try:
        from purrception.app.page import serve
    except ImportError as err:   # gradio is there but broken (e.g. a dependency of it is missing)
        session.close()
        print(f"{MISSING_EXTRA} ({err})", file=sys.stderr)
        return 2
    if not _is_loopback(args.host):
        log.warning("serving on %s: anyone who can reach this machine can use the page", args.host)
    log.info("purr app: starting on http://%s:%d (Ctrl-C to stop)", args.host, args.port)
    serve(session, args.host, args.port)
    return 0
