"""Old against new CPU presets, side by side in one run: ``purr demo`` and the own-folder route, timed and scored.

For every route it runs the *old* code (a git revision, checked out into a temporary worktree and put first on
``PYTHONPATH``) and then this checkout, one after the other and never at the same time, each on its own fresh cache
under ``--work`` (the time to a first grid on a fresh machine is the figure), and prints one Markdown table: seconds
per stage and in all, the new/old time ratio, and the scores of each model (class accuracy and FID).

Routes:

- ``demo``: ``purr demo`` on the embedded digits (the stage times are the ones ``demo.json`` reports); then ``purr
  eval --protocol digits -n 1000`` at tau 0.8 with the sampler that version's demo used, for accuracy and FID on
  one sample size (the demo's own accuracies per tau, 100 samples each, are printed too);
- ``folder``: ``bench/own_images.py`` on 2,000 colour 32x32 digits (tokenizer, encode, train, sample; then the
  folder protocol's eval on 500 samples at CFG 3);
- ``emoji``: the same commands on the embedded emoji exported at 32x32.

Both versions run the same commands: only the library (its presets, recipes and demo defaults) differs.
The ratio is the figure to read: absolute times drift on shared machines. Keep the machine otherwise idle.

Every finished row is also appended to ``WORK/rows.jsonl``; ``--table WORK/rows.jsonl`` prints the table of such a
file again (e.g. of a run cut short).

Usage: ``python bench/cpu_budget.py --work /tmp/budget [--old REV] [--routes demo folder emoji] [--only new]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OWN_IMAGES = REPO / "bench" / "own_images.py"
#: the last revision before the CPU-budget presets (DiT-T/1 demo, batch-64 tokenizers, 50 Euler steps)
DEFAULT_OLD = "c604d2c"
ROUTES = ("demo", "folder", "emoji")


def purr_env(src: Path | None, cache: Path) -> dict[str, str]:
    """The environment of one version's commands: its source first on the path, its own cache."""
    env = dict(os.environ, PURR_CACHE=str(cache))
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def timed(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run ``cmd`` to the end (its output into ``log``); its wall-clock seconds."""
    started = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    return round(time.perf_counter() - started, 1)


def check_import(env: dict[str, str], src: Path) -> None:
    """Refuse to time a version whose commands would import the library from somewhere else than ``src``."""
    found = subprocess.run([sys.executable, "-c", "import purrception; print(purrception.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"the commands would import purrception from {found}, not from {src}")


def purr(*args: str) -> list[str]:
    return [sys.executable, "-m", "purrception", *args]


def run_demo(work: Path, env: dict[str, str]) -> dict:
    """``purr demo`` on a fresh cache, then ``purr eval`` of its model at tau 0.8 with its own sampler."""
    wall = timed(purr("demo", "--out", str(work / "demo")), env, work / "demo.log")
    demo = json.loads((work / "demo" / "demo.json").read_text())
    sampler = demo["sampling"]
    timed(purr("eval", str(work / "demo" / "model"), "--protocol", "digits", "-n", "1000", "--tau", "0.8",
               "--solver", sampler["solver"], "--sample-steps", str(sampler["sample_steps"]),
               "--cfg-scale", str(sampler["cfg_scale"]), "--out", str(work / "eval.json")), env, work / "eval.log")
    metrics = json.loads((work / "eval.json").read_text())["metrics"]
    stages = {k.removesuffix("_s"): round(v, 1) for k, v in demo["timings_s"].items()}
    return {"wall_s": wall, "stages_s": stages, "class_accuracy": metrics["class_accuracy"], "fid": metrics["fid"],
            "demo_accuracy_by_tau": {tau: r["class_accuracy"] for tau, r in demo["results"].items()},
            "sampler": f"{sampler['solver']} {sampler['sample_steps']} steps, CFG {sampler['cfg_scale']:g}",
            "model": demo["training"]["config"]["model"], "train_steps": demo["training"]["steps"],
            "tokenizer_psnr_db": demo["tokenizer"]["heldout"]["psnr_db"],
            "tokenizer_codes_used": demo["tokenizer"]["heldout"]["codes_used_fraction"]}


def run_folder(work: Path, env: dict[str, str], folder: Path | None) -> dict:
    """``bench/own_images.py``: the README's own-images commands, timed stage by stage, then the folder eval."""
    cmd = [sys.executable, str(OWN_IMAGES), "--work", str(work / "route")]
    if folder is not None:
        cmd += ["--folder", str(folder)]
    timed(cmd, env, work / "route.log")
    result = json.loads((work / "route.log").read_text().strip().splitlines()[-1])
    stages = dict(result["timings_s"])
    wall = stages.pop("folder_to_grid")
    stages.pop("eval", None)
    tok = result["tokenizer_heldout"] or {}
    return {"wall_s": wall, "stages_s": stages, "class_accuracy": result["eval"]["class_accuracy"],
            "fid": result["eval"]["fid"], "judge_accuracy_on_rest": result["judge_accuracy_on_rest"],
            "tokenizer_psnr_db": tok.get("psnr_db"), "tokenizer_codes_used": tok.get("codes_used_fraction")}


def old_checkout(rev: str, work: Path) -> Path:
    """``rev`` of this repository checked out (detached) at ``work/old-src``; its ``src`` folder."""
    tree = work / "old-src"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev], check=True,
                   stdout=subprocess.DEVNULL)
    return tree / "src"


