"""A minimal, generic ``torch.distributed`` helper shared by training and evaluation.

Launch with ``torchrun --nproc-per-node N purr ...``: torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous variables. Without them everything here degrades to a single process (rank 0 of 1), so library code can
call :func:`barrier`, :func:`rank` and friends unconditionally. The backend is ``nccl`` when the process drives a CUDA
device and ``gloo`` otherwise.

Work that every rank needs but only one should do (building a cache: tokenizer, shards, classifier) goes inside
:func:`main_process_first`: rank 0 does it, then the others run the same code and find it done.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from purrception.errors import PurrError

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "is_distributed", "rank", "world_size",
           "launch_rank", "barrier", "main_process_first", "all_reduce_sum", "gather_to_rank0", "contiguous_slice"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size, its local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise PurrError(f"environment variable {name}={value!r} is not an integer; launch with torchrun") from None


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment, or return a single-process :class:`DistInfo`.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available). Under torchrun with CUDA, each process
            takes ``cuda:LOCAL_RANK``.
    """
    world = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PurrError("`device=cuda` was asked for but no CUDA device is visible; use `device=cpu`")
        dev = torch.device("cuda", local_rank if world > 1 else (torch.device(want).index or 0))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(want)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)
    return DistInfo(0, 1, 0, dev)


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def launch_rank() -> int:
    """This process's global rank as the launcher set it (``RANK``; 0 without torchrun), also before the process
    group is joined or after it is left."""
    return _env_int("RANK", 0)


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if is_distributed():
        dist.barrier()


@contextmanager
def main_process_first() -> Iterator[None]:
    """Run the body on rank 0 first and on the other ranks after it: they wait at a barrier until rank 0 is done.

    For idempotent work every rank needs, such as building a cache on a filesystem all ranks see: rank 0 builds it,
    the others then find it built. Rank 0 releases the others even when its body raises (they then meet the same
    problem themselves and report it). In a single process it just runs the body.
    """
    first = rank() == 0
    if not first:
        barrier()
    try:
        yield
    finally:
        if first:
            barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place, and return it (unchanged in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_to_rank0(obj: Any) -> list[Any] | None:
    """Pickle-gather one object per rank: rank 0 gets the list in rank order, the others get None."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def contiguous_slice(total: int, rank_: int, world: int) -> range:
    """Indices ``[total*r // W, total*(r+1) // W)``: disjoint, in order, covering ``0..total-1`` exactly once."""
    return range(total * rank_ // world, total * (rank_ + 1) // world)
