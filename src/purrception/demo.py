"""``purr demo``: the whole product on an embedded data set, on 2 CPU cores, in minutes.

Stages (each cached, so a second run reuses the work): train a VQ tokenizer, encode the data to token shards, train
a Purrception DiT, sample every class at several temperatures, and judge the samples with a classifier that did not
train on the generator's data. Writes ``grid.png``, ``samples.npz`` and ``demo.json``. The data sets
(:data:`DEMO_DATA`):

- ``mnist``: the embedded digits (28x28 grey): the tokenizer trains on the train split, the digit classifier on the
  held-out split (``evaluation.classifier``).
- ``emoji``: the Twemoji PNGs (``data.emoji``, the ``colour`` extra) exported once as a 32x32 RGB class-folder
  image folder, then the "your own images" route on that folder: ``train_tokenizer_on_folder``, ``encode_images``
  and the folder protocol's judge (``evaluation.folder_judge``, trained on half of every class).

The model stage resumes the run in ``OUT/model`` (``train(..., resume=True)``): a larger ``--set steps=N`` continues
it to N steps, and other ``--set`` values follow the resume rules of ``training.config.resumed_config``. When the
reused run's config differs from the one asked for (fields not given with ``--set`` keep the run's values), a warning
says so and ``demo.json`` records the differences under ``training.differs_from_asked``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from purrception.checkpoint import Checkpoint, load_checkpoint
from purrception.data.embedded import NUM_CLASSES
from purrception.data.embedded_shards import ensure_embedded_shards, ensure_embedded_tokenizer
from purrception.data.shards import TokenShards
from purrception.errors import PurrError
from purrception.evaluation.classifier import ImageJudge, classifier_info, load_or_train_classifier
from purrception.generation.generate import generate_images
from purrception.io import atomic_save_json, cache_root
from purrception.sampling.grid import image_grid, save_png, save_samples_npz
from purrception.sampling.settings import SamplerSettings
from purrception.tokenizers.store import CONFIG_NAME, load_tokenizer
from purrception.training.config import TrainConfig, config_differences, explicit_fields, resolve_config
from purrception.training.loop import train

__all__ = ["DemoSettings", "DemoData", "DEMO_DATA", "run_demo"]

log = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    """What ``purr demo`` does; the defaults finish in well under 15 minutes on 2 CPU cores."""

    out_dir: str = "purr-demo"
    data: str = "mnist"                          # a key of DEMO_DATA
    cache_dir: str = ""
    preset: str = "mnist-demo"
    train_overrides: list[str] = field(default_factory=list)
    temperatures: tuple[float | str, ...] = (0.5, 0.8, 1.0, 1.3)   # numbers or schedule specs, a panel each
    per_class: int = 10
    sample_steps: int = 50
    cfg_scale: float = 1.0
    seed: int = 0
    tokenizer_steps: int | None = None          # None: the data set's default
    device: str = "cpu"


@dataclass
class DemoData:
    """What the demo's later stages need from a data set: its tokenizer, token shards and judge."""

    description: str
    tokenizer_dir: Path
    shards: TokenShards
    class_names: list[str]
    judge: ImageJudge
    judge_facts: dict[str, Any]
    timings: dict[str, float]


