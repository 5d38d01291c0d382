"""The CPU thread governor: the free-core arithmetic, the overrides, and the cgroup cap."""

from __future__ import annotations

import pytest
import torch

from purrception import threads
from purrception.errors import PurrError


@pytest.fixture(autouse=True)
def _keep_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    yield
    torch.set_num_threads(before)


class FakeMachine:
    """``/proc/stat``, this process's CPU time and the clock, moved by hand."""

    def __init__(self, monkeypatch):
        self.now, self.busy, self.own = 100.0, 0.0, 0.0
        monkeypatch.setattr(threads, "_machine_busy_seconds", lambda: self.busy)
        monkeypatch.setattr(threads, "_own_cpu_seconds", lambda: self.own)
        monkeypatch.setattr(threads.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(threads.time, "sleep", lambda s: self.advance(s, self.rate, self.own_rate))
        monkeypatch.setattr(threads, "usable_cores", lambda: 2)
        self.rate, self.own_rate = 0.0, 0.0

    def advance(self, seconds: float, others: float, ours: float) -> None:
        """``seconds`` pass with other processes busy on ``others`` cores and this one on ``ours``."""
        self.now += seconds
        self.busy += seconds * (others + ours)
        self.own += seconds * ours


def test_one_busy_core_leaves_one_thread_and_an_idle_machine_two(monkeypatch):
    machine = FakeMachine(monkeypatch)
    machine.rate = 1.0                       # another process keeps one core busy while the governor starts
    governor = threads.ThreadGovernor()
    assert governor.adaptive and torch.get_num_threads() == 1
    machine.advance(threads.RECHECK_SECONDS, others=0.0, ours=1.0)   # the other process stopped
    assert governor.check() == 2
    machine.advance(1.0, others=1.0, ours=2.0)                       # not due yet: nothing changes
    assert governor.check() == 2
    machine.advance(threads.RECHECK_SECONDS, others=1.0, ours=1.0)
    assert governor.check() == 1


def test_this_process_own_load_does_not_count_as_busy(monkeypatch):
    machine = FakeMachine(monkeypatch)
    governor = threads.ThreadGovernor()
    machine.advance(threads.RECHECK_SECONDS, others=0.0, ours=2.0)   # both cores are ours
    assert governor.check() == 2
    machine.advance(threads.RECHECK_SECONDS, others=3.0, ours=0.5)   # more busy than there are cores: still one
    assert governor.check() == 1


def test_purr_threads_fixes_the_count_and_omp_num_threads_is_left_alone(monkeypatch):
    FakeMachine(monkeypatch)
    monkeypatch.setenv(threads.THREADS_ENV, "1")
    governor = threads.ThreadGovernor()
    assert not governor.adaptive and torch.get_num_threads() == 1
    monkeypatch.setenv(threads.THREADS_ENV, "auto")
    assert threads.thread_setting() is None
    monkeypatch.delenv(threads.THREADS_ENV)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert not threads.ThreadGovernor().adaptive and torch.get_num_threads() == 2
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(threads.THREADS_ENV, bad)
        with pytest.raises(PurrError, match="PURR_THREADS"):
            threads.thread_setting()


def test_a_cgroup_quota_caps_the_usable_cores(monkeypatch, tmp_path):
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(threads, "_CGROUP_CPU_MAX", cpu_max)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    cpu_max.write_text("150000 100000\n")
    assert threads.usable_cores() == 2
    cpu_max.write_text("max 100000\n")
    assert threads.usable_cores() == 4
    cpu_max.unlink()
    assert threads.usable_cores() == 4


def test_a_gpu_run_keeps_its_threads(monkeypatch):
    FakeMachine(monkeypatch)
    torch.set_num_threads(2)
    assert not threads.ThreadGovernor("cuda").adaptive and torch.get_num_threads() == 2


def test_a_resumed_run_keeps_the_thread_count_it_was_trained_with(tiny_shards_dir, tmp_path, monkeypatch):
    from conftest import tiny_config

    from purrception.checkpoint import load_checkpoint
    from purrception.training.loop import train

    monkeypatch.setenv(threads.THREADS_ENV, "1")
    first = train(tiny_config(steps=2, ckpt_every=2), tiny_shards_dir, tmp_path / "run", progress=False)
    assert load_checkpoint(first.checkpoint).state.cpu_threads == 1
    monkeypatch.delenv(threads.THREADS_ENV)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads.ThreadGovernor, "free_cores", lambda self: 2)   # an idle machine would pick 2
    torch.set_num_threads(2)
    resumed = train(tiny_config(steps=4, ckpt_every=2), tiny_shards_dir, tmp_path / "run", resume=True,
                    progress=False)
    assert torch.get_num_threads() == 1 and load_checkpoint(resumed.checkpoint).state.cpu_threads == 1
    monkeypatch.setenv(threads.THREADS_ENV, "2")                                     # the user's word wins
    train(tiny_config(steps=6, ckpt_every=2), tiny_shards_dir, tmp_path / "run", resume=True, progress=False)
    assert torch.get_num_threads() == 2


def test_sampling_calls_share_one_governor_so_the_first_pause_is_paid_once(monkeypatch):
    machine = FakeMachine(monkeypatch)
    monkeypatch.setattr(threads, "_SHARED", None)
    pauses = []
    monkeypatch.setattr(threads.time, "sleep", lambda s: (pauses.append(s), machine.advance(s, 0.0, 0.0)))
    first = threads.shared_governor()
    assert threads.shared_governor("cpu") is first and len(pauses) == 1
    assert threads.shared_governor("cuda") is not first and not threads.shared_governor("cuda").adaptive
