"""Every GPU figure the project lacks, from one command that fits a short GPU window and stops cleanly at its budget.

    python bench/gpu_suite.py --out gpu-results                 # a CUDA machine: 540 s budget by default
    python bench/gpu_suite.py --dry-run --out /tmp/gpu-suite    # the same stages on the CPU, tiny shapes, 120 s

The stages run in order of value, each in its own process, with a timeout of what is left of the budget (less a
safety margin); a stage that cannot start in what is left is recorded as skipped:

1. ``step``: ``bench/step.py`` at DiT-B/2, 32x32x4 codes, K=16384, batch 32, bf16: cfm, naive, chunked and factorised
   heads, training step and sampling, ratios to CFM and efficiency (time ratio / FLOP ratio), as on the CPU;
2. ``liger``: ``bench/step.py``, the Liger-Kernel training loss beside cfm and chunked (its sampling is chunked's);
3. ``train-throughput``: ``bench/train_throughput.py``, images/s/GPU of the real training engine (paper-dit-b2 preset,
   bf16) for Purrception and CFM;
4. ``encode``: ``bench/encode_throughput.py``, both pretrained tokenizers, random weights, 256x256, batch 64;
5. ``demo``: ``purr demo --device cuda`` on a fresh cache: wall time and class accuracy;
6. ``convergence``: what is left goes to ``purr study convergence --device cuda`` at GPU scale (20,000 steps, eval every
   2,000, tau 0.9). The study resumes itself, so each run of the suite with the same ``--out`` extends it: it goes on
   from the last checkpoint, and once a seed is finished for every method the next run adds a seed (up to 3).

After every stage ``OUT/results.json`` and ``OUT/results.md`` are rewritten (temporary file + rename), with the
machine (device, torch and CUDA versions, Python), the commit and the date; each stage's full output is in
``OUT/logs/``. Keep ``OUT`` to extend the study later: its state is ``OUT/convergence`` and the cache ``OUT/cache``.
Nothing here needs the network or more than the project's own install (the ``liger`` extra for stage 2).

``--dry-run`` runs the same stages on the CPU with tiny shapes and a 120 s budget, so every piece keeps working (the
test suite runs it; its figures mean nothing). It starts about 15 Python processes that each import torch (about 2 s
of CPU apiece: roughly 60 s of CPU in all on the 2-core development VM), hence twice that as its budget. It uses the
ordinary cache (``$PURR_CACHE`` or ``~/.cache/purrception``, or ``--cache-dir``), where the digit classifier is
trained once and then reused, and Triton's interpreter for the Liger stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PY = sys.executable

#: the one small model every tiny run trains (as in the tests)
TINY_MODEL = 'model_overrides={"hidden_size":32,"depth":1,"num_heads":2}'
#: seeds the convergence study grows to, one per finished run of the suite
STUDY_SEEDS = 3

PROBE = r"""
import importlib.util, json, os, platform, sys
import torch
import purrception
from purrception.io import default_cache_dir
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "liger": importlib.util.find_spec("liger_kernel") is not None,
        "purrception": os.path.dirname(purrception.__file__), "default_cache": str(default_cache_dir())}
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info.update(device_name=props.name, gpu_count=torch.cuda.device_count(),
                gpu_memory_gib=round(props.total_memory / 2**30, 1))
print(json.dumps(info))
"""


class Skip(Exception):
    """A stage that cannot run here or now; the message says why."""


@dataclass
class Plan:
    """What one stage runs: the command, extra environment, and the JSON file it writes (removed first)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    json_out: Path | None = None


@dataclass
class Stage:
    name: str
    title: str
    min_s: tuple[float, float]          # (GPU, dry run): skipped when less than this is left
    max_s: tuple[float | None, float | None]  # a cap so that one stuck stage leaves time to the next; None: no cap
    plan: Callable[[Suite], Plan]
    collect: Callable[[Suite, dict], None]  # fills record["figures"] and record["markdown"] from what the stage wrote


# ------------------------------------------------------------------------------------------------------------
# Running one command within a time limit
# ------------------------------------------------------------------------------------------------------------


