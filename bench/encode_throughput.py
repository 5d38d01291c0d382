"""Encode throughput of the paper's tokenizers at 256x256, and shard size per image vs. storing float latents.

Usage::

    python bench/encode_throughput.py --device cpu --batch-size 2 --batches 2
    python bench/encode_throughput.py --device cuda --batch-size 64 --batches 20
    python bench/encode_throughput.py --sd-ckpt vq-f8.ckpt --llamagen-ckpt vq_ds8_c2i.pt   # real weights
    python bench/encode_throughput.py --image-size 32 --batch-size 1 --batches 1 --json enc.json  # smoke run

Without checkpoint paths the architectures get random weights: the cost of ``encode`` (encoder, quant_conv and
the nearest-code search over K=16384 rows) does not depend on the weights' values. ``--image-size`` times another
square size than the tokenizers' own 256 (the networks are convolutional; smaller sizes only make smoke runs quick).
Prints one JSON line per tokenizer plus a Markdown table; ``--json PATH`` also writes the rows to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from purrception.data.shards import codes_dtype_for, write_token_shards
from purrception.tokenizers.ldm_vq import VQGANTokenizer
from purrception.tokenizers.pretrained import VQGAN_PRESETS
from purrception.tokenizers.store import load_tokenizer


def build(kind: str, ckpt: str | None) -> VQGANTokenizer:
    if ckpt:
        return load_tokenizer(ckpt, kind=kind)
    torch.manual_seed(0)
    return VQGANTokenizer(VQGAN_PRESETS[kind], kind).eval().requires_grad_(False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(tok: VQGANTokenizer, device: torch.device, batch: int, batches: int, size: int = 0) -> dict:
    tok = tok.to(device)
    size = size or tok.image_size
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    with torch.inference_mode():
        tok.encode(x)  # warm-up (cuDNN autotune, allocator, oneDNN primitives)
        sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            codes = tok.encode(x)
        sync(device)
        seconds = time.perf_counter() - start
    h, w = codes.shape[1:]
    n = batch * batches
    # shard bytes per image, measured on disk (codes + labels + codebook amortised over this run + manifest)
    with tempfile.TemporaryDirectory() as tmp:
        all_codes = codes.cpu().numpy()
        reps = max(1, 1024 // batch)
        big = np.tile(all_codes, (reps, 1, 1))
        write_token_shards(tmp, big, np.zeros(len(big), dtype=np.int64), tok.codebook.cpu().numpy(),
                           tok.identity(), 1, source={}, preprocessing={})
        codes_bytes = (Path(tmp) / "codes.npy").stat().st_size / len(big)
    dtype = codes_dtype_for(tok.codebook_size)
    return {
        "kind": tok.kind,
        "device": str(device),
        "image_size": size,
        "batch_size": batch,
        "images": n,
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 2),
        "codes_shape": [int(h), int(w)],
        "codes_dtype": str(dtype),
        "code_bytes_per_image": h * w * dtype.itemsize,
        "codes_npy_bytes_per_image_on_disk": round(codes_bytes, 1),
        "float32_latent_bytes_per_image": tok.latent_dim * h * w * 4,
        "bf16_latent_bytes_per_image": tok.latent_dim * h * w * 2,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--batches", type=int, default=2, help="timed batches after one warm-up batch")
    p.add_argument("--kinds", nargs="+", default=list(VQGAN_PRESETS))
    p.add_argument("--sd-ckpt", default=None)
    p.add_argument("--llamagen-ckpt", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--image-size", type=int, default=0, help="square input size (default: the tokenizer's, 256)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the rows to PATH as JSON")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ckpts = {"sd-vq-f8": args.sd_ckpt, "llamagen-vq-ds8-c2i": args.llamagen_ckpt}
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                    f"{os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}")
    rows = []
    for kind in args.kinds:
        row = measure(build(kind, ckpts.get(kind)), device, args.batch_size, args.batches, args.image_size)
        row["machine"] = machine
        row["weights"] = "checkpoint" if ckpts.get(kind) else "random"
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "machine": machine, "rows": rows},
                                              indent=2) + "\n")
    print(f"\ntorch {torch.__version__}; {machine}")
    print("| tokenizer | device | size | batch | images/s | codes per image | float32 latent per image | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["float32_latent_bytes_per_image"] / r["code_bytes_per_image"]
        print(f"| {r['kind']} | {r['device']} | {r['image_size']} | {r['batch_size']} | {r['images_per_s']} | "
              f"{r['code_bytes_per_image']} B ({r['codes_shape'][0]}x{r['codes_shape'][1]} {r['codes_dtype']}) | "
              f"{r['float32_latent_bytes_per_image']} B | {ratio:.0f}x |")


if __name__ == "__main__":
    main()
