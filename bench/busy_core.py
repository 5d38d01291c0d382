"""How much slower each CPU stage runs while another process keeps one core busy, with and without the thread
governor (purrception.threads).

Each stage (tokenizer training, generator training, sampling) runs in a fresh child process, alone and beside a
``python -c "while True: pass"`` loop, under two thread settings:

- ``fixed``: ``PURR_THREADS`` = every usable core (what torch does by default: one thread per core);
- ``adaptive``: the library's default (as many threads as free cores).

Printed: seconds per stage and the ratio busy / alone for each setting (the figure; absolute times drift on shared
machines). The loop occupies one core, so on two cores a job that used both cannot do better than about 2x.

Usage::

    python bench/busy_core.py [--tokenizer-steps 60] [--train-steps 40] [--samples 100] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
stage, work, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
from purrception.data.datasets import get_dataset
if stage == "tokenizer":
    from purrception.data.embedded import load_embedded_mnist
    from purrception.data.embedded_shards import DIGITS_RECIPE
    from purrception.tokenizers.train import train_tokenizer
    images = load_embedded_mnist("train").images
    t = time.perf_counter()
    recipe = DIGITS_RECIPE.with_train(steps=n)
    train_tokenizer(images, recipe.model_config(), recipe.train, progress=False)
elif stage == "prepare":
    get_dataset("digits").prepare(work / "cache", tokenizer_steps=n, progress=False)
    t = time.perf_counter()
elif stage == "train":
    import shutil
    from purrception.training.config import resolve_config
    from purrception.training.loop import train
    data = get_dataset("digits").prepare(work / "cache", tokenizer_steps=int(sys.argv[4]), progress=False)
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    t = time.perf_counter()
    train(resolve_config("digits-demo", overrides=[f"steps={n}", f"ckpt_every={n}"]), data.shards.folder, run,
          tokenizer_path=str(data.tokenizer_dir), progress=False)
elif stage == "sample":
    from purrception.pipeline import PurrceptionPipeline
    pipe = PurrceptionPipeline.from_pretrained(work / "run")
    t = time.perf_counter()
    pipe(class_labels=list(range(10)), num_per_class=n // 10, num_inference_steps=20, seed=0)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def run_child(stage: str, work: Path, n: int, env: dict[str, str], extra: list[str] = ()) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, stage, str(work), str(n), *extra], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer-steps", type=int, default=60)
    p.add_argument("--train-steps", type=int, default=40)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--rounds", type=int, default=1, help="repeat every measurement; the median is reported")
    args = p.parse_args()
    from purrception.threads import usable_cores

    cores = usable_cores()
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PURR_THREADS")}
    settings = {"fixed": {**base, "PURR_THREADS": str(cores)}, "adaptive": base}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run_child("prepare", work, 50, settings["fixed"])      # a quick tokenizer and shards for the train stage
        run_child("train", work, 2, settings["fixed"], ["50"])  # a run for the sample stage
        # the sample stage reads the run the train stage leaves (sampling costs the same whatever the weights)
        stages = {"tokenizer": (args.tokenizer_steps, []), "train": (args.train_steps, ["50"]),
                  "sample": (args.samples, [])}
        results: dict[tuple[str, str, str], list[float]] = {}
        for _ in range(args.rounds):
            for busy in (False, True):
                loop = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
                time.sleep(1.0 if busy else 0.0)
                try:
                    for name, (n, extra) in stages.items():
                        for setting, env in settings.items():
                            seconds = run_child(name, work, n, env, extra)
                            results.setdefault((name, setting, "busy" if busy else "alone"), []).append(seconds)
                finally:
                    if loop is not None:
                        loop.kill()
                        loop.wait()
    median = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
    print(f"{cores} usable cores; one core kept busy by a pure-Python loop; median of {args.rounds} round(s)\n")
    print("| stage | setting | alone s | busy s | busy / alone |")
    print("|---|---|---|---|---|")
    for name in stages:
        for setting in settings:
            a, b = median[(name, setting, "alone")], median[(name, setting, "busy")]
            print(f"| {name} | {setting} | {a:.1f} | {b:.1f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
