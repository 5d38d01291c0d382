"""The distributed helpers, for real where it matters: main_process_first over 2 gloo processes, and torchrun's
other ranks logging only warnings."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from purrception.cli import log_level
from purrception.distributed import main_process_first, rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_main_process_first_runs_the_body_in_a_single_process():
    ran = []
    with main_process_first():
        ran.append(rank())
    assert ran == [0]
    with pytest.raises(RuntimeError, match="cache build failed"), main_process_first():
        raise RuntimeError("cache build failed")


def _build_cache_worker(rank_: int, world: int, port: int, folder: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank_), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank_))
    from purrception.distributed import cleanup_distributed, init_distributed

    init_distributed("cpu")
    try:
        with main_process_first():  # the same "build it unless it is there" code on every rank
            cache = folder / "cache.txt"
            if not cache.exists():
                time.sleep(1.0)  # a slow build: a rank that did not wait would start its own
                cache.write_text(f"built by rank {rank_}")
            (folder / f"seen-by-rank{rank_}.txt").write_text(cache.read_text())
    finally:
        cleanup_distributed()


def test_main_process_first_lets_the_other_ranks_find_rank_0s_work(tmp_path):
    mp.spawn(_build_cache_worker, args=(2, _free_port(), tmp_path), nprocs=2)
    assert [(tmp_path / f"seen-by-rank{r}.txt").read_text() for r in range(2)] == ["built by rank 0"] * 2


def test_only_rank_0_logs_below_warning(tiny_tokenizer_dir, tmp_path):
    assert (log_level(False, 0), log_level(True, 0)) == (logging.INFO, logging.DEBUG)
    assert log_level(False, 1) == log_level(True, 3) == logging.WARNING
    stderr = {}
    for r in (0, 1):  # as torchrun's rank r would start (RANK set), on one process so no group forms
        proc = subprocess.run([sys.executable, "-m", "purrception", "encode", "--tokenizer", str(tiny_tokenizer_dir),
                               "--embedded", "heldout", "--out", str(tmp_path / f"rank{r}"), "--no-progress"],
                              env={**os.environ, "RANK": str(r)}, capture_output=True, text=True, timeout=300,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        stderr[r] = proc.stderr
    assert " INFO " in stderr[0] and " INFO " not in stderr[1]


def test_failure_bounds_come_from_the_environment(monkeypatch):
    from purrception.distributed import claim_failure, collective_timeout, failure_bound, peer_failure
    from purrception.errors import PurrError

    monkeypatch.delenv("PURR_DIST_TIMEOUT", raising=False)
    monkeypatch.delenv("PURR_DIST_COLLECTIVE_TIMEOUT", raising=False)
    assert failure_bound() == 60.0 and collective_timeout().total_seconds() == 1800.0
    monkeypatch.setenv("PURR_DIST_TIMEOUT", "7.5")
    monkeypatch.setenv("PURR_DIST_COLLECTIVE_TIMEOUT", "90")
    assert failure_bound() == 7.5 and collective_timeout().total_seconds() == 90.0
    for bad in ("abc", "0", "-1", "inf", "nan"):
        monkeypatch.setenv("PURR_DIST_TIMEOUT", bad)
        with pytest.raises(PurrError, match=f"PURR_DIST_TIMEOUT={bad!r} must be a positive number of seconds"):
            failure_bound()
    # a single process is never stopped by another: it reports its own errors
    assert claim_failure("boom") is True and peer_failure(RuntimeError("Connection closed by peer")) is None
