"""Editing study: inpainting held-out images and class-changing variations, for every method at equal steps.

For each method (trained here with the data set's preset, ``--set`` overrides on top; runs are cached under
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

    python bench/editing_study.py --work WORK [--data digits|emoji] [--methods purrception,cfm,cfm-endpoint,dfm]
        [--steps 25] [--set steps=800] [--num 200] [--judge-epochs 30] [--grid docs/editing/digits-top.png]

Held-out emoji (``--data emoji``). The registered ``emoji`` entry trains its tokenizer, generator and judge on the
whole exported folder, so the study holds out a class-balanced tenth of the 1,898 Twemoji (seed 0) first: it
exports the other nine tenths at 32x32 as ``WORK/emoji/train-images`` and runs them through the "your own images"
route (:func:`~purrception.data.datasets.get_dataset` of that folder: its own tokenizer, shards and the
``folder`` protocol's judge, trained on half of *that* folder), with the emoji entry's preset. Neither the
tokenizer, the generators nor this judge ever saw a held-out emoji. FID is the judge's 128-d features of the
completions against all held-out emoji. The registered emoji protocol's judge (trained on half of the whole
folder, so it may have seen some sources) is reported beside it, as for the digits.

Each method is trained, then measured, before the next one starts, so an interrupted study keeps whole rows.

Everything measured is kept in ``WORK/<data>/results.json`` (rewritten after each measurement; a re-run resumes and
re-prints the tables); training runs live in ``WORK/<data>/runs/<method>[-overrides]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from purrception.checkpoint import latest_checkpoint
from purrception.data.datasets import EMOJI_SIZE, get_dataset
from purrception.data.embedded import load_embedded_mnist
from purrception.data.export_folder import export_image_folder
from purrception.data.images import folder_source
from purrception.data.reading import read_images
from purrception.errors import PurrError
from purrception.evaluation.classifier import MnistClassifier, fit_judge, load_or_train_classifier
from purrception.evaluation.fid import feature_stats, frechet_distance
from purrception.evaluation.folder_judge import load_or_train_judge, split_folder
from purrception.generation.editing import EditOutput, edit_grid, encode_images
from purrception.io import atomic_save_json, atomic_write, cache_root, load_json
from purrception.pipeline import PurrceptionPipeline
from purrception.pixels import tensor_to_images
from purrception.sampling.grid import save_png
from purrception.splits import balanced_holdout
from purrception.tokenizers.store import load_tokenizer
from purrception.training.config import resolve_config
from purrception.training.loop import train

METHODS = ("purrception", "cfm", "cfm-endpoint", "dfm")
JUDGE_SEED = 1234  # the digits protocol classifier's seed (evaluation/classifier.py; it trains 30 epochs)
EMOJI_HELDOUT = 0.1  # share of every emoji category held out of the tokenizer, the generators and the judge

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


def train_method(method: str, overrides: list[str], prepared: Any, preset: str, runs: Path) -> Path:
    """Train (or resume, or reuse) ``method`` with the data set's preset and ``overrides``; its run folder."""
    run = runs / run_name(method, overrides)
    config = resolve_config(preset, overrides=[f"method={method}", *overrides])
    resume = latest_checkpoint(run) is not None
    train(config, prepared.shards.folder, run, tokenizer_path=str(prepared.tokenizer_dir), resume=resume,
          progress=False)
    return run


@dataclass
class StudyData:
    """What one data set gives the study: the prepared training data, the held-out pool and the two judges."""

    prepared: Any               # the tokenizer and shards the generators train on (held-out images excluded)
    preset: str                 # the training preset
    heldout_images: np.ndarray  # uint8, never seen by the tokenizer, the generators or ``clean``
    heldout_labels: np.ndarray
    num_classes: int
    clean: Any                  # judge that never saw a held-out image (``.predict`` / ``.features``)
    protocol: Any               # the data set's protocol judge (may have seen the sources: an upper bound)


