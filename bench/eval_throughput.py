"""Evaluation throughput: FID-Inception features per second, and a `purr eval` run under torchrun.

Usage (a CUDA machine is best; CPU works with --device cpu and small numbers):

    python bench/eval_throughput.py --device cuda --images 2000 --workdir /tmp/evalbench

1. Builds the FID Inception-v3 with random weights (the timing does not depend on the weights) and measures
   images/s for 256x256 uint8 inputs, fp32, at a few batch sizes: this bounds the feature cost of FID-50k.
2. Trains a tiny tokenizer and a tiny checkpoint on the embedded digits, then runs
   ``torchrun --nproc-per-node P -m purrception eval`` on it (nccl on CUDA, gloo on CPU) and prints the report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch


def inception_throughput(device: str, images: int, batch_sizes: list[int]) -> None:
    from purrception.evaluation.inception import FIDInceptionV3

    model = FIDInceptionV3().to(device)
    for bs in batch_sizes:
        x = torch.randint(0, 256, (bs, 3, 256, 256), dtype=torch.uint8, device=device)
        with torch.no_grad():
            model(x)  # warm-up
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            done = 0
            while done < images:
                model(x)
                done += bs
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(f"inception fp32 256x256 batch {bs}: {done / dt:.1f} images/s on {device} "
              f"(FID-50k features ~ {50000 / (done / dt):.0f} s)")


def tiny_checkpoint(workdir: Path) -> Path:
    from purrception.data.embedded import load_embedded_mnist
    from purrception.data.embedded_shards import write_embedded_shards
    from purrception.tokenizers.conv_vq import ConvVQConfig
    from purrception.tokenizers.store import save_tokenizer
    from purrception.tokenizers.train import TokenizerTrainConfig, train_tokenizer
    from purrception.training.config import TrainConfig
    from purrception.training.loop import train

    tok = train_tokenizer(load_embedded_mnist("train").images, ConvVQConfig(codebook_size=32, width=8),
                         TokenizerTrainConfig(steps=40, batch_size=32), progress=False)
    tok_dir = save_tokenizer(tok, workdir / "tok")
    write_embedded_shards(tok, "train", workdir / "shards", str(tok_dir))
    config = TrainConfig(model="DiT-T/1", model_overrides={"hidden_size": 32, "depth": 1, "num_heads": 2}, steps=4,
                         batch_size=8, lr=1e-3, ema_decay=0.9, log_every=1, ckpt_every=4, seed=0)
    return train(config, workdir / "shards", workdir / "run", tokenizer_path=str(tok_dir), progress=False).checkpoint


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=2000, help="images per throughput measurement")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--procs", type=int, default=1, help="torchrun processes for the eval run")
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--workdir", default="/tmp/evalbench")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    inception_throughput(args.device, args.images, args.batch_sizes)

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = tiny_checkpoint(workdir)
    out = workdir / "eval.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.procs),
           "-m", "purrception", "eval", str(ckpt), "-n", str(args.num_samples), "--sample-steps", "20",
           "--device", args.device.split(":")[0], "--cache-dir", str(workdir / "cache"), "--out", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "4"})
    print(f"purr eval ({args.procs} process(es), N={args.num_samples}) wall {time.perf_counter() - t0:.1f} s")
    report = json.loads(out.read_text())
    print(json.dumps({k: report[k] for k in ("metrics", "distributed", "seconds")}, indent=1))


if __name__ == "__main__":
    main()
