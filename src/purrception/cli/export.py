"""``purr export RUN_OR_CHECKPOINT --out DIR``: a pickle-free pipeline folder (``PurrceptionPipeline.save_pretrained``).

``--eval-report`` copies the measured scores of a ``purr eval`` JSON report into the folder's config and model
card; the report must be of the same checkpoint (method and step).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from purrception.cli.common import add_tokenizer_kind_arg
from purrception.errors import PurrError
from purrception.evaluation.evaluate import REPORT_VERSION
from purrception.formats import read_version
from purrception.io import load_json
from purrception.pipeline import PurrceptionPipeline

__all__ = ["register", "scores_from_report"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="save a run or checkpoint as a pickle-free pipeline folder")
    p.add_argument("checkpoint", help="checkpoint file, run folder (its newest checkpoint) or saved pipeline folder")
    p.add_argument("--out", required=True, help="new (or empty) folder for the pipeline")
    p.add_argument("--eval-report", default=None, help="a `purr eval` JSON report of this checkpoint: its scores "
                                                       "go into config.json and the model card")
    p.add_argument("--tokenizer", default=None, help="tokenizer path (default: the one recorded in the checkpoint)")
    add_tokenizer_kind_arg(p)
    p.set_defaults(func=run)


def scores_from_report(report: Any, method: str, step: int | None, path: str) -> dict[str, Any]:
    """The scalar scores of a ``purr eval`` report, with the protocol and sampler settings that produced them."""
    if isinstance(report, dict):  # reports from before the format was recorded are version 1
        read_version(report, "eval report", path, REPORT_VERSION, "run `purr eval` again")
    try:
        ckpt, sampling, metrics = report["checkpoint"], report["sampling"], report["metrics"]
    except (KeyError, TypeError):
        raise PurrError(f"{path} is not a `purr eval` report (no checkpoint/sampling/metrics); pass the JSON that "
                        "`purr eval` wrote") from None
    if ckpt.get("method") != method or (step is not None and ckpt.get("step") != step):
        raise PurrError(f"{path} scores {ckpt.get('method')} step {ckpt.get('step')}, but the export is {method} "
                        f"step {step}; pass the report of this checkpoint")
    context = {"protocol": report.get("protocol"), "num_samples": sampling.get("num_samples"),
               # reports before the name sample_steps recorded it as steps
               "sample_steps": sampling.get("sample_steps", sampling.get("steps")), "solver": sampling.get("solver"),
               "tau": sampling.get("tau"), "cfg_scale": sampling.get("cfg_scale")}
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    return {**context, **scalars}


def run(args: argparse.Namespace) -> int:
    pipe = PurrceptionPipeline.from_pretrained(args.checkpoint, "cpu", args.tokenizer, args.tokenizer_kind)
    scores = None
    if args.eval_report:
        report = load_json(args.eval_report, "eval report")
        scores = scores_from_report(report, pipe.method.name, pipe.info.get("step"), args.eval_report)
    folder = pipe.save_pretrained(args.out, metrics=scores)
    log.info("exported %s to %s (load it with PurrceptionPipeline.from_pretrained or `purr sample`)",
             args.checkpoint, folder)
    return 0
