"""``purr encode``: an image folder or the embedded data -> token shards (codes + labels + manifest).

Resumable: re-running the same command continues an interrupted encode. Multi-GPU:
``torchrun --nproc-per-node N -m purrception encode ... --device cuda`` (each rank writes its own parts, rank 0
merges them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from purrception.cli.common import add_tokenizer_kind_arg, positive_int
from purrception.data.encode import EncodeOptions, encode_images
from purrception.data.shards import TokenShards
from purrception.distributed import launch_rank

__all__ = ["register", "run_encode"]

def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "encode", help="images (a folder or the embedded data) -> token shards for training",
        description="Encode images with a frozen tokenizer into token shards (resumable; torchrun for multi-GPU).")
    p.add_argument("--tokenizer", required=True,
                   help="tokenizer folder (`purr tokenizer train`) or a pretrained checkpoint file")
    add_tokenizer_kind_arg(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="image folder: ROOT/<class>/*.png|jpg..., or a flat folder with --labels")
    src.add_argument("--embedded", choices=["train", "heldout", "all"], help="an embedded MNIST split")
    p.add_argument("--labels", default=None, help="for a flat --images folder: lines '<relative path>,<label>'")
    p.add_argument("--out", required=True, help="shard folder to create (or to resume)")
    p.add_argument("--flip", action="store_true", help="also store the horizontal mirror of every image")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--part-size", type=positive_int, default=1024,
                   help="images per part file, the unit of resumption (default 1024)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--workers", type=int, default=2, help="image-reading worker processes (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_encode)


def run_encode(args: argparse.Namespace) -> int:
    options = EncodeOptions(flip=args.flip, batch_size=args.batch_size, part_size=args.part_size, device=args.device,
                            workers=max(0, args.workers) if args.images else 0, progress=not args.no_progress,
                            tokenizer_path=str(Path(args.tokenizer).resolve()))
    out = encode_images(args.tokenizer, args.out, tokenizer_kind=args.tokenizer_kind, images=args.images,
                        labels_file=args.labels, embedded=args.embedded, options=options)
    if launch_rank() == 0:  # the process group is gone by now; torchrun's env remains
        shards = TokenShards.open(out)
        print(f"{out}: {len(shards)} items, codes {shards.codes.dtype} {shards.latent_shape}, "
              f"{shards.num_classes} classes, tokenizer {shards.identity.describe()}")
    return 0