def table(rows: list[dict]) -> str:
    lines = ["| route | version | stages (s) | total (s) | new / old | class accuracy | FID | tokenizer PSNR dB, "
             "codes used |", "|---|---|---|---:|---:|---:|---:|---|"]
    old_wall = {r["route"]: r["wall_s"] for r in rows if r["version"] == "old"}
    for r in sorted(rows, key=lambda r: (ROUTES.index(r["route"]), r["version"] != "old")):
        stages = ", ".join(f"{k} {v:g}" for k, v in r["stages_s"].items())
        ratio = f"{r['wall_s'] / old_wall[r['route']]:.2f}" if r["route"] in old_wall else "-"
        tok = (f"{r['tokenizer_psnr_db']:.2f}, {100 * r['tokenizer_codes_used']:.0f}%"
               if r.get("tokenizer_psnr_db") is not None else "-")
        lines.append(f"| {r['route']} | {r['version']} | {stages} | {r['wall_s']:.1f} | {ratio} | "
                     f"{r['class_accuracy']:.3f} | {r['fid']:.1f} | {tok} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="new folder for everything this writes")
    parser.add_argument("--table", default=None, metavar="ROWS", help="only print the table of a rows.jsonl")
    parser.add_argument("--old", default=DEFAULT_OLD, help=f"git revision of the old presets (default {DEFAULT_OLD})")
    parser.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES))
    parser.add_argument("--only", choices=("old", "new"), default=None, help="run one version only")
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]))
        return
    if not args.work:
        parser.error("--work is required")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=False)
    versions = [v for v in ("new", "old") if args.only in (None, v)]
    sources = {"old": old_checkout(args.old, work) if "old" in versions else None, "new": REPO / "src"}
    emoji = None
    if "emoji" in args.routes:
        emoji = work / "emoji32"
        subprocess.run(purr("data", "export", "--data", "emoji", "--out", str(emoji), "--size", "32"),
                       env=purr_env(sources["new"], work / "export-cache"), check=True, stdout=subprocess.DEVNULL)
    rows = []
    try:
        for route in args.routes:
            for version in versions:
                place = work / route / version
                place.mkdir(parents=True)
                env = purr_env(sources[version], place / "cache")
                check_import(env, sources[version])
                if route == "demo":
                    row = run_demo(place, env)
                else:
                    row = run_folder(place, env, emoji if route == "emoji" else None)
                row = {"route": route, "version": version, **row}
                rows.append(row)
                print(json.dumps(row), flush=True)
                with (work / "rows.jsonl").open("a") as out:
                    out.write(json.dumps(row) + "\n")
    finally:
        if sources["old"] is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "old-src")],
                           check=False)
    revision = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    print(f"\nold = {args.old}, new = {revision} (plus uncommitted changes, if any); torch "
          f"{__import__('torch').__version__}, {os.cpu_count()} CPUs\n")
    print(table(rows))


if __name__ == "__main__":
    main()
