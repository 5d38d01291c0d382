"""Editing study: inpainting held-out images and class-changing variations, for every method at equal steps.

For each method (trained here with the ``digits-demo`` preset, ``--set`` overrides on top; runs are cached under
``--work`` and resumed) the study edits images the generator never saw and measures:

- **Completion** (keep the top half, and separately the left half; complete with the image's own class; one
  completion per image): class accuracy of the completions, FID of the completions against the held-out split,
  and the mean absolute pixel change inside the kept region, next to the tokenizer's round-trip error on the same
  pixels (a kept code is clamped to its source code, flows/known.py, so the kept region can only move by what the
  decoder does around a regenerated neighbour: the change should be near the round-trip error, nothing more).
  A code is kept only if its whole footprint is (generation/editing.py), so on the 7x7 code grid of 28x28 digits
  (4x4 pixels per code) "top half" keeps code rows 0-2 (pixel rows 0-11) and regenerates rows 3-6.
- **Diversity** against the temperature ``tau`` of eq. 15 (methods with logits; the others at ``tau = 1`` only):
  ``--per-image`` completions of each of ``--diversity-images`` images (top half kept): the number of distinct code
  grids among them, and the mean fraction of regenerated codes that differ between two completions of one image.
- **Variations** (SDEdit for flows, generation/editing.py): each image asked for another class (``(y + 1 + r) mod
  10``, ``r`` drawn once per image), accuracy of the *target* class against ``strength``.

Judges (digits). The ``digits`` protocol's classifier was trained on the held-out split, i.e. on the very images
being completed, so it is not a clean judge of completions of them. The study therefore trains a second classifier,
same network and recipe (:func:`~purrception.evaluation.classifier.fit_judge`, seed 1234; ``--judge-epochs``, 30 as
the protocol's by default), on the *train* split, which the generator trained on but which holds none of the edited
images: it never saw the held-out images, and neither did the generator. Its accuracy and its penultimate
features (FID against all 1,000 held-out images) are the study's numbers; the protocol classifier's accuracy is
reported beside them as an upper bound (it saw the sources). The FID of the untouched sources and of their
tokenizer round trip are the floors at this N.

Usage::

    python bench/editing_study.py --work WORK [--data digits] [--methods purrception,cfm,cfm-endpoint,dfm]
        [--steps 25] [--set steps=800] [--num 200] [--judge-epochs 30] [--grid docs/editing/digits-top.png]

Each method is trained, then measured, before the next one starts, so an interrupted study keeps whole rows. The
emoji are not a ``--data`` choice yet: the folder protocol's generator trains on the whole folder, so a held-out
set would first have to be removed from its training images.

Everything measured is kept in ``WORK/<data>/results.json`` (rewritten after each measurement; a re-run resumes and
re-prints the tables); training runs live in ``WORK/<data>/runs/<method>[-overrides]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from purrception.checkpoint import latest_checkpoint
from purrception.data.datasets import get_dataset
from purrception.data.embedded import load_embedded_mnist
from purrception.errors import PurrError
from purrception.evaluation.classifier import MnistClassifier, fit_judge, load_or_train_classifier
from purrception.evaluation.fid import feature_stats, frechet_distance
from purrception.generation.editing import EditOutput, edit_grid, encode_images
from purrception.io import atomic_save_json, atomic_write, load_json
from purrception.pipeline import PurrceptionPipeline
from purrception.pixels import tensor_to_images
from purrception.sampling.grid import save_png
from purrception.tokenizers.store import load_tokenizer
from purrception.training.config import resolve_config
from purrception.training.loop import train

METHODS = ("purrception", "cfm", "cfm-endpoint", "dfm")
JUDGE_SEED = 1234  # the digits protocol classifier's seed (evaluation/classifier.py; it trains 30 epochs)

log = logging.getLogger("editing_study")


class Store:
    """Measured points keyed by name, in ``results.json``, saved after each new one (so a study resumes)."""

    def __init__(self, path: Path, settings: dict[str, Any]):
        self.path = path
        settings = json.loads(json.dumps(settings))
        self.data = load_json(path, "study results") if path.exists() else {"settings": settings, "points": {}}
        if self.data["settings"] != settings:
            raise SystemExit(f"{path} holds a study made with other settings; use another --work folder")

    def get(self, key: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if key not in self.data["points"]:
            self.data["points"][key] = measure()
            atomic_save_json(self.path, self.data)
            log.warning("measured %s: %s", key, self.data["points"][key])
        return self.data["points"][key]


def run_name(method: str, overrides: list[str]) -> str:
    """``purrception`` or ``purrception-steps800`` (the overrides, without their ``=``)."""
    parts = [method] + ["".join(ch for ch in item if ch.isalnum() or ch in ".-_") for item in overrides]
    return "-".join(parts)


def train_method(method: str, overrides: list[str], prepared: Any, runs: Path) -> Path:
    """Train (or resume, or reuse) ``method`` with the data set's preset and ``overrides``; its run folder."""
    run = runs / run_name(method, overrides)
    config = resolve_config("digits-demo", overrides=[f"method={method}", *overrides])
    resume = latest_checkpoint(run) is not None
    train(config, prepared.shards.folder, run, tokenizer_path=str(prepared.tokenizer_dir), resume=resume,
          progress=False)
    return run


