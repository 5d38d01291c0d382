"""Random-access micro-batch reads from an ImageNet-sized token shard (memory-mapped), as the training loop does them.

Writes a synthetic ``1,281,167 x 32 x 32`` uint16 ``codes.npy`` (2.6 GB, the size of ImageNet-1k encoded by a
K = 16384 tokenizer) into a temporary folder (default under /tmp), reads random micro-batches through
:class:`purrception.training.data.ShardBatches` (a fresh permutation position per batch, sorted indices), and deletes
the folder. Reported side by side, for each micro-batch size:

- cold: the file dropped from the page cache first (``posix_fadvise(DONTNEED)``), so reads come from disk;
- warm: after the file has been read once (what a long run sees when the shard fits in the page cache).

Example:
    python bench/shard_reads.py                 # 1.28M items, micro-batches of 32 and 256
    python bench/shard_reads.py --items 200000  # smaller file
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from purrception.data.shards import TokenShards
from purrception.training.data import ShardBatches


def write_codes(path: Path, items: int, side: int, chunk: int = 65536) -> np.ndarray:
    codes = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(items, side, side))
    rng = np.random.default_rng(0)
    for start in range(0, items, chunk):
        stop = min(items, start + chunk)
        codes[start:stop] = rng.integers(0, 16384, size=(stop - start, side, side), dtype=np.uint16)
    codes.flush()
    del codes
    return np.load(path, mmap_mode="r")


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def time_reads(shards: TokenShards, micro: int, batches: int, first_step: int) -> float:
    """Batches per second for ``batches`` consecutive (step, slot 0) reads of ``micro`` items."""
    reader = ShardBatches(shards, micro, micro, seed=0)
    reader.indices(first_step, 0)  # build the epoch permutation outside the timing
    t0 = time.perf_counter()
    for k in range(batches):
        codes, labels = reader.get(first_step + k, 0)
        assert codes.shape[0] == micro
    return batches / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_281_167)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--micro", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--batches", type=int, default=200, help="batches timed per measurement")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary shard is written")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="purr-shard-bench-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        codes = write_codes(folder / "codes.npy", args.items, args.side)
        write_s = time.perf_counter() - t0
        size_gb = (folder / "codes.npy").stat().st_size / 1e9
        del codes
        rows = []
        for i, micro in enumerate(args.micro):
            drop_from_page_cache(folder / "codes.npy")  # works once no mapping of ours holds the pages
            codes = np.load(folder / "codes.npy", mmap_mode="r")
            shards = TokenShards(folder, {}, codes, np.zeros(args.items, dtype=np.int64), np.zeros((1, 1), np.float32))
            cold = time_reads(shards, micro, args.batches, first_step=1000 * i)
            for start in range(0, args.items, 65536):  # read the whole file once: now it is in the page cache
                np.asarray(codes[start : start + 65536]).max()
            warm = time_reads(shards, micro, args.batches, first_step=1000 * i + 500)
            rows.append((micro, cold, cold * micro, warm, warm * micro, warm / cold))
            del shards, codes
        print(f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
              f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM; file {size_gb:.2f} GB "
              f"({args.items} x {args.side} x {args.side} uint16) written in {write_s:.1f} s; "
              f"{args.batches} batches each")
        print("| micro-batch | cold batches/s | cold images/s | warm batches/s | warm images/s | warm / cold |")
        print("|---:|---:|---:|---:|---:|---:|")
        for micro, cb, ci, wb, wi, ratio in rows:
            print(f"| {micro} | {cb:,.0f} | {ci:,.0f} | {wb:,.0f} | {wi:,.0f} | {ratio:.1f}x |")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
