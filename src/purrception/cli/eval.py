"""``purr eval CHECKPOINT | RUN | PIPELINE``: FID (and IS, precision/recall, class accuracy), every setting in a
JSON report.

Multi-GPU / multi-process: ``torchrun --nproc-per-node 8 -m purrception eval CKPT ...`` (gloo on CPU, nccl on GPU);
exactly ``--num-samples`` images are generated in total and the numbers do not depend on the world size.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from purrception.checkpoint import resolve_checkpoint
from purrception.cli.common import add_sampler_args, add_tokenizer_kind_arg, positive_int, sampler_from_args, seed_int
from purrception.distributed import cleanup_distributed, init_distributed
from purrception.errors import PurrError
from purrception.evaluation.evaluate import PROTOCOLS, EvalSettings, evaluate_generator, format_table
from purrception.generation.generator import Generator
from purrception.io import atomic_save_json
from purrception.locks import file_lock
from purrception.pipeline import PurrceptionPipeline, is_saved_pipeline
from purrception.tokenizers.base import VQTokenizer

__all__ = ["register", "run"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="FID & co. of a checkpoint's samples, with a reproducible JSON report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint file, run folder (its newest checkpoint), or a pipeline folder "
                                      "written by purr export")
    p.add_argument("--method", default=None, help="assert the checkpoint's method (it is read from the checkpoint)")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default=None,
                   help="; ".join(f"{k}: {v.summary}" for k, v in PROTOCOLS.items())
                   + " (default: digits for 28x28 grey models, else inception)")
    p.add_argument("--reference", default=None,
                   help="reference images: digits:train|heldout|all, an image folder, an ADM .npz batch (arr_0), "
                        "or a token-shard folder (decoded with the checkpoint's tokenizer); for the folder protocol "
                        "the labelled folder the generator was trained on (class sub-folders, or flat with "
                        "--reference-labels); default: digits:train for the digits protocol")
    p.add_argument("--reference-labels", default=None, metavar="FILE",
                   help="folder protocol: <path>,<label> lines for a flat --reference folder (as purr encode --labels)")
    p.add_argument("--inception", default=None, metavar="PATH",
                   help="torch-fidelity's pt_inception-2015-12-05-6726825d.pth (inception protocol; never downloaded)")
    p.add_argument("-n", "--num-samples", type=positive_int, default=1000, help="samples in total (default 1000)")
    p.add_argument("--fid-subsets", type=positive_int, nargs="*", default=[], metavar="N",
                   help="also report FID on the first N samples (e.g. 10000 with -n 50000)")
    p.add_argument("--seed", type=seed_int, default=0, help="sample i uses noise seeded by (seed, i)")
    p.add_argument("--batch-size", type=positive_int, default=100, help="sampling batch per process")
    p.add_argument("--feature-batch-size", type=positive_int, default=100, help="feature-extraction batch")
    p.add_argument("--raw-weights", action="store_true", help="sample with the raw weights instead of the EMA")
    p.add_argument("--no-precision-recall", action="store_true",
                   help="skip k-NN precision/recall (O(N^2) distances)")
    p.add_argument("--tokenizer", default=None, help="tokenizer path (default: the one recorded in the checkpoint)")
    add_tokenizer_kind_arg(p)
    p.add_argument("--cache-dir", default=None, help="reference statistics and the judge classifiers "
                                                     "(default $PURR_CACHE or ~/.cache/purrception)")
    p.add_argument("--out", default=None, help="JSON report path (default: <checkpoint>.eval-<protocol>-n<N>.json)")
    p.add_argument("--export-npz", default=None, metavar="PATH",
                   help="also save the samples for the ADM evaluation suite (arr_0 uint8 N x H x W x 3)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_sampler_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from purrception.io import default_cache_dir

    sampler = sampler_from_args(args)
    info = init_distributed(args.device)
    try:
        generator, tokenizer, stem = _generator(args, info.device)
        settings = EvalSettings(
            num_samples=args.num_samples, seed=args.seed, batch_size=args.batch_size, sample_steps=sampler.sample_steps,
            tau=sampler.tau, cfg_scale=sampler.cfg_scale, solver=sampler.solver, ema=not args.raw_weights,
            protocol=args.protocol or "", reference=args.reference or "", fid_subsets=tuple(args.fid_subsets),
            reference_labels=args.reference_labels or "",
            precision_recall=not args.no_precision_recall, inception_path=args.inception or "",
            cache_dir=str(args.cache_dir or default_cache_dir()), feature_batch_size=args.feature_batch_size)
        # --out: one writer of the report (rank 0, which writes it) for the whole evaluation
        with file_lock(args.out, param="out") if args.out and info.is_main else contextlib.nullcontext():
            report = evaluate_generator(generator, tokenizer, settings, info, export_npz=args.export_npz,
                                        progress=True)
            if report is not None:
                _write_report(report, args, stem, sampler)
        return 0
    finally:
        cleanup_distributed()


def _write_report(report: dict[str, Any], args: argparse.Namespace, stem: Path, sampler: Any) -> None:
    out = Path(args.out) if args.out else stem.with_name(
        f"{stem.name}.eval-{report['protocol']}-n{args.num_samples}.json")
    # the sampler's flags as checked and recorded (a schedule by its spec), the others as given
    report["command"] = {**{k: v for k, v in vars(args).items() if k != "func"}, **sampler.record()}
    atomic_save_json(out, report)
    print(format_table(report))
    print(f"report: {out}")


def _generator(args: argparse.Namespace, device: torch.device) -> tuple[Generator, VQTokenizer, Path]:
    """What to sample from, its tokenizer, and the path the default report is named after (beside it)."""
    if is_saved_pipeline(args.checkpoint):
        if args.raw_weights:
            raise PurrError(f"{args.checkpoint} is a saved pipeline, which holds only the EMA weights; drop "
                            "--raw-weights or evaluate the run it was exported from")
        pipe = PurrceptionPipeline.from_pretrained(args.checkpoint, device, args.tokenizer, args.tokenizer_kind,
                                                   args.method)
        return pipe.generator(), pipe.tokenizer, Path(args.checkpoint).resolve()
    ckpt = resolve_checkpoint(args.checkpoint, args.method)
    tokenizer = ckpt.load_tokenizer(args.tokenizer, args.tokenizer_kind)
    return Generator.from_checkpoint(ckpt, ema=not args.raw_weights), tokenizer, ckpt.path.with_suffix("")