class Judge:
    """Class predictions and FID features of one classifier."""

    def __init__(self, model: MnistClassifier):
        self.model = model

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict(images)

    def features(self, images: np.ndarray) -> np.ndarray:
        return self.model.features(images)


def train_split_judge(folder: Path, epochs: int) -> Judge:
    """The digit classifier's network and recipe, fitted on the train split for ``epochs`` (cached in ``folder``)."""
    weights = folder / f"train-split-judge-e{epochs}.safetensors"
    model = MnistClassifier()
    if weights.is_file():
        model.load_state_dict(load_file(str(weights)))
        return Judge(model.eval())
    data = load_embedded_mnist("train")
    model = fit_judge(MnistClassifier, data.images, data.labels, epochs, JUDGE_SEED)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp))
    return Judge(model.eval())


def kept_pixels(out: EditOutput) -> np.ndarray:
    """The pixel mask ``(M, H, W)`` of the kept codes' footprints."""
    size = out.sources.shape[1]
    f = size // out.keep.shape[-1]
    return np.kron(out.keep, np.ones((1, f, f), dtype=bool))


def completion_point(pipe: PurrceptionPipeline, region: str, sources: np.ndarray, labels: np.ndarray,
                     clean: Judge, protocol: Judge, ref_stats: Any, args: argparse.Namespace) -> dict[str, Any]:
    out = pipe.inpaint(sources, region, class_labels=labels.tolist(), num_per_image=1,
                       num_inference_steps=args.steps, tau=1.0, seed=args.seed, batch_size=args.batch_size)
    mask = kept_pixels(out)
    src = out.sources.astype(np.float64)
    round_trip = pipe.decode(out.source_codes).astype(np.float64)
    done = out.pixels.astype(np.float64)
    return {"accuracy": float(np.mean(clean.predict(out.pixels) == labels)),
            "accuracy_protocol_judge": float(np.mean(protocol.predict(out.pixels) == labels)),
            "fid": frechet_distance(feature_stats(clean.features(out.pixels)), ref_stats),
            "kept_change": float(np.abs(done - src)[mask].mean() / 255),
            "kept_round_trip": float(np.abs(round_trip - src)[mask].mean() / 255),
            "kept_vs_round_trip": float(np.abs(done - round_trip)[mask].mean() / 255),
            "kept_codes_equal": bool(torch.equal(out.codes[torch.from_numpy(out.keep)],
                                                 out.source_codes[torch.from_numpy(out.keep)])),
            "kept_fraction": float(mask.mean())}


def diversity_point(pipe: PurrceptionPipeline, tau: float, sources: np.ndarray, labels: np.ndarray,
                    args: argparse.Namespace) -> dict[str, Any]:
    k = args.per_image
    out = pipe.inpaint(sources, "top", class_labels=labels.tolist(), num_per_image=k, num_inference_steps=args.steps,
                       tau=tau, seed=args.seed, batch_size=args.batch_size)
    codes = out.codes.reshape(len(sources), k, -1).numpy()
    free = ~out.keep.reshape(len(sources), k, -1)[:, 0]                      # (N, h*w) regenerated codes
    distinct, differ = [], []
    for i in range(len(sources)):
        distinct.append(len(np.unique(codes[i], axis=0)))
        grid = codes[i][:, free[i]]
        pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
        differ.append(np.mean([np.mean(grid[a] != grid[b]) for a, b in pairs]))
    return {"distinct": float(np.mean(distinct)), "differ": float(np.mean(differ)), "per_image": k}


