"""Training any trainable tokenizer kind on uint8 images, resumably, and measuring it.

The trainer is generic over the trainable kinds of :mod:`purrception.tokenizers.registry`: the config's class names
the kind, the model is built as ``model_class(config)`` after seeding, and each batch's loss is the model's
:meth:`~purrception.tokenizers.base.TrainableTokenizer.training_loss`, given the chosen reconstruction loss (mean
squared or absolute error in ``[-1, 1]`` pixel units). For ``conv-vq`` that is the reconstruction term plus ``beta``
times the commitment term ``||z_e - sg(q)||^2`` (van den Oord et al. 2017, eq. 3; the codebook is learnt by EMA).
The optimiser (Adam), the learning-rate schedule, the batches and the resumable state are the trainer's, shared by
every kind.

Reported metrics (paper App. E cares about reconstruction quality), on images the tokenizer did not train on:
mean squared reconstruction error in ``[-1, 1]`` units, PSNR ``10 log10(2^2 / MSE)`` over all pixels, codebook
perplexity ``exp(H(p))`` of the code histogram, and the fraction of codes used.

Resumption: with a ``work_dir``, the full training state (weights, EMA codebook, optimiser, schedule, step and the
random generators) is written there atomically every ``checkpoint_every`` steps; a killed run started again with the
same inputs continues from the last state and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from purrception.errors import PurrError
from purrception.io import atomic_write, safe_torch_load
from purrception.locks import folder_lock, is_lock_file
from purrception.pixels import images_to_tensor
from purrception.threads import ThreadGovernor
from purrception.tokenizers.base import TrainableTokenizer, VQTokenizer
from purrception.tokenizers.registry import TokenizerKind, kind_for_config
from purrception.tokenizers.store import CONFIG_NAME, save_tokenizer

__all__ = ["TokenizerTrainConfig", "RECONSTRUCTION_LOSSES", "train_tokenizer", "evaluate_tokenizer", "fit_tokenizer",
           "WORK_DIR"]

log = logging.getLogger(__name__)

#: reconstruction losses on pixels in [-1, 1]
RECONSTRUCTION_LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}
#: the resumable training state inside ``work_dir``
STATE_NAME = "train-state.pt"
#: where :func:`fit_tokenizer` keeps the resumable state, inside the tokenizer folder until it is complete
WORK_DIR = ".train"


@dataclass
class TokenizerTrainConfig:
    """How a tokenizer is trained (Adam; linear warm-up then cosine decay of the learning rate over ``steps``)."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    loss: str = "mse"
    checkpoint_every: int = 200

    def check(self) -> None:
        if self.loss not in RECONSTRUCTION_LOSSES:
            raise PurrError(f"unknown reconstruction loss {self.loss!r}; choose one of: "
                            f"{', '.join(RECONSTRUCTION_LOSSES)}")
        if min(self.steps, self.batch_size, self.checkpoint_every) < 1 or not self.lr > 0:
            raise PurrError("tokenizer steps, batch size, checkpoint interval and learning rate must be positive")


def _plan(images: np.ndarray, kind: TokenizerKind, model_config: Any,
          train_config: TokenizerTrainConfig) -> dict[str, Any]:
    """What a saved state must agree with to be resumed (the kind, the data's shape and a cheap content digest)."""
    plan = {"kind": kind.name} if kind.keyed_by_name else {}
    return {**plan, "model": asdict(model_config), "train": asdict(train_config), "images": list(images.shape),
            "images_sum": int(images.sum(dtype=np.int64))}


def train_tokenizer(images: np.ndarray, model_config: Any, train_config: TokenizerTrainConfig,
                    progress: bool = True, device: str = "cpu",
                    work_dir: str | Path | None = None) -> TrainableTokenizer:
    """Fit a tokenizer of ``model_config``'s trainable kind to uint8 ``images`` ``(N, R, R)`` or ``(N, R, R, C)``.

    Args:
        images: the training images, already at the tokenizer's resolution and channels.
        model_config: the architecture: a config of a trainable kind (e.g. a
            :class:`~purrception.tokenizers.conv_vq.ConvVQConfig`), which names the kind.
        train_config: the recipe.
        progress: show a progress bar.
        device: where to train.
        work_dir: where the resumable state lives; ``None`` trains without checkpoints.

    Returns:
        The model on the CPU, in eval mode.
    """
    kind = kind_for_config(model_config)
    train_config.check()
    model_config.check()
    side, channels = model_config.image_size, model_config.image_channels
    if tuple(images.shape[1:]) != ((side, side) if channels == 1 else (side, side, channels)):
        raise PurrError(f"training images have shape {images.shape[1:]}, the tokenizer takes {side}x{side} with "
                        f"{channels} channel(s)")
    torch.manual_seed(train_config.seed)
    model = kind.model_class(model_config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=train_config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(train_config.steps))
    gen = torch.Generator().manual_seed(train_config.seed)
    plan = _plan(images, kind, model_config, train_config)
    state_file = Path(work_dir) / STATE_NAME if work_dir is not None else None
    start = _restore(state_file, plan, model, opt, sched, gen) if state_file is not None else 0
    reconstruction = RECONSTRUCTION_LOSSES[train_config.loss]
    model.train()
    bar = tqdm(total=train_config.steps, initial=start, desc="tokenizer", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    threads = ThreadGovernor(device)
    for step in range(start, train_config.steps):
        threads.check()
        idx = torch.randint(0, images.shape[0], (train_config.batch_size,), generator=gen)
        x = images_to_tensor(images[idx.numpy()]).to(device)
        loss, rec = model.training_loss(x, reconstruction)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix({train_config.loss: f"{rec.item():.4f}"})
        done = step + 1
        if state_file is not None and done < train_config.steps and done % train_config.checkpoint_every == 0:
            _save(state_file, plan, done, model, opt, sched, gen)
    bar.close()
    seconds = time.perf_counter() - t0
    if train_config.steps > start:
        log.info("%s tokenizer: %d steps in %.0f s (%.0f images/s)", kind.name, train_config.steps - start, seconds,
                 (train_config.steps - start) * train_config.batch_size / max(seconds, 1e-9))
    return model.cpu().eval()


def _warmup_cosine(steps: int, warmup_share: float = 0.05):
    """Learning-rate factor at a step: linear warm-up over the first ``warmup_share`` of the run, then cosine."""
    warmup = max(1, round(steps * warmup_share))
    return lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))


