"""How many CPU threads torch uses: the cores this process may use that other processes are not keeping busy.

torch starts one intra-op thread per core and every operator waits at a barrier for all of them. When another
process keeps one of two cores busy, the thread that shares its core runs only in the scheduler's time slices, so
each small operator waits milliseconds for it: a CPU job beside any other CPU job runs many times slower than alone
(thread oversubscription). Using as many threads as there are *free* cores avoids the barrier wait: beside one busy
core a 2-core machine runs one thread, at about the speed of one core.

:class:`ThreadGovernor` measures the free cores from the machine's CPU counters (``/proc/stat``), minus this
process's own CPU time, so it needs no pause to measure and can re-check during a long run; it calls
``torch.set_num_threads``. What it uses, in order:

1. ``PURR_THREADS=N`` (a positive integer) fixes the count; ``PURR_THREADS=auto`` or unset adapts;
2. ``OMP_NUM_THREADS`` set by the user: torch already follows it, the governor leaves it alone;
3. otherwise the usable cores (the affinity mask, capped by a cgroup CPU quota) minus the cores other processes
   kept busy since the last check, at least one.

Where the counters are missing (not Linux), the usable cores are used.

The count changes float rounding: a parallel reduction splits its sum by thread, so the same training step run with
one thread and with two differs in the last bits. Loops whose result must be reproducible (generator training, whose
resume is bit-identical) therefore pick the count once with :func:`threads_for_run` and keep it; the checkpoint
records it and a resumed run uses the recorded count again. docs/ARCHITECTURE.md (floor 1) places this
module: it imports torch and nothing of the library.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch

from purrception.errors import PurrError

__all__ = ["ThreadGovernor", "shared_governor", "threads_for_run", "usable_cores", "thread_setting", "THREADS_ENV",
           "RECHECK_SECONDS"]

log = logging.getLogger(__name__)

#: the environment variable that fixes the thread count (``auto`` or unset: adapt to the free cores)
THREADS_ENV = "PURR_THREADS"
#: a running governor re-measures at most this often
RECHECK_SECONDS = 5.0
_PROC_STAT = Path("/proc/stat")
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores() -> int:
    """The cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota where there is one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = _CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def thread_setting() -> int | None:
    """The thread count ``PURR_THREADS`` fixes, or ``None`` to adapt (unset or ``auto``)."""
    raw = os.environ.get(THREADS_ENV, "").strip().lower()
    if raw in ("", "auto"):
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise PurrError(f"{THREADS_ENV}={os.environ[THREADS_ENV]!r} is not a positive integer; set it to the number of "
                        f"CPU threads to use, or to 'auto'")
    return int(raw)


def _machine_busy_seconds() -> float | None:
    """The busy CPU time of the whole machine in seconds since boot, from ``/proc/stat``; ``None`` without it."""
    try:
        fields = _PROC_STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [float(v) for v in fields[1:9]]   # user nice system idle iowait irq softirq steal
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / hz


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class ThreadGovernor:
    """Keeps ``torch``'s intra-op thread count at the number of cores other processes leave free.

    Create one at the start of a CPU stage (it measures over the moment before, with a short pause the first
    time) and call :meth:`check` now and then (cheap; it re-measures at most every :data:`RECHECK_SECONDS`).
    On a GPU, with ``PURR_THREADS=N`` or with ``OMP_NUM_THREADS`` set, it sets the count once (or leaves it) and
    never adapts.
    """

    def __init__(self, device: str | torch.device = "cpu", first_pause: float = 0.1):
        self.fixed = thread_setting()
        self.adaptive = (self.fixed is None and "OMP_NUM_THREADS" not in os.environ
                         and torch.device(device).type == "cpu" and _machine_busy_seconds() is not None)
        self.cores = usable_cores()
        self._last: tuple[float, float, float] | None = None  # (clock, machine busy, own CPU) when last measured
        if self.fixed is not None:
            self._apply(self.fixed, f"{THREADS_ENV}={self.fixed}")
        elif self.adaptive:
            self._mark()
            time.sleep(first_pause)  # the first measurement: what the other processes do while this one waits
            self.check(force=True)

    def _mark(self) -> None:
        self._last = (time.monotonic(), _machine_busy_seconds() or 0.0, _own_cpu_seconds())

    def free_cores(self) -> int:
        """The usable cores minus those other processes kept busy since the last measurement (at least 1)."""
        assert self._last is not None
        then, busy_then, own_then = self._last
        self._mark()
        now, busy, own = self._last
        others = max(0.0, (busy - busy_then) - (own - own_then)) / max(now - then, 1e-6)
        return int(min(self.cores, max(1, self.cores - math.floor(others + 0.5))))

    def check(self, force: bool = False) -> int:
        """Re-measure (if due) and set the thread count; returns the count in use."""
        if self.adaptive and self._last is not None and (force or time.monotonic() - self._last[0] >= RECHECK_SECONDS):
            self._apply(self.free_cores(), "free cores")
        return torch.get_num_threads()

    @staticmethod
    def _apply(count: int, why: str) -> None:
        if count != torch.get_num_threads():
            log.info("using %d CPU thread(s) (%s; %s=N fixes it)", count, why, THREADS_ENV)
            torch.set_num_threads(count)


_SHARED: ThreadGovernor | None = None


def shared_governor(device: str | torch.device = "cpu") -> ThreadGovernor:
    """The process's one governor for stages that start often and run briefly (each sampling call): its first
    measurement, with its pause, is made once per process, and each caller then only calls
    :meth:`ThreadGovernor.check`. A GPU device gets a governor of its own, which never adapts."""
    global _SHARED
    if torch.device(device).type != "cpu":
        return ThreadGovernor(device)
    if _SHARED is None:
        _SHARED = ThreadGovernor(device)
    return _SHARED


def threads_for_run(device: str | torch.device = "cpu", recorded: int | None = None) -> int:
    """Set the thread count a reproducible run keeps: ``recorded`` (the count a resumed run was trained with) when
    the count is free to choose, else what :class:`ThreadGovernor` picks now; returns the count in use."""
    governor = ThreadGovernor(device)
    if governor.adaptive and recorded is not None and recorded != torch.get_num_threads():
        log.info("using the run's %d CPU thread(s), as it was trained with, so the resume is bit-identical "
                 "(%s=N sets another count)", recorded, THREADS_ENV)
        torch.set_num_threads(recorded)
    return torch.get_num_threads()
