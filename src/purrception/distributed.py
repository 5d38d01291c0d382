"""A minimal, generic ``torch.distributed`` helper shared by training and evaluation.

Launch with ``torchrun --nproc-per-node N purr ...`` (on several nodes: ``--nnodes M --node-rank K
--rdzv-backend c10d --rdzv-endpoint HOST:PORT``, README "Training at scale"): torchrun sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables. Without them everything here degrades to a single
process (rank 0 of 1), so library code can call :func:`barrier`, :func:`rank` and friends unconditionally. The
backend is ``nccl`` when the process drives a CUDA device and ``gloo`` otherwise.

Global and local duties. Work every rank needs but only one should do goes inside :func:`main_process_first`.
What lands in a folder every node must see (a run's ``run_dir``, an encode's ``out``) is written by global rank 0
(``main_process_first()``). A cache (the ``PURR_CACHE`` folder: tokenizers, data-set shards, judge classifiers)
may be shared by the nodes or local to each; :func:`cache_first` tells which by looking (:func:`is_shared_folder`:
rank 0 leaves a marker, every rank looks for it) and lets global rank 0 build a shared cache, and each node's local
rank 0 build a node-local one. Inside the body only some ranks run, so there the library sees a single process
(:func:`rank` is 0, :func:`world_size` 1, collectives are no-ops).

Failures. A job ends when any process fails, within a bound, rather than waiting in a collective for a process that
is gone. Every process beats a counter in the job's rendezvous store (torchrun's) twice a second, and a watchdog
thread watches the next process's counter and the store's failure record. A process that stops beating for
``PURR_DIST_TIMEOUT`` seconds (default 60: killed, machine lost; its watcher records it) or that records a failure
(:func:`claim_failure`, the ``purr`` command does so on any error) ends every other process within about a second,
each with one line naming the rank (:func:`on_peer_failure` sets how it is reported). A process that is alive but
stops taking part (a deadlock, a hung filesystem) is ended by the collectives' own timeout,
``PURR_DIST_COLLECTIVE_TIMEOUT`` seconds (default 1800), which must exceed the longest work one rank does while the
others wait (a cache build inside :func:`main_process_first`).
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from purrception.errors import PurrError

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "is_distributed", "rank", "world_size",
           "local_rank", "launch_rank", "launch_world_size", "barrier", "main_process_first", "cache_first",
           "is_shared_folder", "all_reduce_sum", "gather_to_rank0", "broadcast_from_rank0", "contiguous_slice",
           "failure_bound", "collective_timeout", "claim_failure", "failed_rank", "peer_failure", "on_peer_failure",
           "TIMEOUT_ENV", "COLLECTIVE_TIMEOUT_ENV"]

log = logging.getLogger(__name__)

#: seconds a process may stop beating before the job ends (killed process, lost machine)
TIMEOUT_ENV = "PURR_DIST_TIMEOUT"
#: seconds a collective waits for a live process that does not take part (a deadlock, a hung filesystem)
COLLECTIVE_TIMEOUT_ENV = "PURR_DIST_COLLECTIVE_TIMEOUT"
_PREFIX = "purr"
_FAILED_KEY = f"{_PREFIX}/failed"
_DONE = 1 << 40  # added to a process's beat counter when it leaves the job cleanly
_BEAT_SECONDS = 0.5


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


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise PurrError(f"environment variable {name}={value!r} must be a positive number of seconds")
    return seconds


def failure_bound() -> float:
    """Seconds after which a process that stopped beating (``PURR_DIST_TIMEOUT``, default 60) ends the job."""
    return _env_seconds(TIMEOUT_ENV, 60.0)


def collective_timeout() -> datetime.timedelta:
    """How long a collective waits for a live process (``PURR_DIST_COLLECTIVE_TIMEOUT`` seconds, default 1800)."""
    return datetime.timedelta(seconds=_env_seconds(COLLECTIVE_TIMEOUT_ENV, 1800.0))


# ---- the job's store, failures and the watchdog -----------------------------------------------------------------
_store: Any = None  # the rendezvous store, kept after the process group is left (for claim_failure)
_watchdog: "_Watchdog | None" = None
_solo_depth = 0  # > 0 inside main_process_first's body: this process acts alone


def _default_peer_failure(message: str) -> None:
    log.error("stopping: %s", message)


_report: Callable[[str], None] = _default_peer_failure


def on_peer_failure(report: Callable[[str], None]) -> None:
    """Set how this process reports, just before it exits with status 1, that another one failed (default: an
    ERROR log line). ``report`` gets a short message such as ``"rank 1 failed"``."""
    global _report
    _report = report


def _stop(message: str) -> None:
    try:
        _report(message)
    finally:
        os._exit(1)


def _decode(raw: bytes) -> tuple[int, str]:
    text = raw.decode(errors="replace")
    who, _, what = text.partition("\n")
    return int(who), what


def failed_rank(wait: float = 0.0) -> int | None:
    """The rank that first recorded a failure in this job (:func:`claim_failure`), waiting up to ``wait`` seconds
    for one to appear; None when none did (or outside a job)."""
    if _store is None:
        return None
    deadline = time.monotonic() + wait
    while True:
        try:
            if _store.check([_FAILED_KEY]):
                return _decode(_store.get(_FAILED_KEY))[0]
        except Exception:  # the store is gone with the process that held it
            return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def claim_failure(reason: str = "") -> bool:
    """Record that this process failed; True when it is the first of the job to do so (it then reports the error,
    the others only stop). Outside a job of several processes: True."""
    if _store is None:
        return True
    me = launch_rank()
    try:
        current = _store.compare_set(_FAILED_KEY, "", f"{me}\n{reason}")
        return _decode(current)[0] == me
    except Exception:  # the store is gone: whoever held it failed first
        return False


def peer_failure(err: BaseException) -> str | None:
    """A short account (``"rank 1 failed"``) when ``err`` in this process comes from another process's failure
    (a collective that lost its peer, or any error after another rank recorded a failure), else None."""
    if _store is None:
        return None
    from_peer = isinstance(err, getattr(dist, "DistError", ())) or any(
        text in str(err) for text in ("Connection closed by peer", "Connection reset by peer", "gloo", "NCCL"))
    other = failed_rank(wait=3.0 if from_peer else 0.0)
    if other is not None and other != launch_rank():
        return f"rank {other} failed"
    if from_peer:
        return "lost contact with another process (killed, or its machine is gone)"
    return None


class _Watchdog(threading.Thread):
    """Beats this process's counter and ends it when another process records a failure or stops beating."""

    def __init__(self, store: Any, rank_: int, world: int, bound: float):
        super().__init__(name="purr-watchdog", daemon=True)
        self.store, self.rank, self.world, self.bound = store, rank_, world, bound
        self.halt = threading.Event()

    def beat_key(self, r: int) -> str:
        return f"{_PREFIX}/beat/{r}"

    def run(self) -> None:
        now = time.monotonic()
        # each process watches the next one (a ring): any loss is seen by one watcher, which records it for all
        last: dict[int, tuple[int, float]] = {(self.rank + 1) % self.world: (-1, now)}
        unreachable_since: float | None = None
        while not self.halt.wait(_BEAT_SECONDS):
            now = time.monotonic()
            try:
                self.store.add(self.beat_key(self.rank), 1)
                failed = self.store.check([_FAILED_KEY])
                beats = {r: self.store.add(self.beat_key(r), 0) for r in last}
                if failed:
                    who = _decode(self.store.get(_FAILED_KEY))[0]
            except Exception:  # the store's host is gone; give it the bound before calling the job lost
                if self.halt.is_set():
                    return
                unreachable_since = unreachable_since or now
                if now - unreachable_since > self.bound:
                    _stop("lost the job's rendezvous store (its node is gone?)")
                continue
            unreachable_since = None
            if self.halt.is_set():
                return
            if failed and who != self.rank:
                _stop(f"rank {who} failed")
            for r, value in beats.items():
                if value >= _DONE:
                    continue
                if value != last[r][0]:
                    last[r] = (value, now)
                elif now - last[r][1] > self.bound:
                    try:
                        self.store.compare_set(_FAILED_KEY, "", f"{r}\nstopped responding")
                    except Exception:
                        pass
                    _stop(f"rank {r} stopped responding for {self.bound:g} s (killed, or its machine is gone)")

    def leave(self, cleanly: bool) -> None:
        self.halt.set()
        if cleanly:
            try:
                self.store.add(self.beat_key(self.rank), _DONE)
            except Exception:
                pass


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment, or return a single-process :class:`DistInfo`.

    Joining also starts the failure watchdog (module docstring). Inside :func:`main_process_first`'s body this
    returns rank 0 of 1.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available). Under torchrun with CUDA, each process
            takes ``cuda:LOCAL_RANK``.
    """
    global _store, _watchdog
    world = _env_int("WORLD_SIZE", 1)
    local = _env_int("LOCAL_RANK", 0)
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PurrError("`device=cuda` was asked for but no CUDA device is visible; use `device=cpu`")
        dev = torch.device("cuda", local if world > 1 else (torch.device(want).index or 0))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(want)
    if world > 1 and not dist.is_initialized():
        bound = failure_bound()
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=collective_timeout(),
                                device_id=dev if dev.type == "cuda" else None)
        _store = dist.distributed_c10d._get_default_store()
        _watchdog = _Watchdog(_store, dist.get_rank(), dist.get_world_size(), bound)
        _watchdog.start()
    if is_distributed():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev)
    return DistInfo(0, 1, 0, dev)


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined (and stop the watchdog; a clean leave is no failure)."""
    global _watchdog
    if _watchdog is not None:
        _watchdog.leave(cleanly=True)
        _watchdog = None
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as err:  # a group broken by a lost peer; the process is about to report that
            log.debug("leaving a broken process group: %s", err)


