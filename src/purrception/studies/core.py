"""Machinery shared by the studies: resumable result stores, train-and-track runs, sampler sweeps, tables, plots.

A study lives in one folder: ``results.json`` (every measured point, rewritten atomically after each one, so an
interrupted study resumes where it stopped), ``runs/`` (one training run per variant and seed), and its table
(``.md``) and plot (``.png``), each of which names the command and settings that made it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from purrception.checkpoint import Checkpoint, load_checkpoint
from purrception.distributed import DistInfo, broadcast_from_rank0, rank
from purrception.errors import PurrError
from purrception.evaluation.evaluate import EvalSettings, evaluate_checkpoint
from purrception.formats import read_version
from purrception.io import atomic_save_json, atomic_write, load_json
from purrception.locks import folder_lock
from purrception.sampling.grid import save_png
from purrception.training.config import TrainConfig
from purrception.training.loop import train

__all__ = ["StudyStore", "Variant", "TrackSettings", "train_and_track", "interleaved_step_seconds", "evaluate_point",
           "write_markdown", "plot_lines", "first_crossing", "series", "STUDY_VERSION"]

log = logging.getLogger(__name__)

#: format version (:mod:`purrception.formats`) of a study's ``results.json``
STUDY_VERSION = 1


class StudyStore:
    """Measured points keyed by a string, persisted in ``results.json`` after every new point.

    The store holds its folder's lock (:func:`purrception.locks.folder_lock`, on rank 0) from construction to
    :meth:`close`, so two studies never write into one folder; use it as a context manager.

    A folder only resumes a study with the same settings. The one exception is ``seeds``: every point is keyed by its
    seed, so re-running with more seeds extends a finished study (only the new seeds are trained and evaluated).
    Settings recorded by older versions are read with today's names (:func:`_upgraded`: ``eval.steps`` is
    ``eval.sample_steps``), so their folders resume.
    """

    def __init__(self, folder: str | Path, settings: dict[str, Any], command: str):
        self.folder = Path(folder)
        self.command = command
        self.path = self.folder / "results.json"
        self._lock = contextlib.ExitStack()  # the folder's lock (rank 0, the writer) until :meth:`close`
        if rank() == 0:
            self._lock.enter_context(folder_lock(self.folder, param="folder"))
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.data = self._read(json.loads(json.dumps(settings)))  # as JSON sees it (tuples become lists)
        except BaseException:
            self._lock.close()
            raise

    def _read(self, settings: dict[str, Any]) -> dict[str, Any]:
        data = load_json(self.path, "study results") if self.path.exists() else {"settings": settings, "points": {}}
        if not isinstance(data, dict):
            raise PurrError(f"{self.path} is not a study's results; use another `folder`")
        read_version(data, "study results", self.path, STUDY_VERSION, "use another `folder` to run the study again")
        data["version"] = STUDY_VERSION
        if _without_seeds(_upgraded(data.get("settings", {}))) != _without_seeds(settings):
            raise PurrError(f"{self.folder} holds a study made with other settings; use another `folder` "
                            f"(or the same settings, with any seeds, to resume or extend it)")
        data["settings"] = settings
        return data

    def close(self) -> None:
        """Release the folder (see :mod:`purrception.locks`); ``with StudyStore(...) as store:`` calls it."""
        self._lock.close()

    def __enter__(self) -> StudyStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def points(self) -> dict[str, dict[str, Any]]:
        return self.data["points"]

    def save(self) -> None:
        """Write the results (rank 0 only: under torchrun every rank holds the same results)."""
        if rank() == 0:
            atomic_save_json(self.path, self.data)

    def get_or_measure(self, key: str, measure: Callable[[], dict[str, Any]],
                       section: str = "points") -> dict[str, Any]:
        """The stored result under ``key`` in ``section`` (``points``: one evaluation each; other sections hold other
        measurements), measuring and saving it first if absent."""
        entries = self.data.setdefault(section, {})
        if key not in entries:
            entries[key] = measure()
            self.save()
        return entries[key]


@dataclass
class Variant:
    """One line of a study: a name and the TrainConfig fields it changes."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrackSettings:
    """How every variant is trained and judged."""

    base: dict[str, Any]                 # TrainConfig fields shared by all variants
    eval_every: int
    seeds: tuple[int, ...]
    eval: EvalSettings
    tau_for: Callable[[str], float]      # the sampling temperature for a method name


def evaluate_point(ckpt: Checkpoint, tokenizer, settings: EvalSettings, info: DistInfo) -> dict[str, Any]:
    """Scores of one checkpoint under ``settings``' protocol: FID, class accuracy, precision / recall."""
    report = broadcast_from_rank0(evaluate_checkpoint(ckpt, tokenizer, settings, info))  # rank 0 scores; all go on
    return {"step": ckpt.step, **report["metrics"], "checkpoint": str(ckpt.path), "seconds": report["seconds"]["total"],
            "train_seconds": ckpt.train_seconds}


def _run_config(track: TrackSettings, variant: Variant, seed: int, **fields: Any) -> TrainConfig:
    """The training config of one variant and seed: the shared base, the variant's changes, then ``fields``."""
    return TrainConfig.from_dict({**track.base, **variant.overrides, "seed": seed, **fields})


