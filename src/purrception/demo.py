"""``purr demo``: the whole product on the embedded MNIST digits, on 2 CPU cores, in minutes.

Stages (each cached, so a second run reuses the work): train the small VQ tokenizer, encode the train split to
token shards, train a Purrception DiT, sample every class at several temperatures, and judge the samples with
a digit classifier trained on the held-out split. Writes ``grid.png``, ``samples.npz`` and ``demo.json``.

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
from typing import Any

import numpy as np

from purrception.data.embedded import NUM_CLASSES
from purrception.data.embedded_shards import ensure_embedded_shards, ensure_embedded_tokenizer
from purrception.evaluation.classifier import classifier_info, load_or_train_classifier
from purrception.generation.generate import generate_images
from purrception.io import atomic_save_json, default_cache_dir
from purrception.sampling.grid import image_grid, save_png, save_samples_npz
from purrception.sampling.settings import SamplerSettings
from purrception.tokenizers.store import CONFIG_NAME, load_tokenizer
from purrception.training.checkpoint import Checkpoint, load_checkpoint
from purrception.training.config import TrainConfig, config_differences, explicit_fields, resolve_config
from purrception.training.loop import train

__all__ = ["DemoSettings", "run_demo"]

log = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    """What ``purr demo`` does; the defaults finish in well under 15 minutes on 2 CPU cores."""

    out_dir: str = "purr-demo"
    cache_dir: str = ""
    preset: str = "mnist-demo"
    train_overrides: list[str] = field(default_factory=list)
    temperatures: tuple[float, ...] = (0.5, 0.8, 1.0, 1.3)
    per_class: int = 10
    steps: int = 50
    cfg_scale: float = 1.0
    seed: int = 0
    tokenizer_steps: int = 1000
    device: str = "cpu"


def run_demo(settings: DemoSettings, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every stage and return the summary written to ``demo.json``."""
    out = Path(settings.out_dir)
    cache = Path(settings.cache_dir) if settings.cache_dir else default_cache_dir()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    tok_dir = ensure_embedded_tokenizer(cache, settings.tokenizer_steps, progress, settings.device)
    tokenizer = load_tokenizer(tok_dir)
    timings["tokenizer_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    shards = ensure_embedded_shards(cache, tok_dir)
    shard_dir = shards.folder
    timings["encode_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    classifier = load_or_train_classifier(cache)
    timings["classifier_s"] = time.perf_counter() - t0

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
    labels = np.repeat(np.arange(NUM_CLASSES), settings.per_class)
    panels, all_images, all_labels, all_taus, per_tau = [], [], [], [], {}
    for tau in settings.temperatures:
        sampler = SamplerSettings(steps=settings.steps, tau=tau, cfg_scale=settings.cfg_scale)
        images = generate_images(method, model, tokenizer, labels, sampler, settings.seed, device=settings.device,
                                 progress=progress)
        accuracy = float((classifier.predict(images) == labels).mean())
        per_tau[str(tau)] = {"class_accuracy": accuracy}
        log.info("tau %.2f: classifier reads the requested digit in %.1f%% of samples", tau, 100 * accuracy)
        panels.append(image_grid(images, rows=NUM_CLASSES))
        all_images.append(images)
        all_labels.append(labels)
        all_taus.append(np.full(len(labels), tau))
    timings["sample_s"] = time.perf_counter() - t0

    gap = np.full((panels[0].shape[0], 8), 255, dtype=np.uint8)
    grid = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    save_png(out / "grid.png", grid, scale=3)
    save_samples_npz(out / "samples.npz", np.concatenate(all_images), np.concatenate(all_labels),
                     tau=np.concatenate(all_taus))
    tok_meta = json.loads((tok_dir / CONFIG_NAME).read_text())
    summary = {
        "what": "purr demo: Purrception on the embedded MNIST digits",
        "tokenizer": {"path": str(tok_dir), "identity": tokenizer.identity().to_dict(), **tok_meta["metrics"]},
        "shards": {"path": str(shard_dir), "num_items": len(shards)},
        "training": {"checkpoint": str(result.checkpoint), "steps": result.step, "final_loss": result.last_loss,
                     "resumed_from_step": result.start_step, "config": ckpt.state.config,
                     "differs_from_asked": differs},
        "sampling": {"solver": "euler", "steps": settings.steps, "cfg_scale": settings.cfg_scale,
                     "temperatures": list(settings.temperatures), "per_class": settings.per_class,
                     "seed": settings.seed, "weights": "EMA"},
        "classifier": classifier_info(cache),
        "results": per_tau,
        "outputs": {"grid": str(out / "grid.png"), "samples": str(out / "samples.npz"),
                    "grid_layout": "one panel per temperature (left to right), one row per digit class 0-9"},
        "timings_s": timings,
    }
    atomic_save_json(out / "demo.json", summary)
    return summary


def _reused_run_differences(ckpt: Checkpoint, asked: TrainConfig, run_dir: Path) -> dict[str, dict[str, Any]]:
    """Where the config of the run in ``run_dir`` differs from the one asked for; a warning names them."""
    differs = config_differences(ckpt.train_config, asked)
    if differs:
        shown = ", ".join(f"{k} is {v['run']!r} in the run, {v['asked']!r} asked" for k, v in differs.items())
        log.warning("reusing the model in %s, whose training config differs from the one asked for: %s; "
                    "use a new --out to train the asked config afresh", run_dir, shown)
    return differs