def is_distributed() -> bool:
    return _solo_depth == 0 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; 0 without torchrun or inside a solo body)."""
    return _env_int("LOCAL_RANK", 0) if is_distributed() else 0


def launch_rank() -> int:
    """This process's global rank as the launcher set it (``RANK``; 0 without torchrun), also before the process
    group is joined or after it is left."""
    return _env_int("RANK", 0)


def launch_world_size() -> int:
    """The number of processes of the job as the launcher set it (``WORLD_SIZE``; 1 without torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if is_distributed():
        dist.barrier()


@contextmanager
def _solo() -> Iterator[None]:
    global _solo_depth
    _solo_depth += 1
    try:
        yield
    finally:
        _solo_depth -= 1


@contextmanager
def main_process_first(local: bool = False) -> Iterator[None]:
    """Run the body on one process first and on the others after it; they wait at a barrier until it is done.

    For idempotent work every rank needs, such as building a cache: the first process builds it, the others then
    find it built. Rank 0 releases the others even when its body raises (the job then ends, module docstring).
    In a single process it just runs the body. Each process runs the body on its own: in it the library sees a
    single process (a data set prepared there is encoded by that process, not by the whole job).

    Args:
        local: False: global rank 0 goes first, for what every node reads from one shared place (a run folder,
            an encode's output). True: each node's local rank 0 goes first, for a cache each node keeps on its own
            disk. Which one a cache needs is for :func:`cache_first` to tell.
    """
    if not is_distributed():
        yield
        return
    first = (local_rank() if local else rank()) == 0
    if not first:
        barrier()
        with _solo():
            yield
        return
    try:
        with _solo():
            yield
    finally:
        barrier()


_shared: dict[str, bool] = {}


def is_shared_folder(folder: str | os.PathLike) -> bool:
    """Whether every process of the job sees the same ``folder`` (a shared filesystem) or each node its own.

    A collective: rank 0 leaves a uniquely named marker file in ``folder`` (created if missing) and every process
    looks for it. The answer is remembered per folder. True in a single process.
    """
    if not is_distributed():
        return True
    path = Path(folder).resolve()
    if str(path) in _shared:
        return _shared[str(path)]
    box = [f".purr-shared-{uuid.uuid4().hex}" if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    marker = path / str(box[0])
    if rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
        marker.touch()
    barrier()
    seen = torch.tensor([1 if marker.exists() else 0], dtype=torch.int64)
    dist.all_reduce(seen, op=dist.ReduceOp.MIN)
    if rank() == 0:
        marker.unlink(missing_ok=True)
    _shared[str(path)] = bool(seen.item())
    if rank() == 0:
        log.info("cache %s is %s", path, "shared by every node" if _shared[str(path)] else "local to each node")
    return _shared[str(path)]


@contextmanager
def cache_first(folder: str | os.PathLike) -> Iterator[None]:
    """:func:`main_process_first` for building a cache under ``folder`` (e.g. ``PURR_CACHE``): global rank 0
    builds it when every node sees the same folder, each node's local rank 0 when each node has its own
    (:func:`is_shared_folder`). Either way no two processes build one cache entry at once, and every process finds
    the entry built when the body returns."""
    with main_process_first(local=not is_shared_folder(folder)):
        yield


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


def broadcast_from_rank0(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; ``obj`` itself in a single process)."""
    if not is_distributed():
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def contiguous_slice(total: int, rank_: int, world: int) -> range:
    """Indices ``[total*r // W, total*(r+1) // W)``: disjoint, in order, covering ``0..total-1`` exactly once."""
    return range(total * rank_ // world, total * (rank_ + 1) // world)