def digits_data(work: Path, args: argparse.Namespace) -> StudyData:
    """The digits: generators train on the train split; the held-out split is the pool."""
    dataset = get_dataset("digits")
    heldout = load_embedded_mnist("heldout")
    return StudyData(dataset.prepare(args.cache_dir or None, progress=False), dataset.preset, heldout.images,
                     heldout.labels, 10, train_split_judge(work, args.judge_epochs),
                     load_or_train_classifier(args.cache_dir or None))


def emoji_data(work: Path, args: argparse.Namespace) -> StudyData:
    """The emoji with a class-balanced tenth held out of everything that trains (module docstring)."""
    dataset = get_dataset("emoji")
    full = dataset.load()
    held = balanced_holdout(full.labels, EMOJI_HELDOUT, seed=0)
    folders = {}
    for name, part in (("train", ~held), ("heldout", held)):
        folders[name] = work / f"{name}-images"
        if not folders[name].is_dir():
            export_image_folder(full.images[part], full.labels[part], full.class_names, folders[name],
                                size=EMOJI_SIZE)
    cache = args.cache_dir or None
    train_part = get_dataset(str(folders["train"]), size=EMOJI_SIZE, channels=3)
    source = folder_source(folders["heldout"])
    images = read_images(source, EMOJI_SIZE, 3, progress=False)
    clean, facts = load_or_train_judge(split_folder(folders["train"], EMOJI_SIZE, 3), cache_root(cache))
    log.warning("train-part judge: %s", facts)
    protocol, _ = load_or_train_judge(split_folder(dataset.reference(cache), EMOJI_SIZE, 3), cache_root(cache))
    return StudyData(train_part.prepare(cache, progress=False), dataset.preset, images, source.labels,
                     len(full.class_names), clean, protocol)


STUDY_DATA = {"digits": digits_data, "emoji": emoji_data}


def train_split_judge(folder: Path, epochs: int) -> MnistClassifier:
    """The digit classifier's network and recipe, fitted on the train split for ``epochs`` (cached in ``folder``)."""
    weights = folder / f"train-split-judge-e{epochs}.safetensors"
    model = MnistClassifier()
    if weights.is_file():
        model.load_state_dict(load_file(str(weights)))
        return model.eval()
    data = load_embedded_mnist("train")
    model = fit_judge(MnistClassifier, data.images, data.labels, epochs, JUDGE_SEED)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp))
    return model.eval()


def kept_pixels(out: EditOutput) -> np.ndarray:
    """The pixel mask ``(M, H, W)`` of the kept codes' footprints."""
    size = out.sources.shape[1]
    f = size // out.keep.shape[-1]
    return np.kron(out.keep, np.ones((1, f, f), dtype=bool))