def variation_point(pipe: PurrceptionPipeline, strength: float, sources: np.ndarray, labels: np.ndarray,
                    targets: np.ndarray, clean: Judge, args: argparse.Namespace) -> dict[str, Any]:
    out = pipe.variations(sources, strength, class_labels=targets.tolist(), num_inference_steps=args.steps,
                          tau=1.0, seed=args.seed, batch_size=args.batch_size)
    predicted = clean.predict(out.pixels)
    return {"target_accuracy": float(np.mean(predicted == targets)),
            "source_accuracy": float(np.mean(predicted == labels)), "first_step": out.first_step}


def pick(n: int, total: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(total)[:n])


def tables(store: Store, methods: list[str], args: argparse.Namespace) -> str:
    p = store.data["points"]
    lines = []
    for region in args.regions:
        lines += [f"Keep the {region} half, complete with the image's own class ({args.num} held-out digits, "
                  f"{args.steps} Euler steps, tau 1, no guidance):", "",
                  "| method | accuracy (train-split judge) | accuracy (protocol judge, saw sources) | FID vs held-out "
                  "| kept-pixel change | round-trip error, same pixels | change vs round trip | kept codes equal |",
                  "|---|---|---|---|---|---|---|---|"]
        for name in ("sources", "round trip"):
            f = p.get(f"floor/{name}")
            if f:
                lines.append(f"| *{name}* | {f['accuracy']:.3f} | {f['accuracy_protocol_judge']:.3f} | "
                             f"{f['fid']:.2f} | | | | |")
        for m in methods:
            r = p.get(f"{m}/complete/{region}")
            if r:
                lines.append(f"| {m} | {r['accuracy']:.3f} | {r['accuracy_protocol_judge']:.3f} | {r['fid']:.2f} | "
                             f"{r['kept_change']:.4f} | {r['kept_round_trip']:.4f} | {r['kept_vs_round_trip']:.4f} | "
                             f"{'yes' if r['kept_codes_equal'] else 'NO'} |")
        lines.append("")
    lines += [f"Diversity: {args.per_image} completions of each of {args.diversity_images} held-out digits (top half "
              "kept, own class): distinct code grids among them / mean fraction of regenerated codes that differ "
              "between two completions:", "",
              "| method | " + " | ".join(f"tau {t:g}" for t in args.taus) + " |",
              "|---|" + "---|" * len(args.taus)]
    for m in methods:
        cells = []
        for t in args.taus:
            r = p.get(f"{m}/diversity/{t:g}")
            cells.append("n/a (no logits)" if r and r.get("refused") else
                         f"{r['distinct']:.2f} / {r['differ']:.3f}" if r else "")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", f"Variations: {args.num_variations} held-out digits each asked for another class; accuracy of the "
              "target class (train-split judge) against strength (source class in brackets):", "",
              "| method | " + " | ".join(f"strength {s:g}" for s in args.strengths) + " |",
              "|---|" + "---|" * len(args.strengths)]
    for m in methods:
        cells = []
        for s in args.strengths:
            r = p.get(f"{m}/variation/{s:g}")
            cells.append(f"{r['target_accuracy']:.3f} ({r['source_accuracy']:.3f})" if r else "")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder for training runs, the judge and results.json")
    p.add_argument("--data", choices=["digits"], default="digits")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=25, help="Euler sampling steps, the same for every method")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="training overrides on the digits-demo preset, e.g. steps=800")
    p.add_argument("--num", type=int, default=200, help="held-out images completed per region")
    p.add_argument("--regions", default="top,left")
    p.add_argument("--diversity-images", type=int, default=16)
    p.add_argument("--per-image", type=int, default=8)
    p.add_argument("--taus", default="0.5,0.8,1.0,1.2")
    p.add_argument("--num-variations", type=int, default=100)
    p.add_argument("--strengths", default="0.2,0.4,0.6,0.8,1.0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--cache-dir", default="", help="tokenizer, shards and the protocol classifier (default: "
                                                   "the user cache)")
    p.add_argument("--grid", default="", help="write a source | mask | completions grid here (first method; top "
                                              "half kept; the first source of each class, 6 completions each)")
    p.add_argument("--judge-epochs", type=int, default=30, help="epochs of the train-split judge (the protocol "
                                                                   "classifier's recipe has 30)")
    p.add_argument("--train-only", action="store_true")
    args = p.parse_args()
    args.regions = args.regions.split(",")
    args.taus = [float(t) for t in args.taus.split(",")]
    args.strengths = [float(s) for s in args.strengths.split(",")]
    methods = args.methods.split(",")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    torch.manual_seed(0)

    work = Path(args.work) / args.data
    prepared = get_dataset(args.data).prepare(args.cache_dir or None, progress=False)
    if args.train_only:
        for m in methods:
            train_method(m, args.set, prepared, work / "runs")
        return

    heldout = load_embedded_mnist("heldout")
    clean = train_split_judge(work, args.judge_epochs)
    protocol = Judge(load_or_train_classifier(args.cache_dir or None))
    ref_stats = feature_stats(clean.features(heldout.images))
    idx = pick(args.num, len(heldout.images), args.seed)
    sources, labels = heldout.images[idx], heldout.labels[idx]
    settings = {k: v for k, v in vars(args).items() if k not in ("grid", "train_only", "methods", "batch_size", "work")}
    store = Store(work / "results.json", settings)
    tokenizer = load_tokenizer(prepared.tokenizer_dir)

    def floor(images: np.ndarray) -> dict[str, Any]:
        return {"accuracy": float(np.mean(clean.predict(images) == labels)),
                "accuracy_protocol_judge": float(np.mean(protocol.predict(images) == labels)),
                "fid": frechet_distance(feature_stats(clean.features(images)), ref_stats)}

    store.get("floor/sources", lambda: floor(sources))
    with torch.no_grad():
        store.get("floor/round trip", lambda: floor(tensor_to_images(tokenizer.decode(encode_images(tokenizer,
                                                                                                      sources)))))

    rng = np.random.default_rng(args.seed + 1)
    v_idx = idx[: args.num_variations]
    v_labels = heldout.labels[v_idx]
    targets = (v_labels + 1 + rng.integers(0, 9, len(v_idx))) % 10
    d_idx = idx[: args.diversity_images]
    for m in methods:  # train, then measure, one method at a time (a partial study still has whole rows)
        run = train_method(m, args.set, prepared, work / "runs")
        pipe = PurrceptionPipeline.from_pretrained(run)
        for region in args.regions:
            store.get(f"{m}/complete/{region}",
                      lambda: completion_point(pipe, region, sources, labels, clean, protocol, ref_stats, args))
        for tau in args.taus:
            def diversity() -> dict[str, Any]:
                try:
                    return diversity_point(pipe, tau, heldout.images[d_idx], heldout.labels[d_idx], args)
                except PurrError as err:
                    return {"refused": str(err)}
            store.get(f"{m}/diversity/{tau:g}", diversity)
        for s in args.strengths:
            store.get(f"{m}/variation/{s:g}",
                      lambda: variation_point(pipe, s, heldout.images[v_idx], v_labels, targets, clean, args))
        print(f"{m}: run {run} (step {pipe.info.get('step')})", flush=True)
        if args.grid and m == methods[0]:
            rows = [idx[labels == c][0] for c in range(10) if (labels == c).any()]   # one source per class
            out = pipe.inpaint(heldout.images[rows], "top", class_labels=heldout.labels[rows].tolist(),
                               num_per_image=6, num_inference_steps=args.steps, seed=args.seed)
            Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
            save_png(args.grid, edit_grid(out), scale=3)
        print(tables(store, methods, args), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    print(f"\nmachine: {platform.machine()}, {torch.get_num_threads()} torch threads; commit {commit}\n")
    print(tables(store, methods, args))


if __name__ == "__main__":
    main()
