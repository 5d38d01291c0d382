"""Training throughput (images/s) and peak memory of the real engine (``training.loop.train``) for a preset.

Synthetic random token shards of the right shape stand in for real data (no tokenizer, no dataset needed): by default
32x32 codes with K = 16384, d = 4 and 1000 classes, as ImageNet 256x256 through SD ``vq-f8``. Each precision given
is one full run of ``--warmup + --steps`` steps in this process; the first ``--warmup`` steps (CUDA / compile warm-up)
are excluded, the rest are timed from the engine's own ``metrics.jsonl``. Peak memory: ``max_memory_allocated`` on
CUDA; the process's ``ru_maxrss`` on CPU (cumulative over runs, so CPU rows after the first are upper bounds).
``--methods`` repeats every precision for each training objective (default: the preset's). Ratios are to the first
row.

Examples:
    python bench/train_throughput.py --device cuda --preset paper-dit-b2 --precision bf16
    python bench/train_throughput.py --device cuda --preset paper-dit-b2 --precision bf16 fp32 --micro-batch 128
    python bench/train_throughput.py --device cuda --preset paper-dit-b2 --methods purrception cfm --json tp.json
    python bench/train_throughput.py --preset digits-demo --latent 7 --K 128 --classes 10 --precision fp32
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from purrception.data.shards import write_token_shards
from purrception.io import sha256_of_tensor
from purrception.tokenizers.base import TokenizerIdentity
from purrception.training.config import PRECISIONS, TRAIN_PRESETS, resolve_config
from purrception.training.loop import train


def synthetic_shards(folder: Path, items: int, latent: int, K: int, d: int, classes: int) -> Path:
    rng = np.random.default_rng(0)
    codebook = rng.standard_normal((K, d)).astype(np.float32)
    identity = TokenizerIdentity("synthetic", K, d, sha256_of_tensor(torch.from_numpy(codebook)))
    codes = rng.integers(0, K, size=(items, latent, latent))
    labels = rng.integers(0, classes, size=items)
    return write_token_shards(folder, codes, labels, codebook, identity, classes, {"kind": "synthetic"}, {})


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads"


def measure(args: argparse.Namespace, shards: Path, precision: str, work: Path, method: str | None = None) -> dict:
    overrides = [f"steps={args.warmup + args.steps}", f"log_every={args.warmup}", f"precision={precision}",
                 f"compile={json.dumps(args.compile)}", "ckpt_every=1000000000", "keep_last=1", "sample_every=0",
                 "tensorboard=false", *args.set]
    if args.micro_batch:
        overrides.append(f"micro_batch_size={args.micro_batch}")
    if method:
        overrides.append(f"method={method}")
    config = resolve_config(args.preset, overrides=overrides)
    run = work / f"run-{config.method}-{precision}"
    t0 = time.perf_counter()
    train(config, shards, run, progress=False, device=args.device)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if r["step"] > args.warmup]
    seconds = sum(config.batch_size * (r["step"] - p["step"]) / r["images_per_s"] for p, r in zip(records, records[1:])
                  if r["step"] > args.warmup)
    images = config.batch_size * (timed[-1]["step"] - args.warmup)
    peak_gb = records[-1].get("max_memory_gb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    for ckpt in (run / "checkpoints").glob("*.pt"):
        ckpt.unlink()  # a DiT-XL/2 checkpoint is several GB; the folder is temporary anyway
    return {"config": config, "images_per_s": images / seconds, "step_s": seconds / (images / config.batch_size),
            "peak_gb": peak_gb, "wall_s": wall, "loss": timed[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="paper-dit-b2", choices=sorted(TRAIN_PRESETS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["bf16"], choices=PRECISIONS)
    parser.add_argument("--methods", nargs="+", default=[None], metavar="METHOD",
                        help="training objectives to measure, each at every precision (default: the preset's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks")
    parser.add_argument("--micro-batch", type=int, default=0, help="micro-batch (0: the whole global batch at once)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (also the timing window)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (a multiple of --warmup)")
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--K", type=int, default=16384)
    parser.add_argument("--d", type=int, default=4)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--items", type=int, default=8192, help="synthetic shard size")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more TrainConfig overrides")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows to PATH as JSON")
    args = parser.parse_args()
    if args.steps % args.warmup:
        raise SystemExit("--steps must be a multiple of --warmup (the engine logs every --warmup steps)")

    with tempfile.TemporaryDirectory(prefix="purr-train-bench-") as tmp:
        work = Path(tmp)
        shards = synthetic_shards(work / "shards", args.items, args.latent, args.K, args.d, args.classes)
        rows = []
        for method in args.methods:
            for precision in args.precision:
                rows.append((precision, measure(args, shards, precision, work, method)))
                print(f"  measured {rows[-1][1]['config'].method} {precision}: "
                      f"{rows[-1][1]['images_per_s']:.1f} images/s", file=sys.stderr, flush=True)
                gc.collect()
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()

    config = rows[0][1]["config"]
    micro = args.micro_batch or config.batch_size
    settings = (f"preset {args.preset}: {config.model}, {args.latent}x{args.latent} codes, K={args.K}, d={args.d}, "
                f"global batch {config.batch_size} (micro-batch {micro}), compile={args.compile}, "
                f"{args.steps} timed steps after {args.warmup} warm-up steps, 1 process")
    print(f"machine: {machine(args.device)}")
    print(settings)
    print("| method | precision | images/s | s/step | peak memory (GiB) | images/s ratio | run wall (s) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    base = rows[0][1]["images_per_s"]
    for precision, r in rows:
        print(f"| {r['config'].method} | {precision} | {r['images_per_s']:,.1f} | {r['step_s']:.3f} | "
              f"{r['peak_gb']:.2f} | {r['images_per_s'] / base:.2f} | {r['wall_s']:.1f} |")
    if args.json:
        records = [{"method": r["config"].method, "precision": precision,
                    **{k: v for k, v in r.items() if k != "config"}} for precision, r in rows]
        Path(args.json).write_text(json.dumps({"machine": machine(args.device), "settings": settings,
                                               "rows": records}, indent=2) + "\n")


if __name__ == "__main__":
    main()
