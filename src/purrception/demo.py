"""``purr demo``: the whole product on a registered data set, on 2 CPU cores, in minutes.

The demo is five steps, each a function below, and every stage before sampling is cached so that a second run
reuses the work:

1. **prepare** the data set (:mod:`purrception.data.datasets`): its tokenizer and token shards;
2. **train** a Purrception DiT on the shards into ``OUT/model`` (resumed when it is already there);
3. **generate** every class at each temperature through :class:`~purrception.pipeline.PurrceptionPipeline`;
4. **score** the samples with the judge of the data set's evaluation protocol (a classifier that never saw the
   generator's training images: the digit classifier on the held-out split, or the folder judge on half the folder);
5. **report**: ``grid.png``, ``samples.npz`` and ``demo.json``.

The model stage resumes the run in ``OUT/model`` (``train(..., resume=True)``): a larger ``steps`` override continues
it to that many steps, and other overrides follow the resume rules of ``training.config.resumed_config``. When the
reused run's config differs from the one asked for (fields not overridden keep the run's values), a warning says so
and ``demo.json`` records the differences under ``training.differs_from_asked``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from purrception.checkpoint import Checkpoint, load_checkpoint
from purrception.data.datasets import DataSet, PreparedData, get_dataset
from purrception.evaluation.evaluate import PROTOCOLS, EvalSettings
from purrception.evaluation.extractors import FeatureExtractor
from purrception.io import atomic_save_json, cache_root
from purrception.pipeline import PurrceptionPipeline
from purrception.sampling.grid import image_grid, save_png, save_samples_npz
from purrception.tokenizers.store import CONFIG_NAME
from purrception.training.config import TrainConfig, config_differences, explicit_fields, resolve_config
from purrception.training.loop import TrainResult, train

__all__ = ["DemoSettings", "DemoSamples", "run_demo"]

log = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    """What ``purr demo`` does; the defaults finish in minutes on 2 CPU cores.

    Attributes:
        out_dir: the folder to write into (the model lives in ``out_dir/model``).
        data: a registered data set (``data.datasets.DATASETS``) or the path of a labelled image folder.
        cache_dir: tokenizer, shards and judges; ``""``: the user cache.
        preset: the training preset; ``None``: the data set's own.
        train_overrides: ``key=value`` overrides of the preset's training fields.
        temperatures: the panels' temperatures ``tau`` (eq. 15), numbers or schedule specs, one panel each.
        per_class: samples per class and temperature.
        sample_steps: integration steps of the sampler.
        solver: the sampler's ODE solver (``sampling.solvers``).
        cfg_scale: classifier-free guidance scale (1 = off).
        seed: sampling seed (image ``i`` of a panel uses the noise of ``(seed, i)``).
        tokenizer_steps: training steps of the tokenizer on first use; ``None``: the data set's recipe.
        device: where to train and sample.
    """

    out_dir: str
    data: str = "digits"
    cache_dir: str = ""
    preset: str | None = None
    train_overrides: list[str] = field(default_factory=list)
    temperatures: tuple[float | str, ...] = (0.5, 0.8, 1.0, 1.3)
    per_class: int = 10
    sample_steps: int = 5
    solver: str = "heun"
    cfg_scale: float = 1.5
    seed: int = 0
    tokenizer_steps: int | None = None
    device: str = "cpu"


@dataclass
class DemoSamples:
    """One panel of the grid: the images generated at temperature ``tau`` (a number or a schedule spec) for
    ``labels``."""

    tau: float | str
    images: np.ndarray
    labels: np.ndarray


def run_demo(settings: DemoSettings, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every step and return the summary written to ``demo.json``."""
    dataset = get_dataset(settings.data)
    cache = cache_root(settings.cache_dir)
    data = dataset.prepare(cache, tokenizer_steps=settings.tokenizer_steps, progress=progress,
                           device=settings.device)
    timings = dict(data.timings)

    started = time.perf_counter()
    result, config = train_model(settings, dataset, data, progress)
    timings["train_s"] = time.perf_counter() - started

    started = time.perf_counter()
    ckpt = load_checkpoint(result.checkpoint)
    pipe = PurrceptionPipeline.from_checkpoint(ckpt, settings.device)
    judge = protocol_judge(data, pipe, cache)
    timings["classifier_s"] = time.perf_counter() - started

    started = time.perf_counter()
    panels = generate(pipe, settings, progress)
    accuracy = {str(p.tau): score(judge, p) for p in panels}
    timings["sample_s"] = time.perf_counter() - started
    return report(settings, dataset, data, ckpt, result, _reused_run_differences(ckpt, config, result), judge, panels,
                  accuracy, timings)


