"""Folder -> sample grid on this machine, timed stage by stage: the README's "Your own images" commands.

Makes a folder the project has never trained on -- colour digits: embedded MNIST digits padded to 32x32, a random
foreground and background colour per image, ``--per-class`` per class -- then runs, as a user would:

    purr tokenizer train --images DIR --out TOK
    purr encode --tokenizer TOK --images DIR --out SHARDS
    purr train --shards SHARDS --out RUN --preset folder-cpu
    purr sample RUN --out SAMPLES --cfg-scale 3
    purr eval RUN --protocol folder --reference DIR --cfg-scale 3

and prints one JSON line with the seconds of every stage, the eval report's scores (class accuracy, FID,
precision / recall) and the folder judge's own accuracy on the images it did not train on.
Usage: ``python bench/own_images.py --work /tmp/own-images [--per-class 200] [--folder DIR]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_colour_digits(root: Path, per_class: int, seed: int = 0) -> None:
    from purrception.data.embedded import load_embedded_mnist

    data = load_embedded_mnist("train")
    rng = np.random.default_rng(seed)
    for digit in range(10):
        folder = root / f"digit-{digit}"
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(data.labels == digit)[:per_class]):
            ink = np.pad(data.images[index], 2).astype(np.float32)[..., None] / 255.0
            fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            while np.abs(fg.astype(int) - bg.astype(int)).sum() < 200:  # keep the digit legible
                fg = rng.integers(0, 256, 3)
            rgb = (ink * fg + (1 - ink) * bg).round().astype(np.uint8)
            Image.fromarray(rgb).save(folder / f"{i:04d}.png")


def run(stage: str, args: list[str], timings: dict[str, float]) -> None:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "purrception", *args], check=True)
    timings[stage] = round(time.perf_counter() - t0, 1)
    print(f"{stage}: {timings[stage]} s", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="new folder for everything this writes")
    parser.add_argument("--folder", default=None, help="use this image folder instead of the colour digits")
    parser.add_argument("--per-class", type=int, default=200, help="colour digits per class (default 200)")
    parser.add_argument("--num-eval", type=int, default=500, help="samples for purr eval (default 500)")
    parser.add_argument("--preset", default="folder-cpu", help="training preset (default folder-cpu)")
    parser.add_argument("--cfg-scale", default="3", help="guidance for sampling and eval (default 3)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=False)
    images = Path(args.folder) if args.folder else work / "images"
    if not args.folder:
        make_colour_digits(images, args.per_class)
    timings: dict[str, float] = {}
    run("tokenizer", ["tokenizer", "train", "--images", str(images), "--out", str(work / "tok"), "--no-progress"],
        timings)
    run("encode", ["encode", "--tokenizer", str(work / "tok"), "--images", str(images), "--out",
                   str(work / "shards"), "--no-progress"], timings)
    run("train", ["train", "--shards", str(work / "shards"), "--out", str(work / "run"), "--preset", args.preset,
                  "--no-progress"], timings)
    run("sample", ["sample", str(work / "run"), "--out", str(work / "samples"), "--cfg-scale", args.cfg_scale],
        timings)
    timings["folder_to_grid"] = round(sum(timings.values()), 1)
    result: dict = {"timings_s": timings, "grid": str(work / "samples")}
    run("eval", ["eval", str(work / "run"), "--protocol", "folder", "--reference", str(images), "-n",
                 str(args.num_eval), "--cfg-scale", args.cfg_scale, "--out", str(work / "eval.json")], timings)
    report = json.loads((work / "eval.json").read_text())
    result["eval"] = report["metrics"]
    result["judge_accuracy_on_rest"] = report["feature_extractor"]["judge"]["accuracy_on_rest"]
    tok = json.loads((work / "tok" / "config.json").read_text())
    result["tokenizer_heldout"] = tok["metrics"].get("heldout")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