def train_and_track(store: StudyStore, variants: list[Variant], track: TrackSettings, shards: str | Path,
                    tokenizer_path: str, tokenizer, info: DistInfo) -> None:
    """Train every variant x seed, evaluating at every ``eval_every`` steps; skip what ``store`` already has."""
    for variant in variants:
        for seed in track.seeds:
            config = _run_config(track, variant, seed, ckpt_every=track.eval_every, keep_every=track.eval_every,
                                 keep_last=1)
            run_dir = store.folder / "runs" / f"{variant.name}-seed{seed}"
            log.info("study: training %s (seed %d) to step %d", variant.name, seed, config.steps)
            train(config, shards, run_dir, tokenizer_path=tokenizer_path, resume=True, progress=info.is_main,
                  device=str(info.device))
            settings = replace(track.eval, tau=track.tau_for(config.method))
            for path in sorted((run_dir / "checkpoints").glob("step_*.pt")):
                ckpt = load_checkpoint(path)
                key = f"{variant.name}|seed={seed}|step={ckpt.step}"
                point = store.get_or_measure(key, lambda: evaluate_point(ckpt, tokenizer, settings, info))
                log.info("study: %s fid %.3f acc %.3f", key, point["fid"], point.get("class_accuracy", float("nan")))


def _upgraded(settings: dict[str, Any]) -> dict[str, Any]:
    """Recorded study settings with today's names: the evaluation's sampling steps were ``steps`` before they were
    ``sample_steps`` (the name of the quantity everywhere)."""
    evaluation = settings.get("eval")
    if isinstance(evaluation, dict) and "steps" in evaluation and "sample_steps" not in evaluation:
        evaluation = {("sample_steps" if k == "steps" else k): v for k, v in evaluation.items()}
        return {**settings, "eval": evaluation}
    return settings


def _without_seeds(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k != "seeds"}


def interleaved_step_seconds(variants: list[Variant], track: TrackSettings, shards: str | Path, info: DistInfo,
                             steps: int = 20, rounds: int = 3) -> dict[str, float]:
    """Seconds per training step of each variant, measured side by side: ``rounds`` rounds, each training every
    variant for ``steps`` steps from scratch (the real engine, in a scratch folder), median over rounds.

    Interleaving puts every variant under the same machine load, which the variants' own (sequential) training runs
    do not share on a busy machine; so wall-time comparisons use these figures, not the runs' own timings.
    """
    import tempfile

    seconds: dict[str, list[float]] = {v.name: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="purr-throughput-") as scratch:
        for r in range(rounds):
            for variant in variants:
                config = _run_config(track, variant, track.seeds[0], steps=steps, ckpt_every=steps, keep_last=1,
                                     keep_every=0, log_every=steps, sample_every=0, tensorboard=False)
                result = train(config, shards, Path(scratch) / f"{variant.name}-{r}",
                               progress=False, device=str(info.device))
                seconds[variant.name].append(load_checkpoint(result.checkpoint).train_seconds / steps)
    return {name: float(np.median(values)) for name, values in seconds.items()}


def series(store: StudyStore, variant: str, metric: str,
           seeds: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean and standard deviation over ``seeds`` (default: every seed measured) of ``metric`` for one
    variant."""
    by_step: dict[int, list[float]] = {}
    for key, point in store.points.items():
        name, seed, _ = key.split("|")
        if name == variant and (seeds is None or int(seed.removeprefix("seed=")) in seeds):
            by_step.setdefault(int(point["step"]), []).append(float(point[metric]))
    steps = np.array(sorted(by_step))
    values = [by_step[s] for s in steps]
    return steps, np.array([np.mean(v) for v in values]), np.array([np.std(v) for v in values])


def first_crossing(steps: np.ndarray, values: np.ndarray, target: float) -> float | None:
    """The first step at which a curve (linearly interpolated) reaches ``values <= target``; None if never."""
    for i, value in enumerate(values):
        if value <= target:
            if i == 0:
                return float(steps[0])
            s0, s1, v0, v1 = steps[i - 1], steps[i], values[i - 1], values[i]
            return float(s0 + (s1 - s0) * (v0 - target) / (v0 - v1)) if v0 != v1 else float(s1)
    return None


def write_markdown(path: str | Path, title: str, header: list[str], rows: list[list[Any]], command: str,
                   notes: list[str]) -> None:
    """A Markdown table with the command and notes that made it."""

    def fmt(x: Any) -> str:
        return f"{x:.3f}" if isinstance(x, float) else str(x)

    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    lines += ["", f"Made by: `{command}`", *[f"- {n}" for n in notes], ""]
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines)))


def plot_lines(path: str | Path, title: str, xlabel: str, ylabel: str,
               lines: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], caption: str) -> None:
    """Lines with a +-1 std band; the caption (how it was made) is printed under the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    for name, (x, mean, std) in lines.items():
        ax.plot(x, mean, marker="o", label=name)
        if np.any(std > 0):
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.text(0.01, 0.01, caption, fontsize=6, va="bottom", wrap=True)
    fig.subplots_adjust(bottom=0.25)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    save_png(path, image)