def train_model(settings: DemoSettings, dataset: DataSet, data: PreparedData,
                progress: bool) -> tuple[TrainResult, TrainConfig]:
    """Train (or resume) the generator in ``out_dir/model`` with the data set's preset and the overrides."""
    config = resolve_config(settings.preset or dataset.preset, overrides=settings.train_overrides)
    result = train(config, str(data.shards.folder), Path(settings.out_dir) / "model",
                   tokenizer_path=str(data.tokenizer_dir), resume=True, progress=progress, device=settings.device,
                   explicit=explicit_fields(overrides=settings.train_overrides))
    return result, config


def protocol_judge(data: PreparedData, pipe: PurrceptionPipeline, cache: Path) -> FeatureExtractor:
    """The classifier of the data set's evaluation protocol (trained once on data the generator never saw)."""
    protocol = PROTOCOLS[data.protocol]
    settings = EvalSettings(protocol=data.protocol, reference=data.reference, cache_dir=str(cache))
    return protocol.build_extractor(settings, torch.device(pipe.device), pipe.tokenizer)


def generate(pipe: PurrceptionPipeline, settings: DemoSettings, progress: bool) -> list[DemoSamples]:
    """``per_class`` images of every class at each temperature, class by class (one grid row per class)."""
    panels = []
    for tau in settings.temperatures:
        out = pipe(class_labels=None, num_per_class=settings.per_class, num_inference_steps=settings.sample_steps,
                   tau=tau, guidance_scale=settings.cfg_scale, solver=settings.solver, seed=settings.seed,
                   progress=progress)
        panels.append(DemoSamples(tau, out.pixels, out.labels))
    return panels


def score(judge: FeatureExtractor, panel: DemoSamples) -> dict[str, float]:
    """How often the judge reads the requested class in a panel."""
    accuracy = float((judge.extract(panel.images).predicted == panel.labels).mean())
    log.info("tau %s: the judge reads the requested class in %.1f%% of samples", panel.tau, 100 * accuracy)
    return {"class_accuracy": accuracy}


def report(settings: DemoSettings, dataset: DataSet, data: PreparedData, ckpt: Checkpoint, result: TrainResult,
           differs: dict[str, dict[str, Any]], judge: FeatureExtractor, panels: list[DemoSamples],
           accuracy: dict[str, dict[str, float]], timings: dict[str, float]) -> dict[str, Any]:
    """Write ``grid.png`` (one panel per temperature, one row per class), ``samples.npz`` and ``demo.json``."""
    out = Path(settings.out_dir)
    num_classes = len(data.class_names)
    tiles = [image_grid(p.images, rows=num_classes) for p in panels]
    gap = np.full((tiles[0].shape[0], 8, *tiles[0].shape[2:]), 255, dtype=np.uint8)
    save_png(out / "grid.png", np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1), scale=3)
    save_samples_npz(out / "samples.npz", np.concatenate([p.images for p in panels]),
                     np.concatenate([p.labels for p in panels]),
                     tau=np.concatenate([np.full(len(p.labels), p.tau) for p in panels]))
    tok_meta = json.loads((data.tokenizer_dir / CONFIG_NAME).read_text())
    summary = {
        "what": f"purr demo --data {dataset.name}: Purrception on {dataset.summary}",
        "data": dataset.name,
        "tokenizer": {"path": str(data.tokenizer_dir), "identity": ckpt.tokenizer_identity.to_dict(),
                      **tok_meta["metrics"]},
        "shards": {"path": str(data.shards.folder), "num_items": len(data.shards)},
        "training": {"checkpoint": str(result.checkpoint), "steps": result.step, "final_loss": result.last_loss,
                     "resumed_from_step": result.start_step, "config": ckpt.state.config,
                     "differs_from_asked": differs},
        "sampling": {"solver": settings.solver, "sample_steps": settings.sample_steps, "cfg_scale": settings.cfg_scale,
                     "temperatures": [p.tau for p in panels], "per_class": settings.per_class,
                     "seed": settings.seed, "weights": "EMA"},
        "classifier": judge.judge_facts,
        "results": accuracy,
        "outputs": {"grid": str(out / "grid.png"), "samples": str(out / "samples.npz"),
                    "grid_layout": "one panel per temperature (left to right), one row per class",
                    "class_names": data.class_names},
        "timings_s": timings,
    }
    atomic_save_json(out / "demo.json", summary)
    return summary


def _reused_run_differences(ckpt: Checkpoint, asked: TrainConfig, result: TrainResult) -> dict[str, dict[str, Any]]:
    """Where the config of the reused run differs from the one asked for; a warning names them."""
    differs = config_differences(TrainConfig.from_dict(ckpt.state.config), asked)
    if differs:
        shown = ", ".join(f"{k} is {v['run']!r} in the run, {v['asked']!r} asked" for k, v in differs.items())
        log.warning("reusing the model in %s, whose training config differs from the one asked for: %s; "
                    "use another output folder to train the asked config afresh", result.checkpoint.parent.parent,
                    shown)
    return differs
