"""The paper's studies at small scale (Sec. 4.1, 4.2, App. D), each resumable and one command away.

- :func:`convergence`: all four methods, identical backbone / data / batch / seeds / budget, FID and class accuracy
  at fixed steps, and the speed-up "steps Purrception needs to reach each baseline's final FID" (Sec. 4.1, Fig. 3).
- :func:`zloss`: Purrception with and without the z-loss (App. D, Fig. 7): FID, and the logit drift (mean squared
  log-partition) logged during training.
- :func:`head`: the full K-way head vs the factorised head, at equal steps.
- :func:`sampler_sweep`: FID and class accuracy of one checkpoint vs the temperature (Sec. 4.2, Fig. 5) or the CFG
  scale.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from purrception.distributed import DistInfo
from purrception.evaluation.evaluate import EvalSettings
from purrception.flows.base import get_method
from purrception.studies.core import (StudyStore, TrackSettings, Variant, evaluate_point, first_crossing, plot_lines,
                                      series, train_and_track, write_markdown)
from purrception.training.checkpoint import Checkpoint

__all__ = ["convergence", "zloss", "head", "sampler_sweep"]

log = logging.getLogger(__name__)


def _caption(kind: str, track: TrackSettings) -> str:
    e = track.eval
    return (f"{kind}: {json.dumps(track.base, sort_keys=True)}; eval every {track.eval_every} steps; seeds "
            f"{list(track.seeds)}; digits protocol, N={e.num_samples}, Euler {e.steps} steps, cfg {e.cfg_scale}, "
            f"EMA weights")


def _tracked_table(store: StudyStore, names: list[str]) -> tuple[list[str], list[list[Any]]]:
    header = ["variant", "step", "FID (mean ± std over seeds)", "class accuracy"]
    rows = []
    for name in names:
        steps, fid, fid_sd = series(store, name, "fid")
        _, acc, acc_sd = series(store, name, "class_accuracy")
        for s, f, fs, a, a_sd in zip(steps, fid, fid_sd, acc, acc_sd):
            rows.append([name, int(s), f"{f:.3f} ± {fs:.3f}", f"{a:.3f} ± {a_sd:.3f}"])
    return header, rows


def _write_tracked(store: StudyStore, stem: str, title: str, names: list[str], track: TrackSettings,
                   extra_notes: list[str]) -> None:
    header, rows = _tracked_table(store, names)
    caption = f"{store.command} | " + _caption(title, track)
    write_markdown(store.folder / f"{stem}.md", title, header, rows, store.command, [caption, *extra_notes])
    plot_lines(store.folder / f"{stem}.png", title, "training step", "FID (digit features)",
               {n: series(store, n, "fid") for n in names}, caption)
    plot_lines(store.folder / f"{stem}_accuracy.png", title, "training step", "class accuracy",
               {n: series(store, n, "class_accuracy") for n in names}, caption)


def convergence(store: StudyStore, track: TrackSettings, methods: list[str], shards: str, tokenizer_path: str,
                tokenizer, info: DistInfo) -> dict[str, Any]:
    """Train every method, track FID, and compute Purrception's speed-up to each baseline's final FID."""
    for name in methods:
        get_method(name)  # unknown names fail before any training
    train_and_track(store, [Variant(m, {"method": m}) for m in methods], track, shards, tokenizer_path, tokenizer, info)
    speedups: dict[str, Any] = {}
    if "purrception" in methods:
        p_steps, p_fid, _ = series(store, "purrception", "fid")
        for name in methods:
            if name == "purrception":
                continue
            b_steps, b_fid, _ = series(store, name, "fid")
            reached = first_crossing(p_steps, p_fid, float(b_fid[-1]))
            speedups[name] = {"baseline_final_step": int(b_steps[-1]), "baseline_final_fid": float(b_fid[-1]),
                              "purrception_steps_to_reach": reached,
                              "speedup": (float(b_steps[-1]) / reached) if reached else None}
    notes = [f"speed-up vs {k}: Purrception reaches {v['baseline_final_fid']:.3f} (the baseline's FID at step "
             f"{v['baseline_final_step']}) at step {v['purrception_steps_to_reach']} -> "
             + (f"{v['speedup']:.2f}x" if v["speedup"] else "not reached within the budget")
             for k, v in speedups.items()]
    _write_tracked(store, "convergence", "Convergence: FID vs training steps", methods, track, notes)
    store.data["speedups"] = speedups
    store.save()
    return speedups


def zloss(store: StudyStore, track: TrackSettings, weights: list[float], shards: str, tokenizer_path: str,
          tokenizer, info: DistInfo) -> None:
    """Purrception trained with each z-loss weight; FID over steps and the logged logit drift."""
    variants = [Variant(f"zloss-{w:g}", {"method": "purrception", "method_options": {"z_loss_weight": w}})
                for w in weights]
    train_and_track(store, variants, track, shards, tokenizer_path, tokenizer, info)
    drift = {}
    for v in variants:
        metrics = store.folder / "runs" / f"{v.name}-seed{track.seeds[0]}" / "metrics.jsonl"
        lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        x = np.array([r["step"] for r in lines])
        drift[v.name] = (x, np.array([r["z_loss"] for r in lines]), np.zeros(len(x)))
    plot_lines(store.folder / "zloss_drift.png", "Logit drift: mean logsumexp(logits)^2 during training",
               "training step", "mean logsumexp^2", drift, f"{store.command} | " + _caption("z-loss study", track))
    _write_tracked(store, "zloss", "z-loss ablation: FID vs training steps", [v.name for v in variants], track,
                   [f"final mean logsumexp^2 for {k}: {float(v[1][-1]):.2f}" for k, v in drift.items()])


def head(store: StudyStore, track: TrackSettings, ranks: list[int], shards: str, tokenizer_path: str, tokenizer,
         info: DistInfo) -> None:
    """Purrception with the full head (rank 0) and factorised heads of the given ranks, at equal steps."""
    variants = [Variant("full-head" if r == 0 else f"factorised-r{r}",
                        {"method": "purrception", "model_overrides": {**track.base.get("model_overrides", {}),
                                                                      "head_rank": r}}) for r in ranks]
    train_and_track(store, variants, track, shards, tokenizer_path, tokenizer, info)
    notes = []
    for v in variants:
        metrics = store.folder / "runs" / f"{v.name}-seed{track.seeds[0]}" / "metrics.jsonl"
        speeds = [json.loads(line)["images_per_s"] for line in metrics.read_text().splitlines() if line.strip()]
        notes.append(f"{v.name}: median training throughput {np.median(speeds):.1f} images/s on this machine")
    _write_tracked(store, "head", "Full vs factorised head: FID vs training steps", [v.name for v in variants],
                   track, notes)


def sampler_sweep(store: StudyStore, ckpt: Checkpoint, tokenizer, base: EvalSettings, field: str,
                  values: list[float], info: DistInfo) -> list[dict[str, Any]]:
    """FID and class accuracy of one checkpoint for each value of a sampler ``field`` (``tau`` or ``cfg_scale``)."""
    points = []
    for value in values:
        settings = replace(base, **{field: value})
        point = store.get_or_measure(f"{field}={value:g}", lambda: evaluate_point(ckpt, tokenizer, settings, info))
        points.append({field: value, **point})
    best = min(points, key=lambda p: p["fid"])
    label = {"tau": "temperature tau", "cfg_scale": "CFG scale"}[field]
    rows = [[p[field], p["fid"], p.get("class_accuracy", float("nan")), p.get("precision", float("nan")),
             p.get("recall", float("nan"))] for p in points]
    caption = (f"{store.command} | {ckpt.method_name} checkpoint {ckpt.path} (step {ckpt.step}); digits protocol, "
               f"N={base.num_samples}, Euler {base.steps} steps, seed {base.seed}; "
               + json.dumps({k: v for k, v in asdict(base).items() if k in ("tau", "cfg_scale") and k != field}))
    write_markdown(store.folder / f"{field}.md", f"FID vs {label}", [label, "FID", "class accuracy", "precision",
                   "recall"], rows, store.command, [caption, f"best FID at {field} = {best[field]:g}"])
    x = np.array(values, dtype=float)
    plot_lines(store.folder / f"{field}.png", f"FID vs {label}", label, "FID (digit features)",
               {"FID": (x, np.array([p["fid"] for p in points]), np.zeros(len(x)))}, caption)
    plot_lines(store.folder / f"{field}_accuracy.png", f"Class accuracy vs {label}", label, "class accuracy",
               {"accuracy": (x, np.array([p.get("class_accuracy", np.nan) for p in points]), np.zeros(len(x)))},
               caption)
    return points