def _timed(timings: dict[str, float], name: str, work: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    result = work()
    timings[name] = time.perf_counter() - t0
    return result


def _mnist(settings: DemoSettings, cache: Path, progress: bool) -> DemoData:
    timings: dict[str, float] = {}
    steps = settings.tokenizer_steps or 1000
    tok_dir = _timed(timings, "tokenizer_s",
                     lambda: ensure_embedded_tokenizer(cache, steps, progress, settings.device))
    shards = _timed(timings, "encode_s", lambda: ensure_embedded_shards(cache, tok_dir))
    judge = _timed(timings, "classifier_s", lambda: load_or_train_classifier(cache))
    return DemoData("Purrception on the embedded MNIST digits", tok_dir, shards, [str(i) for i in range(NUM_CLASSES)],
                    judge, classifier_info(cache), timings)


def _emoji(settings: DemoSettings, cache: Path, progress: bool) -> DemoData:
    from purrception.data.embedded_emoji import (
        EMOJI_SIZE,
        ensure_emoji_folder,
        ensure_emoji_shards,
        ensure_emoji_tokenizer,
    )
    from purrception.evaluation.folder_judge import load_or_train_judge, split_folder

    timings: dict[str, float] = {}
    folder = ensure_emoji_folder(cache)
    tok_dir = _timed(timings, "tokenizer_s", lambda: ensure_emoji_tokenizer(folder, settings.tokenizer_steps,
                                                                             progress, settings.device))
    shard_set = _timed(timings, "encode_s", lambda: ensure_emoji_shards(folder, tok_dir, progress))
    split = split_folder(folder.images, EMOJI_SIZE, 3)
    judge, facts = _timed(timings, "classifier_s", lambda: load_or_train_judge(split, cache))
    return DemoData(f"Purrception on the embedded Twemoji ({EMOJI_SIZE}x{EMOJI_SIZE} RGB)", tok_dir, shard_set,
                    list(folder.class_names), judge, facts, timings)


#: ``purr demo --data NAME``: how each data set gets its tokenizer, shards and judge
DEMO_DATA: dict[str, Callable[[DemoSettings, Path, bool], DemoData]] = {"mnist": _mnist, "emoji": _emoji}


def run_demo(settings: DemoSettings, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every stage and return the summary written to ``demo.json``."""
    if settings.data not in DEMO_DATA:
        raise PurrError(f"unknown demo data {settings.data!r}; choose one of: {', '.join(DEMO_DATA)}")
    out = Path(settings.out_dir)
    cache = cache_root(settings.cache_dir)
    data = DEMO_DATA[settings.data](settings, cache, progress)
    timings = dict(data.timings)
    tok_dir, shards, classifier = data.tokenizer_dir, data.shards, data.judge
    tokenizer = load_tokenizer(tok_dir)
    shard_dir = shards.folder
    num_classes = len(data.class_names)

    t0 = time.perf_counter()
    config = resolve_config(settings.preset, overrides=settings.train_overrides)
    result = train(config, shard_dir, out / "model", tokenizer_path=str(tok_dir), resume=True, progress=progress,
                   device=settings.device, explicit=explicit_fields(overrides=settings.train_overrides))
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ckpt = load_checkpoint(result.checkpoint)
    differs = _reused_run_differences(ckpt, config, out / "model")
    method, model = ckpt.build_method().to(settings.device), ckpt.build_model(ema=True).to(settings.device)
    tokenizer.to(settings.device)
    labels = np.repeat(np.arange(num_classes), settings.per_class)
    panels, all_images, all_labels, all_taus, per_tau = [], [], [], [], {}
    for tau in settings.temperatures:
        sampler = SamplerSettings(sample_steps=settings.sample_steps, tau=tau, cfg_scale=settings.cfg_scale)
        images = generate_images(method, model, tokenizer, labels, sampler, settings.seed, device=settings.device,
                                 progress=progress)
        accuracy = float((classifier.predict(images) == labels).mean())
        per_tau[str(tau)] = {"class_accuracy": accuracy}
        log.info("tau %s: the judge reads the requested class in %.1f%% of samples", tau, 100 * accuracy)
        panels.append(image_grid(images, rows=num_classes))
        all_images.append(images)
        all_labels.append(labels)
        all_taus.append(np.full(len(labels), tau))
    timings["sample_s"] = time.perf_counter() - t0

    gap = np.full((panels[0].shape[0], 8, *panels[0].shape[2:]), 255, dtype=np.uint8)
    grid = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    save_png(out / "grid.png", grid, scale=3)
    save_samples_npz(out / "samples.npz", np.concatenate(all_images), np.concatenate(all_labels),
                     tau=np.concatenate(all_taus))
    tok_meta = json.loads((tok_dir / CONFIG_NAME).read_text())
    summary = {
        "what": f"purr demo --data {settings.data}: {data.description}",
        "data": settings.data,
        "tokenizer": {"path": str(tok_dir), "identity": tokenizer.identity().to_dict(), **tok_meta["metrics"]},
        "shards": {"path": str(shard_dir), "num_items": len(shards)},
        "training": {"checkpoint": str(result.checkpoint), "steps": result.step, "final_loss": result.last_loss,
                     "resumed_from_step": result.start_step, "config": ckpt.state.config,
                     "differs_from_asked": differs},
        "sampling": {"solver": "euler", "sample_steps": settings.sample_steps, "cfg_scale": settings.cfg_scale,
                     "temperatures": list(settings.temperatures), "per_class": settings.per_class,
                     "seed": settings.seed, "weights": "EMA"},
        "classifier": data.judge_facts,
        "results": per_tau,
        "outputs": {"grid": str(out / "grid.png"), "samples": str(out / "samples.npz"),
                    "grid_layout": "one panel per temperature (left to right), one row per class",
                    "class_names": data.class_names},
        "timings_s": timings,
    }
    atomic_save_json(out / "demo.json", summary)
    return summary


def _reused_run_differences(ckpt: Checkpoint, asked: TrainConfig, run_dir: Path) -> dict[str, dict[str, Any]]:
    """Where the config of the run in ``run_dir`` differs from the one asked for; a warning names them."""
    differs = config_differences(TrainConfig.from_dict(ckpt.state.config), asked)
    if differs:
        shown = ", ".join(f"{k} is {v['run']!r} in the run, {v['asked']!r} asked" for k, v in differs.items())
        log.warning("reusing the model in %s, whose training config differs from the one asked for: %s; "
                    "use a new --out to train the asked config afresh", run_dir, shown)
    return differs