def run_command(argv: list[str], env: dict[str, str], timeout: float, grace: float, log: Path) -> tuple[str, int]:
    """Run ``argv`` in its own process group, output to ``log``; ``("ok" | "failed" | "timeout", returncode)``.

    At the timeout the group gets SIGINT (the project's commands stop cleanly on it: checkpoints and result files are
    written atomically), then SIGKILL if it is still there ``grace`` seconds later. The stage starts with SIGINT's
    default action even where this suite inherited it ignored (``nohup``, ``cmd &`` in a script), or it could only be
    killed.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, preexec_fn=_default_sigint)
        try:
            code = proc.wait(timeout=max(timeout, 0.1))
            return ("ok" if code == 0 else "failed"), code
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGINT)
            try:
                return "timeout", proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                return "timeout", proc.wait()
        except BaseException:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
            raise


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group this suite started for the stage (start_new_session)
    except ProcessLookupError:
        pass


def log_tail(log: Path, chars: int = 3000) -> str:
    """The end of a stage's output, progress bars reduced to their last state."""
    if not log.is_file():
        return ""
    text = log.read_bytes()[-8 * chars:].decode("utf-8", "replace")
    lines = [line.split("\r")[-1] for line in text.split("\n")]
    return "\n".join(lines)[-chars:]


def markdown_tables(log: Path) -> str:
    """The Markdown tables a bench script printed, each under the line printed before it."""
    if not log.is_file():
        return ""
    lines = [line.split("\r")[-1].rstrip() for line in log.read_bytes().decode("utf-8", "replace").split("\n")]
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            title = next((t.strip() for t in reversed(lines[:i]) if t.strip()), "")
            blocks.append((f"{title}\n\n" if title else "") + "\n".join(lines[i:j]))
            i = j
        else:
            i += 1
    return "\n\n".join(blocks)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


# ------------------------------------------------------------------------------------------------------------
# The suite
# ------------------------------------------------------------------------------------------------------------


