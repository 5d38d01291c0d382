"""The paper's studies at small scale (Sec. 4.1, 4.2, App. D), each resumable and one command away.

- :func:`convergence`: all four methods, identical backbone / data / batch / seeds / budget, FID and class accuracy
  at fixed steps, and the speed-up "steps Purrception needs to reach each baseline's final FID" (Sec. 4.1, Fig. 3).
- :func:`zloss`: Purrception with and without the z-loss (App. D, Fig. 7): FID, and the logit drift (mean squared
  log-partition) logged during training.
- :func:`head`: the full K-way head vs the factorised head, at equal steps and at equal wall time.
- :func:`sampler_sweep`: FID and class accuracy of one or more checkpoints (one per training seed) vs the temperature
  (Sec. 4.2, Fig. 5) or the CFG scale.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import numpy as np

from purrception.checkpoint import Checkpoint
from purrception.distributed import DistInfo
from purrception.evaluation.evaluate import EvalSettings
from purrception.flows.base import get_method
from purrception.sampling.schedules import as_spec
from purrception.studies.core import (
    StudyStore,
    TrackSettings,
    Variant,
    evaluate_point,
    first_crossing,
    interleaved_step_seconds,
    plot_lines,
    series,
    train_and_track,
    write_markdown,
)

__all__ = ["convergence", "zloss", "head", "sampler_sweep"]

log = logging.getLogger(__name__)


def _protocol(settings: EvalSettings) -> str:
    """How the scores were measured, for captions: the protocol and, if not its default, the reference."""
    name = settings.protocol or "default"
    return f"{name} protocol" + (f" (reference {settings.reference})" if settings.reference else "")


def _fid_axis(settings: EvalSettings) -> str:
    return f"FID ({settings.protocol or 'default'} protocol features)"


def _caption(kind: str, track: TrackSettings) -> str:
    e = track.eval
    return (f"{kind}: {json.dumps(track.base, sort_keys=True)}; eval every {track.eval_every} steps; seeds "
            f"{list(track.seeds)}; {_protocol(e)}, N={e.num_samples}, Euler {e.sample_steps} steps, cfg {e.cfg_scale}, "
            f"EMA weights")


def _tracked_table(store: StudyStore, names: list[str], seeds: tuple[int, ...]) -> tuple[list[str], list[list[Any]]]:
    header = ["variant", "step", "FID (mean ± std over seeds)", "class accuracy"]
    rows = []
    for name in names:
        steps, fid, fid_sd = series(store, name, "fid", seeds)
        _, acc, acc_sd = series(store, name, "class_accuracy", seeds)
        for s, f, fs, a, a_sd in zip(steps, fid, fid_sd, acc, acc_sd):
            rows.append([name, int(s), f"{f:.3f} ± {fs:.3f}", f"{a:.3f} ± {a_sd:.3f}"])
    return header, rows


def _write_tracked(store: StudyStore, stem: str, title: str, names: list[str], track: TrackSettings,
                   extra_notes: list[str]) -> None:
    header, rows = _tracked_table(store, names, track.seeds)
    caption = f"{store.command} | " + _caption(title, track)
    write_markdown(store.folder / f"{stem}.md", title, header, rows, store.command, [caption, *extra_notes])
    plot_lines(store.folder / f"{stem}.png", title, "training step", _fid_axis(track.eval),
               {n: series(store, n, "fid", track.seeds) for n in names}, caption)
    plot_lines(store.folder / f"{stem}_accuracy.png", title, "training step", "class accuracy",
               {n: series(store, n, "class_accuracy", track.seeds) for n in names}, caption)


def _speedup(store: StudyStore, baseline: str, seeds: tuple[int, ...]) -> dict[str, Any]:
    """Steps Purrception's FID curve (mean over ``seeds``) needs to reach the baseline's final FID (Sec. 4.1)."""
    p_steps, p_fid, _ = series(store, "purrception", "fid", seeds)
    b_steps, b_fid, _ = series(store, baseline, "fid", seeds)
    reached = first_crossing(p_steps, p_fid, float(b_fid[-1]))
    return {"baseline_final_step": int(b_steps[-1]), "baseline_final_fid": float(b_fid[-1]),
            "purrception_steps_to_reach": reached, "speedup": (float(b_steps[-1]) / reached) if reached else None}


def _speedup_note(baseline: str, mean: dict[str, Any], per_seed: dict[int, dict[str, Any]]) -> str:
    note = (f"speed-up vs {baseline}: Purrception's mean curve reaches {mean['baseline_final_fid']:.3f} (the "
            f"baseline's mean FID at step {mean['baseline_final_step']}) at step {mean['purrception_steps_to_reach']}"
            + (f" -> {mean['speedup']:.2f}x" if mean["speedup"] else " -> not reached within the budget"))
    if len(per_seed) > 1:
        factors = [v["speedup"] for v in per_seed.values()]
        shown = ", ".join(f"seed {s}: " + (f"{v['speedup']:.2f}x" if v["speedup"] else "not reached")
                          for s, v in per_seed.items())
        reached = [f for f in factors if f]
        spread = (f"; mean ± std {np.mean(reached):.2f} ± {np.std(reached):.2f}x" if len(reached) == len(factors)
                  else "")
        note += f" (each seed on its own: {shown}{spread})"
    return note


def convergence(store: StudyStore, track: TrackSettings, methods: list[str], shards: str, tokenizer_path: str,
                tokenizer, info: DistInfo) -> dict[str, Any]:
    """Train every method, track FID, and compute Purrception's speed-up to each baseline's final FID, from the
    mean curve over seeds and from each seed on its own."""
    for name in methods:
        get_method(name)  # unknown names fail before any training
    train_and_track(store, [Variant(m, {"method": m}) for m in methods], track, shards, tokenizer_path, tokenizer, info)
    speedups: dict[str, Any] = {}
    notes = []
    if "purrception" in methods:
        for name in methods:
            if name == "purrception":
                continue
            per_seed = {seed: _speedup(store, name, (seed,)) for seed in track.seeds}
            speedups[name] = {**_speedup(store, name, track.seeds), "per_seed": per_seed}
            notes.append(_speedup_note(name, speedups[name], per_seed))
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
         info: DistInfo) -> dict[str, Any]:
    """Purrception with the full head (rank 0) and factorised heads of the given ranks, at equal steps and at equal
    wall time.

    Every variant trains for the same steps. For the equal-wall-time comparison the seconds per training step of
    each variant are measured side by side (:func:`interleaved_step_seconds`, same machine load for all), every
    variant's evaluations are placed on that time axis, and each variant's FID is read (linearly interpolated between
    its evaluations) at the time the fastest variant needs for the full budget: a faster head is credited with the
    extra steps it fits into the same time.
    """
    variants = [Variant("full-head" if r == 0 else f"factorised-r{r}",
                        {"method": "purrception", "model_overrides": {**track.base.get("model_overrides", {}),
                                                                      "head_rank": r}}) for r in ranks]
    train_and_track(store, variants, track, shards, tokenizer_path, tokenizer, info)
    step_seconds = store.get_or_measure("step_seconds", lambda: interleaved_step_seconds(variants, track, shards, info),
                                        section="throughput")
    names = [v.name for v in variants]
    fids = {n: series(store, n, "fid", track.seeds) for n in names}
    budget = min(float(fids[n][0][-1]) * step_seconds[n] for n in names)
    equal_time: dict[str, Any] = {}
    for n in names:
        steps, fid, _ = fids[n]
        step_at_budget = budget / step_seconds[n]
        reached = step_at_budget >= steps[0]
        equal_time[n] = {"seconds_per_step": step_seconds[n],
                         "images_per_s": track.base["batch_size"] / step_seconds[n],
                         "final_step": int(steps[-1]), "final_fid": float(fid[-1]),
                         "step_at_budget": step_at_budget,
                         "fid_at_budget": float(np.interp(step_at_budget, steps, fid)) if reached else None}
    caption = (f"{store.command} | " + _caption("head study", track) + "; time axis = steps x seconds per step "
               "measured side by side (interleaved) on this machine")
    plot_lines(store.folder / "head_wall_time.png", "Full vs factorised head: FID vs training time",
               "training seconds (steps x measured seconds per step)", _fid_axis(track.eval),
               {n: (fids[n][0] * step_seconds[n], fids[n][1], fids[n][2]) for n in names}, caption)
    rows = [[n, f"{v['images_per_s']:.1f}", v["final_step"], f"{v['final_fid']:.3f}", f"{v['step_at_budget']:.0f}",
             "before its first evaluation" if v["fid_at_budget"] is None else f"{v['fid_at_budget']:.3f}"]
            for n, v in equal_time.items()]
    write_markdown(store.folder / "head_wall_time.md", f"Full vs factorised head at equal wall time ({budget:.0f} s)",
                   ["variant", "training images/s (side by side)", "steps (equal steps)", "FID at equal steps",
                    f"steps in {budget:.0f} s", f"FID at {budget:.0f} s"], rows, store.command,
                   [caption, "equal wall time: the time the fastest variant needs for the full budget; each "
                    "variant's FID there is interpolated linearly between its evaluations"])
    _write_tracked(store, "head", "Full vs factorised head: FID vs training steps", names, track,
                   [f"{n}: {v['images_per_s']:.1f} training images/s (measured side by side)"
                    for n, v in equal_time.items()])
    store.data["equal_wall_time"] = {"seconds": budget, **equal_time}
    store.save()
    return store.data["equal_wall_time"]


def _sweep_cell(point: dict[str, Any], metric: str) -> float | str:
    """One table cell of a sweep point: the value itself for one checkpoint, else "mean ± std" over the
    checkpoints."""
    mean = point[metric]
    return mean if point["checkpoints"] == 1 else f"{mean:.3f} ± {point[f'{metric}_std']:.3f}"


def sampler_sweep(store: StudyStore, checkpoints: list[tuple[Checkpoint, Any]], base: EvalSettings, field: str,
                  values: list[float], info: DistInfo) -> list[dict[str, Any]]:
    """FID and class accuracy vs a sampler ``field`` (``tau``, Sec. 4.2 / Fig. 5, or ``cfg_scale``) for one or more
    ``(checkpoint, tokenizer)`` pairs -- one per training seed, say -- each scored at every value; the table and
    plots give the mean ± std over the checkpoints, and the best value of each one on its own."""
    metrics = ("fid", "class_accuracy", "precision", "recall")
    per_ckpt: dict[str, list[dict[str, Any]]] = {}
    for ckpt, tokenizer in checkpoints:
        for value in values:
            settings = replace(base, **{field: value})
            point = store.get_or_measure(f"{field}={value:g}|{ckpt.path}",
                                         lambda: evaluate_point(ckpt, tokenizer, settings, info))
            per_ckpt.setdefault(str(ckpt.path), []).append(point)
    points = []
    for i, value in enumerate(values):
        measured = [runs[i] for runs in per_ckpt.values()]
        summary = {m: float(np.mean([p.get(m, np.nan) for p in measured])) for m in metrics}
        summary |= {f"{m}_std": float(np.std([p.get(m, np.nan) for p in measured])) for m in metrics}
        points.append({field: value, **summary, "checkpoints": len(measured)})
    best = min(points, key=lambda p: p["fid"])
    label = {"tau": "temperature tau", "cfg_scale": "CFG scale"}[field]
    rows = [[p[field], *(_sweep_cell(p, m) for m in metrics)] for p in points]
    shown = "; ".join(f"{c.method_name} checkpoint {c.path} (step {c.step})" for c, _ in checkpoints)
    caption = (f"{store.command} | {shown}; {_protocol(base)}, N={base.num_samples}, Euler {base.sample_steps} steps, "
               f"seed {base.seed}; "
               + json.dumps({k: as_spec(getattr(base, k)) for k in ("tau", "cfg_scale") if k != field}))
    spread = " (mean ± std over the checkpoints)" if len(checkpoints) > 1 else ""
    notes = [caption, f"best mean FID at {field} = {best[field]:g}"]
    if len(checkpoints) > 1:
        notes += [f"best FID of {path}: {field} = {values[int(np.argmin([p['fid'] for p in runs]))]:g}"
                  for path, runs in per_ckpt.items()]
    write_markdown(store.folder / f"{field}.md", f"FID vs {label}", [label, f"FID{spread}", "class accuracy",
                   "precision", "recall"], rows, store.command, notes)
    x = np.array(values, dtype=float)
    for stem, metric, name, axis in ((field, "fid", "FID", _fid_axis(base)),
                                     (f"{field}_accuracy", "class_accuracy", "class accuracy", "class accuracy")):
        line = (x, np.array([p[metric] for p in points]), np.array([p[f"{metric}_std"] for p in points]))
        plot_lines(store.folder / f"{stem}.png", f"{name[0].upper()}{name[1:]} vs {label}", label, axis,
                   {name: line}, caption)
    return points