def _save(path: Path, plan: dict[str, Any], step: int, model: TrainableTokenizer, opt: torch.optim.Optimizer,
          sched: torch.optim.lr_scheduler.LRScheduler, gen: torch.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"plan": plan, "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "data_rng": gen.get_state(), "torch_rng": torch.get_rng_state()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _restore(path: Path, plan: dict[str, Any], model: TrainableTokenizer, opt: torch.optim.Optimizer,
             sched: torch.optim.lr_scheduler.LRScheduler, gen: torch.Generator) -> int:
    """Load the state at ``path`` into the training objects; return the step to continue from (0 if none)."""
    if not path.is_file():
        return 0
    state = safe_torch_load(path, "tokenizer training state")
    if state.get("plan") != plan:
        old = state.get("plan") or {}
        differ = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
        raise PurrError(f"{path.parent} holds an unfinished tokenizer run with other {', '.join(differ)}; "
                        f"repeat its settings to resume it, or choose another `out`")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["data_rng"])
    torch.set_rng_state(state["torch_rng"])
    log.info("resuming the tokenizer run in %s at step %d", path.parent, state["step"])
    return int(state["step"])


@torch.no_grad()
def evaluate_tokenizer(tokenizer: VQTokenizer, images: np.ndarray, batch_size: int = 500) -> dict[str, float]:
    """Reconstruction MSE (pixels in [-1, 1]), PSNR, codebook perplexity and fraction of codes used."""
    data = images_to_tensor(images)
    counts = torch.zeros(tokenizer.codebook_size, dtype=torch.float64)
    sq_err = 0.0
    for start in range(0, data.shape[0], batch_size):
        x = data[start : start + batch_size]
        codes = tokenizer.encode(x)
        counts += torch.bincount(codes.reshape(-1), minlength=tokenizer.codebook_size).double()
        sq_err += F.mse_loss(tokenizer.decode(codes), x, reduction="sum").item()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    mse = sq_err / data.numel()
    return {
        "recon_mse": mse,
        "psnr_db": 10 * math.log10(4.0 / mse) if mse > 0 else float("inf"),
        "perplexity": math.exp(entropy),
        "codes_used_fraction": float((counts > 0).float().mean()),
        "num_images": int(data.shape[0]),
    }


def fit_tokenizer(train_images: np.ndarray, heldout_images: np.ndarray, out: str | Path, model_config: Any,
                  train_config: TokenizerTrainConfig, record: dict[str, Any] | None = None, progress: bool = True,
                  device: str = "cpu") -> Path:
    """Train a tokenizer into the folder ``out`` (resuming an unfinished run there) and measure it.

    Args:
        train_images: uint8 images it trains on.
        heldout_images: uint8 images its metrics are measured on (empty: measured on ``train_images``, and the
            metrics say so).
        out: a new folder, or one holding an unfinished run of the same settings (``out/.train``).
        model_config: the architecture: a config of a trainable kind, which names the kind.
        train_config: the recipe.
        record: what ``config.json`` records about the data, beside the metrics.
        progress: show a progress bar.
        device: where to train.

    Returns:
        ``out``, with ``config.json`` (architecture, identity, metrics) and ``model.safetensors``.
    """
    out = Path(out)
    if out.is_file():
        raise PurrError(f"{out} exists and is not an unfinished tokenizer run; choose a new or empty `out` "
                        "(nothing was written)")
    with folder_lock(out, param="out"):  # one writer per folder; the checks below see no other writer's files
        return _fit_locked(train_images, heldout_images, out, model_config, train_config, record, progress, device)


def _fit_locked(train_images: np.ndarray, heldout_images: np.ndarray, out: Path, model_config: Any,
                train_config: TokenizerTrainConfig, record: dict[str, Any] | None, progress: bool,
                device: str) -> Path:
    work = out / WORK_DIR
    if (out / CONFIG_NAME).is_file():
        raise PurrError(f"{out} already holds a trained tokenizer; choose another `out` (nothing was overwritten)")
    if any(p.name != WORK_DIR and not is_lock_file(p) for p in out.iterdir()):
        raise PurrError(f"{out} exists and is not an unfinished tokenizer run; choose a new or empty `out` "
                        "(nothing was written)")
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(train_images, model_config, train_config, progress, device, work_dir=work)
    seconds = time.perf_counter() - t0
    measured_on = "heldout" if len(heldout_images) else "train"
    metrics = evaluate_tokenizer(tokenizer, heldout_images if len(heldout_images) else train_images)
    log.info("tokenizer on %s images: MSE %.4f, PSNR %.1f dB, perplexity %.1f, codes used %.0f%%", measured_on,
             metrics["recon_mse"], metrics["psnr_db"], metrics["perplexity"], 100 * metrics["codes_used_fraction"])
    training = {"num_images": len(train_images), "seconds_this_call": round(seconds, 1), **asdict(train_config)}
    save_tokenizer(tokenizer, out, metrics={measured_on: metrics, "training": training, "data": record or {}})
    shutil.rmtree(work, ignore_errors=True)
    return out
