"""Two torchrun "nodes" on one machine (``--nnodes 2 --nproc-per-node 2``, c10d rendezvous on 127.0.0.1, gloo):
the trajectory does not depend on the process layout, a failure on any rank ends every process within the bound
with one line, a killed rank's run resumes exactly, and caches are built once per shared or node-local folder."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL

from purrception.checkpoint import latest_checkpoint, load_checkpoint
from purrception.data.shards import TokenShards
from purrception.training.config import resolve_config
from purrception.training.loop import build_model_for, train

#: PURR_DIST_TIMEOUT in these tests: a silent process ends the job after this many seconds
BOUND = 5
#: how long every process of a two-node job may take to exit once one failed (bound + torchrun's teardown)
EXIT_WITHIN = 30

SETS = {"model": "DiT-T/1", "model_overrides": TINY_MODEL, "batch_size": 8, "lr": 1e-3, "ema_decay": 0.9,
        "log_every": 1, "ckpt_every": 2, "keep_last": 1, "seed": 5}
STEPS = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], env_of_node=lambda node: {}) -> list[subprocess.Popen]:
    """``torchrun --nnodes 2 --nproc-per-node 2 --node-rank K --rdzv-backend c10d`` for K = 0, 1, each a session
    of its own (so a failed test can end it)."""
    port = _free_port()
    procs = []
    for node in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PURR_DIST_TIMEOUT": str(BOUND), **env_of_node(node)}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
               "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--max-restarts", "0", "-m", "purrception", *args]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                      start_new_session=True))
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    """``(returncode, stdout, stderr)`` of each launch; every launch still running after ``timeout`` s is ended."""
    deadline = time.monotonic() + timeout
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"a node was still running after {timeout} s: {err[-3000:]}")
        results.append((proc.returncode, out, err))
    return results


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _no_traceback_from_purr(stderr: str) -> bool:
    return re.search(r'File ".*purrception', stderr) is None


def _train_args(shards: Path, out: Path, steps: int, *extra: str) -> list[str]:
    sets = {**SETS, "steps": steps}
    args = ["train", "--shards", str(shards), "--device", "cpu", "--no-progress", "--preset", "digits-demo",
            "--out", str(out), *extra]
    return args + [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def _config(**changes):
    """The config ``purr train --preset digits-demo --set ...`` of :func:`_train_args` resolves to."""
    return resolve_config("digits-demo", overrides=[f"{k}={json.dumps(v)}" for k, v in {**SETS, **changes}.items()])


def _state(run: Path):
    return load_checkpoint(latest_checkpoint(run)).state


def _curve(run: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_node_run(tiny_shards_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("two-nodes") / "run"
    [(rc0, out0, err0), (rc1, out1, err1)] = _finish(_launch(_train_args(tiny_shards_dir, run, STEPS)), 240)
    assert rc0 == rc1 == 0, (err0[-2000:], err1[-2000:])
    assert _state(run).world_size == 4 and _state(run).step == STEPS
    assert (out0 + out1).count('"checkpoint"') == 1  # rank 0 alone reports
    return run


def test_one_process_and_two_nodes_follow_the_same_trajectory(two_node_run, tiny_shards_dir, tmp_path):
    # micro_batch_size 0: one process computes micro-batches of 8, four processes of 2: only accumulation differs
    one = train(_config(steps=STEPS), tiny_shards_dir, tmp_path / "one", progress=False)
    a, b = load_checkpoint(one.checkpoint).state, _state(two_node_run)
    for part in ("model", "ema"):
        for key, value in getattr(a, part).items():
            torch.testing.assert_close(getattr(b, part)[key], value, rtol=1e-5, atol=1e-7, msg=(part, key))
    assert max(float((a.model[k] - b.model[k]).abs().max()) for k in a.model) < 1e-6
    for key in ("loss", "grad_norm"):
        assert _curve(two_node_run, key) == pytest.approx(_curve(tmp_path / "one", key), rel=1e-5, abs=1e-7), key
    torch.manual_seed(SETS["seed"])  # the engine's initial weights: the runs really trained
    init = build_model_for(_config(), load_checkpoint(one.checkpoint).build_method(),
                           TokenShards.open(tiny_shards_dir))
    assert max(float((a.model[k] - v).abs().max()) for k, v in init.state_dict().items()) > 1e-3


def test_micro_batch_size_changes_rounding_not_the_trajectory(tiny_shards_dir, tmp_path):
    runs = {m: train(_config(steps=3, micro_batch_size=m), tiny_shards_dir, tmp_path / f"m{m}",
                     progress=False) for m in (8, 2, 1)}
    grad_norms = {m: _curve(tmp_path / f"m{m}", "grad_norm") for m in runs}
    for m in (2, 1):
        assert grad_norms[m] == pytest.approx(grad_norms[8], rel=1e-5), m


def test_a_killed_rank_ends_the_job_and_the_run_resumes_exactly(two_node_run, tiny_shards_dir, tmp_path):
    run = tmp_path / "killed"
    procs = _launch(_train_args(tiny_shards_dir, run, STEPS))
    deadline = time.monotonic() + 180
    while latest_checkpoint(run) is None:
        assert all(p.poll() is None for p in procs), "a node ended before the first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.01)
    victims = _children(procs[1].pid)
    assert len(victims) == 2, victims  # node 1's two workers
    os.kill(victims[1], signal.SIGKILL)
    killed = time.monotonic()
    results = _finish(procs, EXIT_WITHIN + 30)
    took = time.monotonic() - killed
    assert took < EXIT_WITHIN, f"the job took {took:.1f} s to end"
    assert all(rc != 0 for rc, _, _ in results)
    stderr = "".join(err for _, _, err in results)
    assert "purr: error" not in stderr and _no_traceback_from_purr(stderr), stderr[-3000:]
    assert stderr.count("purr: stopping:") <= 3  # at most one line per survivor
    killed_at = _state(run).step
    assert killed_at < STEPS, "the run finished before it could be killed"

    resumed = _finish(_launch(_train_args(tiny_shards_dir, run, STEPS, "--resume")), 240)
    assert all(rc == 0 for rc, _, _ in resumed), resumed[0][2][-2000:]
    a, b = _state(two_node_run), _state(run)
    assert b.step == STEPS
    for part in ("model", "ema"):
        for key in getattr(a, part):
            assert torch.equal(getattr(a, part)[key], getattr(b, part)[key]), (part, key)
    assert _curve(run, "loss") == _curve(two_node_run, "loss")


def test_an_unreadable_image_on_one_rank_is_reported_once(tiny_tokenizer_dir, tmp_path):
    from PIL import Image

    from purrception.data.embedded import load_embedded_mnist

    images = load_embedded_mnist("train").images
    for c in range(2):
        (tmp_path / "images" / f"c{c}").mkdir(parents=True)
        for i in range(8):
            Image.fromarray(images[c * 8 + i]).save(tmp_path / "images" / f"c{c}" / f"{i:02d}.png")
    bad = tmp_path / "images" / "c1" / "05.png"
    bad.write_bytes(bad.read_bytes()[:60])
    started = time.monotonic()
    results = _finish(_launch(["encode", "--tokenizer", str(tiny_tokenizer_dir), "--images", str(tmp_path / "images"),
                               "--batch-size", "2", "--part-size", "2", "--workers", "0", "--no-progress",
                               "--out", str(tmp_path / "shards")]), 240)
    assert all(rc != 0 for rc, _, _ in results)
    stderr = "".join(err for _, _, err in results)
    errors = [line for line in stderr.splitlines() if line.startswith("purr: error")]
    assert len(errors) == 1 and str(bad) in errors[0] and re.match(r"purr: error \(rank \d of 4\): ", errors[0]), errors
    assert _no_traceback_from_purr(stderr), stderr[-3000:]
    assert time.monotonic() - started < 120
    assert not (tmp_path / "shards" / "manifest.json").exists()


def test_eval_and_study_on_two_nodes_with_node_local_caches(tiny_checkpoint, tmp_path):
    # each node its own PURR_CACHE: each node's local rank 0 trains the judge into its own cache
    caches = [tmp_path / f"cache-node{n}" for n in range(2)]
    out = tmp_path / "report.json"
    node_cache = {"env_of_node": lambda n: {"PURR_CACHE": str(caches[n])}}
    results = _finish(_launch(["eval", str(tiny_checkpoint), "-n", "24", "--sample-steps", "2", "--batch-size", "4",
                               "--seed", "7", "--fid-subsets", "12", "--device", "cpu", "--out", str(out)],
                              **node_cache), 400)
    assert all(rc == 0 for rc, _, _ in results), results[0][2][-2000:] + results[1][2][-2000:]
    report = json.loads(out.read_text())
    assert report["distributed"]["world_size"] == 4 and report["sampling"]["num_samples"] == 24
    assert "local to each node" in results[0][2]
    built = [{p.name for p in cache.rglob("*") if p.is_file()} for cache in caches]
    assert built[1] and built[1] <= built[0]  # node 1 built its own judge; node 0 also holds the reference statistics
    assert not any(name.startswith(".purr-shared-") for name in built[0] | built[1])

    study = _finish(_launch(["study", "temperature", str(tiny_checkpoint), "--values", "0.9,1.0", "--num-samples", "24",
                             "--sample-steps", "2", "--out", str(tmp_path / "study")], **node_cache), 400)
    assert all(rc == 0 for rc, _, _ in study), study[0][2][-2000:] + study[1][2][-2000:]
    assert study[1][1] == ""  # rank 0 alone reports
    points = json.loads(study[0][1])
    assert [p["tau"] for p in points] == [0.9, 1.0] and all(p["fid"] > 0 for p in points)
