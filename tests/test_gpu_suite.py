"""bench/gpu_suite.py: its CPU dry run goes through every stage, a spent budget skips stages cleanly, and a stage past
its time is stopped.

The dry run is what keeps the GPU suite alive between the rare GPU windows: if a bench script or command it calls
changes its flags or output, this test fails here instead of on the GPU.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "bench" / "gpu_suite.py"
STAGES = ["step", "liger", "train-throughput", "encode", "demo", "convergence"]


def _suite_module():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module
    spec.loader.exec_module(module)
    return module


def _run(tmp_path: Path, *argv: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "suite"
    proc = subprocess.run([sys.executable, str(SUITE), "--out", str(out), *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert (out / "results.md").is_file(), proc.stderr[-3000:]
    return proc, json.loads((out / "results.json").read_text())


def test_dry_run_goes_through_every_stage(tmp_path):
    from purrception.evaluation.classifier import load_or_train_classifier
    from purrception.io import default_cache_dir

    # the dry run uses the ordinary cache ($PURR_CACHE here), where the digit classifier is trained once; train it
    # before the suite's clock starts, as a person's cache would already hold it after their first dry run
    load_or_train_classifier(default_cache_dir())
    # the default dry-run budget is 120 s; a machine shared with other jobs gets more room, since what this checks is
    # that every stage runs and reports (the budget logic is checked below)
    proc, data = _run(tmp_path, "--dry-run", "--budget-s", "400", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = {s["name"]: s for s in data["stages"]}
    assert list(stages) == STAGES
    liger_installed = importlib.util.find_spec("liger_kernel") is not None
    for name, stage in stages.items():
        if name == "liger" and not liger_installed:
            assert stage["status"] == "skipped" and "liger-kernel" in stage["note"]
            continue
        assert stage["status"] == "ok", (name, stage.get("note"), stage.get("tail"))

    machine = data["machine"]
    assert data["mode"] == "dry-run" and machine["torch"] and machine["commit"] and machine["date"]
    step = stages["step"]["figures"]
    assert [r["variant"] for r in step["step"]] == ["cfm", "chunked"]
    assert [r["variant"] for r in step["sample"]] == ["cfm", "chunked"]
    assert step["step"][1]["efficiency"] > 0 and step["step"][0]["images_per_s"] > 0
    if liger_installed:
        assert [r["variant"] for r in stages["liger"]["figures"]["step"]] == ["liger"]
    assert [r["method"] for r in stages["train-throughput"]["figures"]["rows"]] == ["purrception", "cfm"]
    assert [r["kind"] for r in stages["encode"]["figures"]["rows"]] == ["sd-vq-f8", "llamagen-vq-ds8-c2i"]
    demo = stages["demo"]["figures"]
    assert demo["wall_s"] > 0 and 0 <= demo["class_accuracy"]["1.0"] <= 1
    conv = stages["convergence"]["figures"]
    assert sorted(conv["points"]) == ["cfm|seed=0|step=2", "purrception|seed=0|step=2"]
    assert conv["finished_seeds"] and "cfm" in conv["speedups"]

    md = (tmp_path / "suite" / "results.md").read_text()
    assert "| step | ok |" in md and f"commit {machine['commit']}" in md
    assert "| cfm | 0 | 2 |" in md and "| purrception | fp32 |" in md  # the stages' own tables are in it
    state = json.loads((tmp_path / "suite" / "convergence" / "suite_state.json").read_text())
    assert state == {"seeds": [0], "finished": True}  # the next run adds seed 1


def test_a_spent_budget_skips_every_stage_and_exits_cleanly(tmp_path):
    proc, data = _run(tmp_path, "--dry-run", "--budget-s", "1", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [s["name"] for s in data["stages"]] == STAGES
    assert all(s["status"] == "skipped" and "budget" in s["note"] for s in data["stages"])
    assert "| convergence | skipped |" in (tmp_path / "suite" / "results.md").read_text()


def test_a_stage_past_its_time_is_interrupted_then_killed(tmp_path):
    suite = _suite_module()
    sleeper = "import time; print('started', flush=True); time.sleep(60)"
    start = time.monotonic()
    status, code = suite.run_command([sys.executable, "-c", sleeper], {}, timeout=1.0, grace=10.0,
                                     log=tmp_path / "a.log")
    assert status == "timeout" and code != 0 and time.monotonic() - start < 10  # SIGINT ended it
    assert "started" in suite.log_tail(tmp_path / "a.log")
    deaf = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"
    start = time.monotonic()
    status, code = suite.run_command([sys.executable, "-c", deaf], {}, timeout=1.0, grace=1.0,
                                     log=tmp_path / "b.log")
    assert status == "timeout" and code == -9 and time.monotonic() - start < 10  # SIGKILL after the grace
    assert suite.run_command([sys.executable, "-c", "raise SystemExit(3)"], {}, 30, 1, tmp_path / "c.log") == \
        ("failed", 3)


@pytest.mark.parametrize(("state", "want"), [
    (None, {"seeds": [0], "finished": False}),
    ({"seeds": [0], "finished": False}, {"seeds": [0], "finished": False}),    # unfinished: go on with it
    ({"seeds": [0], "finished": True}, {"seeds": [0, 1], "finished": False}),  # finished: one more seed
    ({"seeds": [0, 1, 2], "finished": True}, {"seeds": [0, 1, 2], "finished": True}),
])
def test_the_study_grows_one_seed_per_finished_segment(state, want):
    assert _suite_module().next_seeds(state) == want


def test_tables_and_tail_are_read_from_a_log(tmp_path):
    suite = _suite_module()
    log = tmp_path / "x.log"
    log.write_bytes(b"machine: x\n\nTraining step\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
                    b"train:  50%\rtrain: 100%\nSampling\n| c |\n")
    assert suite.markdown_tables(log) == "Training step\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nSampling\n\n| c |"
    assert suite.log_tail(log, chars=20) == "100%\nSampling\n| c |\n"  # a progress bar's last state only


def test_on_a_gpu_the_study_gets_the_fresh_demo_cache_copied_into_a_kept_one(tmp_path):
    """The GPU run's demo uses a fresh cache (removed at each run); the study's data must outlive it."""
    suite_mod = _suite_module()
    args = suite_mod.argparse.Namespace(dry_run=False, device="cuda", out=str(tmp_path / "out"), cache_dir=None,
                                        demo_cache=None, budget_s=540.0)
    suite = suite_mod.Suite(args, {"liger": False})
    assert suite.demo_cache == tmp_path / "out" / "demo" / "cache" and suite.cache == tmp_path / "out" / "cache"
    plan = suite_mod.plan_demo(suite)
    assert plan.argv[plan.argv.index("--cache-dir") + 1] == str(suite.demo_cache)
    assert "--tokenizer-steps" not in plan.argv  # the GPU run is the real demo, not the tiny one
    for name in ("tokenizer-a", "shards-b-train", "classifier-c", "something-else"):
        (suite.demo_cache / name).mkdir(parents=True)
        (suite.demo_cache / name / "f").write_text(name)
    summary = {"results": {"1.0": {"class_accuracy": 0.9}}, "timings_s": {"train_s": 1.0, "tokenizer_s": 2.0},
               "training": {"steps": 1500, "final_loss": 1.0},
               "tokenizer": {"path": str(suite.demo_cache / "tokenizer-a")},
               "shards": {"path": str(suite.demo_cache / "shards-b-train")}}
    (suite.out / "demo" / "out").mkdir(parents=True)
    (suite.out / "demo" / "out" / "demo.json").write_text(json.dumps(summary))
    record = {"status": "ok", "seconds": 50.0}
    suite_mod.collect_demo(suite, record)
    assert sorted(p.name for p in suite.cache.iterdir()) == ["classifier-c", "shards-b-train", "tokenizer-a"]
    assert "tokenizer 2.0 s, train 1.0 s" in record["markdown"] and "| 1.0 | 0.900 |" in record["markdown"]

    plan = suite_mod.plan_convergence(suite)
    argv = plan.argv
    assert argv[argv.index("--tokenizer") + 1] == str(suite.cache / "tokenizer-a")
    assert argv[argv.index("--shards") + 1] == str(suite.cache / "shards-b-train")
    assert plan.env == {"PURR_CACHE": str(suite.cache)} and "steps=20000" in argv and argv[-1] == "0"  # --seeds 0
    suite_mod.shutil.rmtree(suite.demo_cache)  # the next run's demo starts afresh; the study keeps its data
    (suite.out / "demo" / "out" / "demo.json").unlink()
    assert suite_mod.plan_convergence(suite).argv == argv
