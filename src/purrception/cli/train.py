"""``purr train``: train (or resume) any method from a preset, a config file and ``key=value`` overrides.

The same command runs on one process or many: ``torchrun --nproc-per-node 8 -m purrception train ...`` (or
``torchrun ... $(which purr) train ...``) splits every global batch over the processes without changing it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from purrception.data.datasets import DATASETS, get_dataset
from purrception.distributed import cache_first, cleanup_distributed, init_distributed
from purrception.flows.base import METHODS
from purrception.io import default_cache_dir
from purrception.training.config import PRESET_ALIASES, TRAIN_PRESETS, explicit_fields, resolve_config
from purrception.training.loop import train

_PRESET_HELP = ("named run (default: the --data set's own, digits-demo with --shards). digits-*: the embedded digits "
                "on CPU; folder-cpu: digits-demo's small DiT on 2x2 patches (DiT-T/2), 3,500 steps, for your own "
                "folder at 32x32 on CPU; paper-dit-b2 / -l2 / -xl2: paper App. C (batch 256, AdamW 1e-4, EMA 0.9999, "
                "bf16) on 32x32 codes; the tokenizer (vq-f8 or vq-ds8-c2i) comes with the --shards, so one preset per "
                "backbone serves both")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model on token shards (default: the embedded digits)",
                              description="Fields resolve as: defaults <- --preset <- --config <- --method/--set. "
                                          "Multi-GPU: launch the same command with torchrun.")
    p.add_argument("--out", required=True, help="run folder (config.json, metrics.jsonl, checkpoints/)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--shards", default=None, help="token shard folder from `purr encode`")
    data.add_argument("--data", default=None, metavar="NAME|DIR",
                      help=f"a data set ({', '.join(DATASETS)}) or a labelled image folder, tokenized and encoded "
                           "once into the cache (default: digits when no --shards)")
    p.add_argument("--preset", default=None, choices=[*TRAIN_PRESETS, *PRESET_ALIASES], help=_PRESET_HELP)
    p.add_argument("--config", default=None, help="YAML / TOML / JSON file of TrainConfig fields")
    p.add_argument("--method", default=None, choices=sorted(METHODS), help="training objective (default purrception)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any TrainConfig field, e.g. --set steps=500 --set lr=3e-4 --set precision=bf16")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer path recorded in checkpoints and used for sample grids (default: from shards)")
    p.add_argument("--init-from", default=None, metavar="DIT_CHECKPOINT",
                   help="start a new run's trunk from a facebookresearch/DiT or SiT checkpoint of the same size "
                        "(e.g. DiT-XL-2-256x256.pt with --set model=DiT-XL/2 on vq-f8 shards); the head and any "
                        "input or label layer of another shape start fresh. Ignored on --resume (the run's weights "
                        "win); sets init_from")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest checkpoint, with its own config; --set may change "
                        "steps and the logging / checkpoint / sample cadence, not what defines the model or the "
                        "optimisation")
    p.add_argument("--device", default=None,
                   help="cpu or cuda (default: cuda when available); under torchrun each process takes cuda:LOCAL_RANK")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"method={args.method}"] if args.method else [])
    if args.init_from is not None:  # absolute: init_from is pinned, and the same command from elsewhere names one file
        overrides.append(f"init_from={json.dumps(str(Path(args.init_from).resolve()))}")
    dataset = None if args.shards else get_dataset(args.data or "digits")
    preset = args.preset or (dataset.preset if dataset else "digits-demo")
    config = resolve_config(preset, args.config, overrides)
    info = init_distributed(args.device)
    try:
        shards, tokenizer = args.shards, args.tokenizer
        if dataset is not None:
            with cache_first(default_cache_dir()):  # one process per cache prepares the data set; others find it
                prepared = dataset.prepare(progress=info.is_main, device=str(info.device))
            shards, tokenizer = str(prepared.shards.folder), tokenizer or str(prepared.tokenizer_dir)
        result = train(config, shards, args.out, tokenizer_path=tokenizer, resume=args.resume,
                       progress=args.progress, device=str(info.device),
                       explicit=explicit_fields(args.config, overrides))
    finally:
        cleanup_distributed()
    if info.is_main:
        print(json.dumps({"checkpoint": str(result.checkpoint), "step": result.step, "loss": result.last_loss}))
    return 0