class Suite:
    def __init__(self, args: argparse.Namespace, machine: dict[str, Any]):
        self.args = args
        self.dry = args.dry_run
        self.device = args.device
        self.out = Path(args.out).resolve()
        self.machine = machine
        default_cache = machine.get("default_cache") or str(Path.home() / ".cache" / "purrception")
        self.cache = Path(args.cache_dir or (default_cache if self.dry else self.out / "cache")).resolve()
        self.fresh_demo_cache = not args.demo_cache and not self.dry
        self.demo_cache = (Path(args.demo_cache).resolve() if args.demo_cache else
                           self.cache if self.dry else self.out / "demo" / "cache")
        self.margin, self.grace = (3.0, 5.0) if self.dry else (10.0, 20.0)
        self.started = time.monotonic()
        self.budget = args.budget_s
        self.records: list[dict[str, Any]] = []

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}

    # -- the record ---------------------------------------------------------------------------------------------

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = {"suite": "bench/gpu_suite.py", "mode": "dry-run" if self.dry else "gpu", "device": self.device,
                "budget_s": self.budget, "elapsed_s": round(time.monotonic() - self.started, 1),
                "command": shlex.join([sys.executable, *sys.argv]), "machine": self.machine, "stages": self.records}
        atomic_write_text(self.out / "results.json", json.dumps(data, indent=2) + "\n")
        atomic_write_text(self.out / "results.md", render_markdown(data))

    def run(self, stages: list[Stage]) -> int:
        self.records = [{"name": s.name, "title": s.title, "status": "pending"} for s in stages]
        self.write()
        for stage, record in zip(stages, self.records):
            self.run_stage(stage, record)
            self.write()
            print(f"[{stage.name}] {record['status']} in {record.get('seconds', 0):.0f} s"
                  + (f": {record['note']}" if record.get("note") else ""), flush=True)
        failed = [r["name"] for r in self.records if r["status"] == "failed"]
        print(f"results: {self.out / 'results.md'} ({time.monotonic() - self.started:.0f} s of {self.budget:.0f} s)"
              + (f"; failed: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0

    def run_stage(self, stage: Stage, record: dict[str, Any]) -> None:
        min_s = stage.min_s[self.dry]
        cap = stage.max_s[self.dry]
        available = self.left() - self.margin - self.grace  # the stage may take the grace period on top when stopped
        if available < min_s:
            record.update(status="skipped", seconds=0.0,
                          note=f"needs about {min_s:.0f} s; {max(available, 0):.0f} s of the budget were left")
            return
        try:
            plan = stage.plan(self)
        except Skip as why:
            record.update(status="skipped", seconds=0.0, note=str(why))
            return
        if plan.json_out is not None and plan.json_out.exists():
            plan.json_out.unlink()  # never report an earlier run's figures as this run's
        timeout = min(available, cap) if cap else available
        log = self.out / "logs" / f"{stage.name}.log"
        record.update(status="running", command=shlex.join(plan.argv),
                      env=dict(plan.env), log=str(log), json=str(plan.json_out) if plan.json_out else None,
                      timeout_s=round(timeout, 1))
        self.write()
        start = time.monotonic()
        try:
            status, code = run_command(plan.argv, self.env(plan.env), timeout, self.grace, log)
        except KeyboardInterrupt:
            record.update(status="failed", seconds=round(time.monotonic() - start, 1), note="interrupted")
            self.write()
            raise
        record.update(status=status, returncode=code, seconds=round(time.monotonic() - start, 1),
                      tail=log_tail(log))
        if status == "timeout":
            record["note"] = f"stopped after {timeout:.0f} s (the budget, or this stage's cap)"
        try:
            stage.collect(self, record)
        except (OSError, ValueError, KeyError, TypeError) as err:  # it ran but left nothing readable
            record.setdefault("figures", {})
            record["note"] = (record.get("note", "") + f"; could not read its results: {err!r}").lstrip("; ")
            if record["status"] == "ok":
                record["status"] = "failed"


# ------------------------------------------------------------------------------------------------------------
# The stages
# ------------------------------------------------------------------------------------------------------------


def _step_shapes(s: Suite) -> list[str]:
    if s.dry:
        return ["--device", "cpu", "--dtype", "fp32", "--backbones", "64x1/2", "--latent", "4", "--latent-dim", "4",
                "--batch", "2", "--ks", "64", "--rank", "8", "--steps", "1", "--warmup", "0", "--threads", "1"]
    return ["--device", s.device, "--dtype", "bf16", "--backbones", "DiT-B/2", "--latent", "32", "--latent-dim", "4",
            "--batch", "32", "--ks", "16384", "--steps", "10", "--warmup", "3"]


def plan_step(s: Suite) -> Plan:
    variants = "cfm,chunked" if s.dry else "cfm,naive,chunked,factorised"
    out = s.out / "step.json"
    return Plan([PY, str(BENCH / "step.py"), *_step_shapes(s), "--variants", variants, "--tasks", "step,sample",
                 "--json", str(out)], json_out=out)


def plan_liger(s: Suite) -> Plan:
    if not s.machine.get("liger"):
        raise Skip("liger-kernel is not installed (pip install -e '.[liger]')")
    out = s.out / "liger.json"
    shapes, variants, env = _step_shapes(s), "cfm,chunked,liger", {}
    if s.dry:  # Triton's interpreter is so slow that only liger itself runs, at patch 1 (one kernel call a step)
        shapes, variants, env = [*shapes, "--backbones", "64x1/1"], "liger", {"TRITON_INTERPRET": "1"}
    return Plan([PY, str(BENCH / "step.py"), *shapes, "--variants", variants, "--tasks", "step",
                 "--json", str(out)], env=env, json_out=out)


def collect_bench(s: Suite, record: dict) -> None:
    """A bench script's figures: the JSON it wrote (whatever it had finished, after a timeout) and its tables."""
    record["figures"] = load_json(Path(record["json"])) or {}
    record["markdown"] = markdown_tables(Path(record["log"]))
    if record["status"] == "ok" and not record["figures"]:
        raise ValueError(f"{record['json']} is missing")


def plan_train_throughput(s: Suite) -> Plan:
    out = s.out / "train_throughput.json"
    if s.dry:
        shapes = ["--device", "cpu", "--preset", "digits-demo", "--latent", "7", "--K", "128", "--classes", "10",
                  "--precision", "fp32", "--warmup", "1", "--steps", "1", "--items", "64",
                  "--set", "batch_size=8", "--set", TINY_MODEL]
    else:
        shapes = ["--device", s.device, "--preset", "paper-dit-b2", "--precision", "bf16", "--warmup", "5",
                  "--steps", "10"]
    return Plan([PY, str(BENCH / "train_throughput.py"), *shapes, "--methods", "purrception", "cfm",
                 "--json", str(out)], json_out=out)


def plan_encode(s: Suite) -> Plan:
    out = s.out / "encode.json"
    shapes = (["--device", "cpu", "--image-size", "32", "--batch-size", "1", "--batches", "1", "--threads", "1"]
              if s.dry else ["--device", s.device, "--batch-size", "64", "--batches", "10"])
    return Plan([PY, str(BENCH / "encode_throughput.py"), *shapes, "--json", str(out)], json_out=out)


def plan_demo(s: Suite) -> Plan:
    demo_out = s.out / "demo" / "out"
    shutil.rmtree(demo_out, ignore_errors=True)  # a fresh run: nothing reused from an earlier one
    if s.fresh_demo_cache:
        shutil.rmtree(s.demo_cache, ignore_errors=True)
    tiny = (["--tokenizer-steps", "3", "--set", "steps=2", "--set", "ckpt_every=2", "--set", "batch_size=8",
             "--set", TINY_MODEL, "--per-class", "1", "--sample-steps", "2", "--tau", "1.0"] if s.dry else [])
    return Plan([PY, "-m", "purrception", "demo", "--device", s.device, "--out", str(demo_out),
                 "--cache-dir", str(s.demo_cache), *tiny], json_out=demo_out / "demo.json")


def collect_demo(s: Suite, record: dict) -> None:
    summary = load_json(s.out / "demo" / "out" / "demo.json")
    if summary is None:
        record["figures"] = {}
        if record["status"] == "ok":
            raise ValueError("demo.json is missing")
        return
    accuracy = {tau: r["class_accuracy"] for tau, r in summary["results"].items()}
    record["figures"] = {"wall_s": record["seconds"], "timings_s": summary["timings_s"],
                         "class_accuracy": accuracy, "training_steps": summary["training"]["steps"],
                         "final_loss": summary["training"]["final_loss"],
                         "tokenizer": summary["tokenizer"]["path"], "shards": summary["shards"]["path"]}
    order = ["tokenizer_s", "encode_s", "classifier_s", "train_s", "sample_s"]  # the order the demo runs them
    timings = sorted(summary["timings_s"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    stages = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in timings)
    rows = "\n".join(f"| {tau} | {acc:.3f} |" for tau, acc in accuracy.items())
    cache = "a fresh cache" if s.fresh_demo_cache else f"the cache {s.demo_cache} (not necessarily fresh)"
    record["markdown"] = (f"`purr demo` wall clock {record['seconds']:.1f} s on {cache} ({stages}); "
                          f"{summary['training']['steps']} training steps.\n\n"
                          f"| tau | class accuracy |\n|---|---:|\n{rows}")
    if s.demo_cache != s.cache and record["status"] == "ok":
        classifiers = list(s.demo_cache.glob("classifier-*"))
        seed_cache([Path(record["figures"]["tokenizer"]), Path(record["figures"]["shards"]), *classifiers], s.cache)


def seed_cache(entries: list[Path], dest: Path) -> None:
    """Copy the demo's tokenizer, shards and digit classifier into the study's cache where it lacks them, so that
    the study trains none of them again."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        if entry.is_dir() and not (dest / entry.name).exists():
            shutil.copytree(entry, dest / entry.name)


def plan_convergence(s: Suite) -> Plan:
    folder = s.out / "convergence"
    data = load_json(folder / "data.json")  # the tokenizer and shards the study was started with
    if data is None:  # first use: the demo's, as copied into the suite's cache
        demo = load_json(s.out / "demo" / "out" / "demo.json")
        if demo is None:
            raise Skip("needs the demo stage's tokenizer and shards on its first run")
        data = {"tokenizer": str(s.cache / Path(demo["tokenizer"]["path"]).name),
                "shards": str(s.cache / Path(demo["shards"]["path"]).name)}
        missing = [p for p in data.values() if not Path(p).exists()]
        if missing:
            raise Skip(f"the demo's tokenizer and shards are not in {s.cache} ({missing[0]})")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "data.json", json.dumps(data, indent=2) + "\n")
    missing = [p for p in data.values() if not Path(p).exists()]
    if missing:
        raise Skip(f"the study's data is gone ({missing[0]}); restore it or use another --out")
    state = next_seeds(load_json(folder / "suite_state.json"))
    atomic_write_text(folder / "suite_state.json", json.dumps(state, indent=2) + "\n")
    if s.dry:
        size = ["--methods", "purrception,cfm", "--set", "steps=2", "--set", "batch_size=8", "--set", TINY_MODEL,
                "--eval-every", "2", "--num-samples", "20", "--sample-steps", "2"]
    else:
        size = ["--set", "steps=20000", "--eval-every", "2000", "--num-samples", "500", "--sample-steps", "50"]
    return Plan([PY, "-m", "purrception", "study", "convergence", "--device", s.device,
                 "--out", str(folder / "study"), "--shards", data["shards"], "--tokenizer", data["tokenizer"],
                 *size, "--tau", "0.9", "--seeds", ",".join(str(x) for x in state["seeds"])],
                env={"PURR_CACHE": str(s.cache)})


def next_seeds(state: dict | None) -> dict:
    """The seeds this run trains: the same as last time until they are finished, then one more (up to
    ``STUDY_SEEDS``)."""
    if state is None:
        return {"seeds": [0], "finished": False}
    seeds = list(state["seeds"])
    if state.get("finished") and len(seeds) < STUDY_SEEDS:
        return {"seeds": [*seeds, max(seeds) + 1], "finished": False}
    return {"seeds": seeds, "finished": state.get("finished", False)}


def collect_convergence(s: Suite, record: dict) -> None:
    folder = s.out / "convergence"
    state = load_json(folder / "suite_state.json") or {"seeds": []}
    if record["status"] == "ok":
        state["finished"] = True
        atomic_write_text(folder / "suite_state.json", json.dumps(state, indent=2) + "\n")
    elif record["status"] == "timeout":
        record["note"] += "; the study resumes from its last checkpoint when the suite runs again with this --out"
    results = load_json(folder / "study" / "results.json") or {}
    points = results.get("points", {})
    rows = []
    for key, p in sorted(points.items(), key=lambda kv: _point_order(kv[0])):
        method, seed, step = key.split("|")
        rows.append([method, seed.removeprefix("seed="), step.removeprefix("step="), f"{p['fid']:.3f}",
                     f"{p.get('class_accuracy', float('nan')):.3f}"])
    speedups = results.get("speedups") if record["status"] == "ok" else None  # else from an earlier run
    record["figures"] = {"seeds": state["seeds"], "finished_seeds": state.get("finished", False),
                         "points": points, "speedups": speedups, "study": str(folder / "study")}
    progress = "finished" if state.get("finished") else "in progress"
    lines = [f"Seeds {state['seeds']} ({progress}); {len(points)} evaluations so far in {folder / 'study'}.", ""]
    if rows:
        lines += ["| method | seed | step | FID (digits) | class accuracy |", "|---|---:|---:|---:|---:|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    for name, v in (speedups or {}).items():
        factor = f"{v['speedup']:.2f}x" if v.get("speedup") else "not reached"
        lines.append(f"\nSpeed-up vs {name}: {factor} (baseline's final FID {v['baseline_final_fid']:.3f} at step "
                     f"{v['baseline_final_step']})")
    record["markdown"] = "\n".join(lines)


def _point_order(key: str) -> tuple:
    method, seed, step = key.split("|")
    return method, int(seed.removeprefix("seed=")), int(step.removeprefix("step="))


STAGES = [
    Stage("step", "K-way head vs CFM: training step and sampling (bench/step.py)", (60, 3), (260, None),
          plan_step, collect_bench),
    Stage("liger", "Liger-Kernel training loss beside cfm and chunked (bench/step.py)", (40, 3), (150, None),
          plan_liger, collect_bench),
    Stage("train-throughput", "Training engine images/s/GPU, Purrception and CFM (bench/train_throughput.py)",
          (40, 3), (120, None), plan_train_throughput, collect_bench),
    Stage("encode", "Encode throughput of the pretrained tokenizers (bench/encode_throughput.py)", (30, 3),
          (120, None), plan_encode, collect_bench),
    Stage("demo", "purr demo: wall time and class accuracy", (60, 3), (200, None), plan_demo, collect_demo),
    Stage("convergence", "purr study convergence, one more segment", (30, 3), (None, None), plan_convergence,
          collect_convergence),
]


# ------------------------------------------------------------------------------------------------------------
# Header and Markdown
# ------------------------------------------------------------------------------------------------------------


def git_commit() -> dict[str, Any]:
    def git(*argv: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True, timeout=30,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit or "unknown", "dirty": bool(status) if status is not None else None}


def probe_machine(device: str) -> dict[str, Any]:
    proc = subprocess.run([PY, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise SystemExit(f"gpu_suite: cannot import torch and purrception here:\n{proc.stderr[-2000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info["device"] = info.get("device_name", "CPU") if device.startswith("cuda") else \
        f"CPU ({info['cpu_count']} cores)"
    info.update(git_commit(), date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if not Path(info["purrception"]).resolve().is_relative_to(REPO):
        info["warning"] = f"purrception is imported from {info['purrception']}, not from this checkout ({REPO})"
    return info


def header_lines(m: dict[str, Any]) -> list[str]:
    dirty = " (with uncommitted changes)" if m.get("dirty") else ""
    lines = [f"device: {m['device']}" + (f", {m['gpu_memory_gib']} GiB, {m['gpu_count']} visible"
                                          if "gpu_memory_gib" in m else ""),
             f"torch {m['torch']}, CUDA {m['cuda'] or 'none'}, Python {m['python']}, {m['platform']}",
             f"commit {m['commit']}{dirty}; {m['date']}"]
    if m.get("warning"):
        lines.append(f"warning: {m['warning']}")
    return lines


def render_markdown(data: dict[str, Any]) -> str:
    mode = ("dry run (CPU, tiny shapes: it checks that every stage runs; its figures mean nothing)"
            if data["mode"] == "dry-run" else "GPU")
    out = ["# GPU suite results", "", f"- mode: {mode}", *[f"- {line}" for line in header_lines(data["machine"])],
           f"- budget {data['budget_s']:.0f} s, {data['elapsed_s']:.0f} s used", f"- `{data['command']}`", "",
           "| stage | status | seconds | note |", "|---|---|---:|---|"]
    for r in data["stages"]:
        note = r.get("note", "").replace("|", "/")
        out.append(f"| {r['name']} | {r['status']} | {r.get('seconds', 0):.1f} | {note} |")
    for r in data["stages"]:
        if r.get("markdown") or r.get("command"):
            out += ["", f"## {r['name']}: {r['title']}", "", f"Status {r['status']}."]
            if r.get("command"):
                env = " ".join(f"{k}={shlex.quote(v)}" for k, v in r.get("env", {}).items())
                out += ["", f"`{(env + ' ') if env else ''}{r['command']}`"]
            if r.get("markdown"):
                out += ["", r["markdown"]]
            if r["status"] == "failed" and r.get("tail"):
                out += ["", "```", r["tail"][-1500:], "```"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder; reuse it to extend the convergence study")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for the whole suite (default: 540, or 120 with --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="the same stages on the CPU with tiny shapes")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --dry-run")
    parser.add_argument("--cache-dir", default=None,
                        help="the study's cache (default: OUT/cache; with --dry-run the ordinary cache)")
    parser.add_argument("--demo-cache", default=None,
                        help="the demo's cache (default: a fresh OUT/demo/cache; with --dry-run the study's)")
    args = parser.parse_args(argv)
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    args.budget_s = args.budget_s if args.budget_s is not None else (120.0 if args.dry_run else 540.0)
    started = time.monotonic()
    machine = probe_machine(args.device)
    if args.device.startswith("cuda") and not machine["cuda_available"]:
        print("gpu_suite: no CUDA device is visible here; --dry-run runs the same stages on the CPU",
              file=sys.stderr)
        return 2
    print("\n".join(header_lines(machine)), flush=True)
    suite = Suite(args, machine)
    suite.started = started  # the probe counts against the budget too
    try:
        return suite.run(STAGES)
    except KeyboardInterrupt:
        print(f"gpu_suite: interrupted; what was measured is in {suite.out / 'results.md'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