def completion_point(pipe: PurrceptionPipeline, region: str, sources: np.ndarray, labels: np.ndarray,
                     clean: Any, protocol: Any, ref_stats: Any, args: argparse.Namespace) -> dict[str, Any]:
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
                    targets: np.ndarray, clean: Any, args: argparse.Namespace) -> dict[str, Any]:
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
        lines += [f"Keep the {region} half, complete with the image's own class ({args.num} held-out {args.data}, "
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
    lines += [f"Diversity: {args.per_image} completions of each of {args.diversity_images} held-out {args.data} "
              "(top half kept, own class): distinct code grids among them / mean fraction of regenerated codes that "
              "differ between two completions:", "",
              *sweep_table(p, methods, "diversity", "tau", args.taus,
                           lambda r: "n/a (no logits)" if r.get("refused") else
                           f"{r['distinct']:.2f} / {r['differ']:.3f}")]
    lines += ["", f"Variations: {args.num_variations} held-out {args.data} each asked for another class; accuracy of "
              "the target class (train-split judge) against strength (source class in brackets):", "",
              *sweep_table(p, methods, "variation", "strength", args.strengths,
                           lambda r: f"{r['target_accuracy']:.3f} ({r['source_accuracy']:.3f})")]
    return "\n".join(lines)


def sweep_table(points: dict[str, Any], methods: list[str], kind: str, knob: str, values: list[float],
                cell: Callable[[dict[str, Any]], str]) -> list[str]:
    """A markdown table, a row per method and a column per value of ``knob``, of the points ``METHOD/KIND/VALUE``
    (blank where not measured)."""
    rows = ["| method | " + " | ".join(f"{knob} {v:g}" for v in values) + " |", "|---|" + "---|" * len(values)]
    for m in methods:
        cells = [cell(points[f"{m}/{kind}/{v:g}"]) if f"{m}/{kind}/{v:g}" in points else "" for v in values]
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder for training runs, the judge and results.json")
    p.add_argument("--data", choices=sorted(STUDY_DATA), default="digits")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=25, help="Euler sampling steps, the same for every method")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="training overrides on the data set's preset, e.g. steps=800")
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
    work.mkdir(parents=True, exist_ok=True)
    data = STUDY_DATA[args.data](work, args)
    if args.train_only:
        for m in methods:
            train_method(m, args.set, data.prepared, data.preset, work / "runs")
        return

    pool_images, pool_labels, clean = data.heldout_images, data.heldout_labels, data.clean
    ref_stats = feature_stats(clean.features(pool_images))
    args.num = min(args.num, len(pool_images))
    idx = pick(args.num, len(pool_images), args.seed)
    sources, labels = pool_images[idx], pool_labels[idx]
    settings = {k: v for k, v in vars(args).items() if k not in ("grid", "train_only", "methods", "batch_size", "work")}
    store = Store(work / "results.json", settings)
    tokenizer = load_tokenizer(data.prepared.tokenizer_dir)

    def floor(images: np.ndarray) -> dict[str, Any]:
        return {"accuracy": float(np.mean(clean.predict(images) == labels)),
                "accuracy_protocol_judge": float(np.mean(data.protocol.predict(images) == labels)),
                "fid": frechet_distance(feature_stats(clean.features(images)), ref_stats)}

    store.get("floor/sources", lambda: floor(sources))
    with torch.no_grad():
        store.get("floor/round trip", lambda: floor(tensor_to_images(tokenizer.decode(encode_images(tokenizer,
                                                                                                      sources)))))

    rng = np.random.default_rng(args.seed + 1)
    v_idx = idx[: args.num_variations]
    v_labels = pool_labels[v_idx]
    targets = (v_labels + 1 + rng.integers(0, data.num_classes - 1, len(v_idx))) % data.num_classes
    d_idx = idx[: args.diversity_images]
    for m in methods:  # train, then measure, one method at a time (a partial study still has whole rows)
        run = train_method(m, args.set, data.prepared, data.preset, work / "runs")
        pipe = PurrceptionPipeline.from_pretrained(run)
        for region in args.regions:
            store.get(f"{m}/complete/{region}",
                      lambda: completion_point(pipe, region, sources, labels, clean, data.protocol, ref_stats,
                                                       args))
        for tau in args.taus:
            def diversity() -> dict[str, Any]:
                try:
                    return diversity_point(pipe, tau, pool_images[d_idx], pool_labels[d_idx], args)
                except PurrError as err:
                    return {"refused": str(err)}
            store.get(f"{m}/diversity/{tau:g}", diversity)
        for s in args.strengths:
            store.get(f"{m}/variation/{s:g}",
                      lambda: variation_point(pipe, s, pool_images[v_idx], v_labels, targets, clean, args))
        print(f"{m}: run {run} (step {pipe.info.get('step')})", flush=True)
        if args.grid and m == methods[0]:
            rows = [idx[labels == c][0] for c in range(data.num_classes) if (labels == c).any()]  # one per class
            out = pipe.inpaint(pool_images[rows], "top", class_labels=pool_labels[rows].tolist(),
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
