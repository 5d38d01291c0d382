"""The training loop: AdamW (paper App. C), EMA, gradient accumulation, checkpoints, JSONL metrics.

A run lives in one folder::

    config.json          the resolved TrainConfig (and model / method / data facts)
    metrics.jsonl        one JSON line per logged step
    checkpoints/         step_00001000.pt ... (atomic writes; the newest is the resume point)

``train(..., resume=True)`` continues from the newest checkpoint and reproduces the uninterrupted run exactly
(CPU, deterministic): batches and noise depend only on ``(seed, step, slot)``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from purrception.data.shards import TokenShards
from purrception.errors import PurrError
from purrception.flows.base import FlowMethod, get_method
from purrception.io import atomic_save_json
from purrception.models.dit import DiT, dit_config_from_preset
from purrception.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from purrception.training.config import TrainConfig
from purrception.training.data import ShardBatches, slot_generator
from purrception.training.ema import EMA

__all__ = ["TrainResult", "train", "latest_checkpoint", "build_model_for"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    checkpoint: Path
    step: int
    last_loss: float


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest ``checkpoints/step_*.pt`` of a run folder, or None."""
    found = sorted((Path(run_dir) / "checkpoints").glob("step_*.pt"))
    return found[-1] if found else None


def build_model_for(config: TrainConfig, method: FlowMethod, shards: TokenShards) -> DiT:
    """The DiT preset of ``config`` with the input/output widths the method and the data require."""
    h, w = shards.latent_shape
    if h != w:
        raise PurrError(f"latent grids must be square, got {h}x{w}")
    try:
        model_config = dit_config_from_preset(config.model, **{**config.model_overrides, **method.backbone_io(),
                                                               "input_size": h, "num_classes": shards.num_classes})
        return DiT(model_config)
    except (ValueError, TypeError) as err:
        raise PurrError(f"cannot build model {config.model!r}: {err}") from None


def _lr_at(config: TrainConfig, step: int) -> float:
    if config.warmup_steps > 0 and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr


def _prune_checkpoints(ckpt_dir: Path, keep_last: int, keep_every: int) -> None:
    found = sorted(ckpt_dir.glob("step_*.pt"))
    for path in found[:-keep_last] if keep_last > 0 else []:
        step = int(path.stem.split("_")[1])
        if keep_every > 0 and step % keep_every == 0:
            continue
        path.unlink()


def train(config: TrainConfig, shards_path: str | Path, run_dir: str | Path, tokenizer_path: str | None = None,
          resume: bool = False, progress: bool = True, device: str = "cpu") -> TrainResult:
    """Train (or resume) a run of ``config`` on the token shards at ``shards_path`` into ``run_dir``."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    existing = latest_checkpoint(run_dir)
    resumed: Checkpoint | None = None
    if existing is not None and not resume:
        raise PurrError(f"{run_dir} already holds checkpoints; pass --resume to continue it or choose another --out")
    if existing is not None:
        resumed = load_checkpoint(existing)
        config = TrainConfig.from_dict(resumed.raw["config"])  # the checkpoint wins on resume
        log.info("resuming %s from step %d", run_dir, resumed.step)

    shards = TokenShards.open(shards_path)
    codebook = torch.from_numpy(shards.codebook).float()
    if resumed is not None and resumed.tokenizer_identity != shards.identity:
        raise PurrError(f"shards {shards_path} were made by {shards.identity.describe()}, but the run was trained on "
                        f"{resumed.tokenizer_identity.describe()}; resume with the original shards")
    method = get_method(config.method)(codebook, **config.method_options).to(device)
    model = build_model_for(config, method, shards).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas, eps=config.eps,
                            weight_decay=config.weight_decay)
    ema = EMA(model, config.ema_decay, config.ema_warmup)
    start_step = 0
    if resumed is not None:
        model.load_state_dict(resumed.raw["model"])
        ema.load_state_dict({"model": resumed.raw["ema"], "num_updates": resumed.raw["ema_updates"]})
        opt.load_state_dict(resumed.raw["optimizer"])
        start_step = resumed.step

    micro = config.micro_batch_size or config.batch_size
    batches = ShardBatches(shards, config.batch_size, micro, config.seed)
    tokenizer_entry = {"identity": shards.identity.to_dict(),
                       "path": tokenizer_path or shards.manifest.get("source", {}).get("tokenizer_path")}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_save_json(run_dir / "config.json", {"train": config.to_dict(), "model": model.config.to_dict(),
                                               "method": {"name": method.name, "options": method.options()},
                                               "shards": str(shards_path), "tokenizer": tokenizer_entry})
    metrics_path = run_dir / "metrics.jsonl"
    _truncate_metrics(metrics_path, start_step)

    def checkpoint_entries(step: int) -> dict[str, Any]:
        return {
            "config": config.to_dict(), "model_config": model.config.to_dict(),
            "method": {"name": method.name, "options": method.options()},
            "tokenizer": tokenizer_entry, "codebook": codebook.clone(), "num_classes": shards.num_classes,
            "latent_shape": list(shards.latent_shape), "step": step,
            "model": model.state_dict(), "ema": ema.model.state_dict(), "ema_updates": ema.num_updates,
            "optimizer": opt.state_dict(),
        }

    last_saved = existing
    loss_value = float("nan")
    bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, desc=f"train {method.name}",
               disable=not progress, dynamic_ncols=True)
    t_last, n_since = time.perf_counter(), 0
    model.train()
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(config, step)
        parts: dict[str, float] = {}
        loss_value = 0.0
        for slot in range(batches.slots_per_step):
            codes, y = batches.get(step, slot, device)
            out = method.loss(model, codes, y, slot_generator(config.seed, step, slot, device))
            (out.loss / batches.slots_per_step).backward()
            loss_value += out.loss.item() / batches.slots_per_step
            for k, v in out.metrics.items():
                parts[k] = parts.get(k, 0.0) + v / batches.slots_per_step
        if not math.isfinite(loss_value):
            where = f"; the last good checkpoint is {last_saved}" if last_saved else ""
            raise PurrError(f"loss became {loss_value} at step {step}{where}; lower the learning rate or enable grad_clip")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip if config.grad_clip > 0 else float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model)
        n_since += config.batch_size
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            now = time.perf_counter()
            record = {"step": done, "loss": loss_value, **parts, "grad_norm": float(grad_norm),
                      "lr": opt.param_groups[0]["lr"], "images_per_s": n_since / max(now - t_last, 1e-9)}
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            t_last, n_since = now, 0
            bar.set_postfix(loss=f"{loss_value:.4f}")
        if done % config.ckpt_every == 0 or done == config.steps:
            last_saved = save_checkpoint(ckpt_dir / f"step_{done:08d}.pt", checkpoint_entries(done))
            _prune_checkpoints(ckpt_dir, config.keep_last, config.keep_every)
    model.eval()
    final = latest_checkpoint(run_dir)
    assert final is not None
    return TrainResult(final, config.steps, loss_value)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines past the resumed step so the curve matches an uninterrupted run."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))
