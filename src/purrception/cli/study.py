"""``purr study convergence | zloss | head | temperature | cfg``: the paper's studies on an embedded data set (the
digits, scored by the digits protocol; the emoji, scored by the folder protocol against their image folder) or on
any shards, resumable, writing a table (.md), plots (.png) and results.json into ``--out``."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from typing import Any

from purrception.checkpoint import resolve_checkpoint
from purrception.cli.common import add_sample_steps_arg, positive_int, seed_int
from purrception.data.datasets import DATASETS, get_dataset
from purrception.distributed import DistInfo, cache_first, init_distributed
from purrception.errors import PurrError
from purrception.evaluation.evaluate import EvalSettings
from purrception.flows.base import METHODS, get_method
from purrception.io import default_cache_dir
from purrception.sampling.schedules import SHAPES, as_spec
from purrception.sampling.settings import SamplerSettings
from purrception.studies import studies
from purrception.studies.core import StudyStore, TrackSettings
from purrception.tokenizers.store import load_tokenizer
from purrception.training.config import PRESET_ALIASES, TRAIN_PRESETS, resolve_config


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise argparse.ArgumentTypeError("the list is empty")
    return values


def _seeds(text: str) -> tuple[int, ...]:
    seeds = tuple(seed_int(s.strip()) for s in text.split(",") if s.strip())
    if not seeds:
        raise argparse.ArgumentTypeError("the list is empty")
    if len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} names a seed twice")
    return seeds


TAU_HELP = f"sampling temperature: a number > 0 or a schedule {'|'.join(SHAPES)}:START:END (default 1)"


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="study folder; re-running the same command resumes it")
    p.add_argument("--reference", default=None, metavar="DIR",
                   help="score with the folder protocol against this labelled image folder (the one the shards were "
                        "encoded from); default: the digits protocol, or the emoji folder for --data emoji")
    p.add_argument("--num-samples", type=positive_int, default=500, help="samples per evaluation (default 500)")
    add_sample_steps_arg(p, 50, alias=False)
    p.add_argument("--cfg-scale", default=1.0, help="classifier-free guidance scale (1 = off): a number or a schedule")
    p.add_argument("--seed", type=seed_int, default=0, help="sampling seed")
    p.add_argument("--device", default="cpu")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="digits-demo", choices=[*TRAIN_PRESETS, *PRESET_ALIASES])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="TrainConfig field shared by every run, e.g. --set steps=3000")
    p.add_argument("--eval-every", type=positive_int, default=500, help="evaluate every N training steps")
    p.add_argument("--seeds", type=_seeds, default=(0,), help="comma-separated training seeds (default 0)")
    p.add_argument("--tau", default=1.0, help=TAU_HELP + " for methods with logits (paper Fig. 3 samples at 0.9)")
    p.add_argument("--data", default="digits", metavar="NAME|DIR",
                   help=f"data set to train on when no --shards: {', '.join(DATASETS)} (default digits), or a "
                        "labelled image folder; scored by its own protocol")
    p.add_argument("--shards", default=None, help="token shards (default: the embedded --data)")
    p.add_argument("--tokenizer", default=None, help="tokenizer of --shards (default: the embedded one)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("study", help="reproduce the paper's studies (convergence, temperature, z-loss, ...)")
    sub = p.add_subparsers(dest="study", metavar="STUDY")
    sub.required = True
    c = sub.add_parser("convergence", help="FID vs steps for every method; Purrception's speed-up (Sec. 4.1)")
    c.add_argument("--methods", default="purrception,cfm,cfm-endpoint,dfm", help="comma-separated methods")
    z = sub.add_parser("zloss", help="Purrception with and without the z-loss (App. D)")
    z.add_argument("--weights", type=_floats, default=[0.0, 1e-5], help="z-loss weights (default 0,1e-5)")
    h = sub.add_parser("head", help="full vs factorised K-way head at equal steps and equal wall time")
    h.add_argument("--ranks", default="0,16", help="head ranks; 0 = the full head (default 0,16)")
    for q in (c, z, h):
        _eval_args(q)
        _train_args(q)
        q.set_defaults(func=run_tracked)
    for name, field, default, help_ in (("temperature", "tau", "0.3,0.5,0.7,0.8,0.9,1.0,1.2,1.5", "temperatures"),
                                        ("cfg", "cfg_scale", "1.0,1.5,2.0,3.0,4.0", "CFG scales")):
        s = sub.add_parser(name, help=f"FID and class accuracy vs {help_} for one or more checkpoints")
        s.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                       help="checkpoint files or run folders (several, e.g. one per training seed: mean ± std)")
        s.add_argument("--values", type=_floats, default=_floats(default), help=f"{help_} (default {default})")
        s.add_argument("--tau", default=1.0, help=TAU_HELP + " when sweeping CFG")
        s.add_argument("--data", default=None, metavar="NAME|DIR",
                       help=f"the data set the checkpoint was trained on ({', '.join(DATASETS)}, or its image "
                            "folder), to score with its protocol; default: the checkpoint's default protocol, or "
                            "the folder protocol with --reference")
        _eval_args(s)
        s.set_defaults(func=run_sweep, field=field)


@dataclass(frozen=True)
class StudyData:
    """What a study trains on and how it scores: shards, their tokenizer, the protocol and its reference."""

    shards: str
    tokenizer: str
    protocol: str
    reference: str


def _scoring(args: argparse.Namespace, data: str | None) -> tuple[str, str]:
    """The protocol and reference: ``--reference`` (the folder protocol), else the data set's own ("" = the
    protocol's default), else the checkpoint's default protocol."""
    if args.reference:
        return "folder", args.reference
    if data is None:
        return "", ""
    dataset = get_dataset(data)
    with cache_first(default_cache_dir()):  # one process per cache makes an exported reference folder first
        return dataset.protocol, dataset.reference()


def _data(args: argparse.Namespace) -> StudyData:
    """The shards and tokenizer to train on (the given ones, or the data set's, which rank 0 prepares first) and the
    protocol that scores them."""
    if args.shards:
        if not args.tokenizer:
            raise PurrError("--shards needs --tokenizer (to decode samples for evaluation)")
        return StudyData(args.shards, args.tokenizer, *_scoring(args, None))
    with cache_first(default_cache_dir()):
        prepared = get_dataset(args.data).prepare(device=args.device)
    protocol, reference = ("folder", args.reference) if args.reference else (prepared.protocol, prepared.reference)
    return StudyData(str(prepared.shards.folder), str(prepared.tokenizer_dir), protocol, reference)


def _eval_settings(args: argparse.Namespace, protocol: str, reference: str, tau: Any = 1.0) -> EvalSettings:
    """The evaluation of every point (its sampler settings checked by ``SamplerSettings``)."""
    return EvalSettings(num_samples=args.num_samples, seed=args.seed, sample_steps=args.sample_steps, tau=tau,
                        cfg_scale=args.cfg_scale, protocol=protocol, reference=reference,
                        cache_dir=str(default_cache_dir()))


def _recorded(settings: EvalSettings) -> dict[str, Any]:
    """EvalSettings as the study's settings record them (schedules by their spec)."""
    return {k: as_spec(v) for k, v in vars(settings).items()}


def _print_main(info: DistInfo, text: str) -> None:
    """The command's result on stdout, once per job (rank 0)."""
    if info.is_main:
        print(text)


def run_tracked(args: argparse.Namespace) -> int:
    tau = SamplerSettings(tau=args.tau).tau
    info = init_distributed(args.device)
    data = _data(args)
    shards, tokenizer_path = data.shards, data.tokenizer
    tokenizer = load_tokenizer(tokenizer_path)
    evaluation = _eval_settings(args, data.protocol, data.reference)
    base = resolve_config(args.preset, overrides=args.overrides).to_dict()
    seeds = args.seeds
    track = TrackSettings(base=base, eval_every=args.eval_every, seeds=seeds, eval=evaluation,
                          tau_for=lambda m: tau if get_method(m).has_temperature else 1.0)
    settings = {"study": args.study, "train": base, "eval_every": args.eval_every, "seeds": list(seeds),
                "tau": as_spec(tau), "eval": _recorded(evaluation), "shards": shards}
    if args.study == "convergence":
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise PurrError(f"unknown method {unknown[0]!r}; choose from {', '.join(sorted(METHODS))}")
        with StudyStore(args.out, {**settings, "methods": methods}, args.command_line) as store:
            result = studies.convergence(store, track, methods, shards, tokenizer_path, tokenizer, info)
        _print_main(info, json.dumps({"speedups": result, "table": str(store.folder / "convergence.md")}, indent=2))
    elif args.study == "zloss":
        with StudyStore(args.out, {**settings, "weights": args.weights}, args.command_line) as store:
            studies.zloss(store, track, args.weights, shards, tokenizer_path, tokenizer, info)
        _print_main(info, json.dumps({"table": str(store.folder / "zloss.md")}))
    else:
        ranks = [int(r) for r in args.ranks.split(",")]
        with StudyStore(args.out, {**settings, "ranks": ranks}, args.command_line) as store:
            result = studies.head(store, track, ranks, shards, tokenizer_path, tokenizer, info)
        tables = [str(store.folder / "head.md"), str(store.folder / "head_wall_time.md")]
        _print_main(info, json.dumps({"equal_wall_time": result, "tables": tables}, indent=2))
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    info = init_distributed(args.device)
    ckpts = [resolve_checkpoint(c) for c in args.checkpoints]
    methods = sorted({c.method_name for c in ckpts})
    if len(methods) > 1:
        raise PurrError(f"the checkpoints are of different methods ({', '.join(methods)}); sweep one method at a time")
    paths = [str(c.path) for c in ckpts]
    if len(set(paths)) < len(paths):
        raise PurrError("the same checkpoint is given twice; pass each run folder or checkpoint once")
    base = _eval_settings(args, *_scoring(args, args.data), tau=args.tau)
    method = ckpts[0].build_method()
    for value in args.values:  # the method's own check, before any sampling (e.g. no tau sweep without logits)
        method.check_sampler(replace(base, **{args.field: value}).sampler())
    with StudyStore(args.out, {"study": args.field, "checkpoints": paths, "steps": [c.step for c in ckpts],
                               "eval": _recorded(base)}, args.command_line) as store:
        pairs = [(c, c.load_tokenizer()) for c in ckpts]
        points = studies.sampler_sweep(store, pairs, base, args.field, args.values, info)
    _print_main(info, json.dumps([{args.field: p[args.field], "fid": p["fid"], "class_accuracy": p["class_accuracy"]}
                                  for p in points], indent=2))
    return 0
