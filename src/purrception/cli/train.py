"""``purr train``: train (or resume) any method from a preset, a config file and ``key=value`` overrides."""

from __future__ import annotations

import argparse
import json

from purrception.demo import default_cache_dir, ensure_embedded_shards, ensure_embedded_tokenizer
from purrception.flows.base import METHODS
from purrception.training.config import TRAIN_PRESETS, resolve_config
from purrception.training.loop import train


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model on token shards (default: the embedded digits)",
                              description="Fields resolve as: defaults <- --preset <- --config <- --method/--set.")
    p.add_argument("--out", required=True, help="run folder (config.json, metrics.jsonl, checkpoints/)")
    p.add_argument("--shards", default=None, help="token shard folder from `purr encode` (default: embedded digits)")
    p.add_argument("--preset", default="mnist-demo", choices=sorted(TRAIN_PRESETS), help="named run (default mnist-demo)")
    p.add_argument("--config", default=None, help="YAML / TOML / JSON file of TrainConfig fields")
    p.add_argument("--method", default=None, choices=sorted(METHODS), help="training objective (default purrception)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any TrainConfig field, e.g. --set steps=500 --set lr=3e-4")
    p.add_argument("--tokenizer", default=None, help="tokenizer path to record in checkpoints (default: from shards)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"method={args.method}"] if args.method else [])
    config = resolve_config(args.preset, args.config, overrides)
    shards, tokenizer = args.shards, args.tokenizer
    if shards is None:
        cache = default_cache_dir()
        tok_dir = ensure_embedded_tokenizer(cache)
        shards, tokenizer = str(ensure_embedded_shards(cache, tok_dir).folder), tokenizer or str(tok_dir)
    result = train(config, shards, args.out, tokenizer_path=tokenizer, resume=args.resume, device=args.device)
    print(json.dumps({"checkpoint": str(result.checkpoint), "step": result.step, "loss": result.last_loss}))
    return 0
