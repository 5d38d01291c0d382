"""The training engine: AdamW (paper App. C), EMA, bf16 autocast, gradient accumulation, data parallelism over
processes (``torchrun``), atomic checkpoints with exact resume, JSONL / TensorBoard metrics and sample grids.

A run lives in one folder::

    config.json          the resolved TrainConfig (and model / method / data facts)
    metrics.jsonl        one JSON line per logged step
    checkpoints/         step_00001000.pt ... (atomic writes; the newest is the resume point)
    samples/             step_00010000.png ... (EMA sample grids, when ``sample_every`` > 0)
    tensorboard/         event files (when ``tensorboard`` is on)

Data parallelism. A step's global batch of ``B`` samples is split into ``S = B / micro_batch_size`` micro-batch
*slots*. The sample at position ``i`` of the global batch and its randomness (noise, time, label dropout: its own
generator) depend only on ``(seed, step, i)`` (``training.data``), never on the slot or process that computes it.
With ``W`` processes, rank ``r`` computes slots ``r S / W ... (r + 1) S / W - 1`` and back-propagates
``loss / S`` for each; the gradients are summed over ranks once per step (on CUDA by DistributedDataParallel, which
averages, so there ``loss * W / S``, with ``no_sync`` on all but the last micro-batch), so every rank holds
``sum_s grad(loss_s) / S`` -- the gradient of the same global batch that one process accumulating all ``S`` slots
computes. Hence 1, 2 or 64 processes, on one node or several, and any micro-batch size follow the same
trajectory; only the float summation order differs (which slots a process adds before the all-reduce, and the
micro-batch size of the forward pass), so parameters agree to rounding, not bit for bit (a loss that averages over
a data-dependent count within a micro-batch, DFM's masked positions, also weighs micro-batches slightly
differently). The data position of a run is just its step.
Rank 0 alone writes files and shows progress, and holds the run folder's lock (:mod:`purrception.locks`) for the
whole call, so a second ``train`` into the same ``run_dir`` is refused; every rank reads the checkpoint on resume, so
``run_dir`` must be on a filesystem all nodes see.

``train(..., resume=True)`` continues from the newest checkpoint and reproduces the uninterrupted run exactly
(CPU, deterministic, the same number of processes before and after; another number continues the same trajectory
to float rounding). The checkpoint's config defines the run;
the caller may change only what :attr:`TrainConfig.ADJUSTABLE` lists (``steps``, logging / checkpoint / sample
cadence, precision), and asking for another value of a :attr:`TrainConfig.PINNED` field is refused
(:func:`~purrception.training.config.resumed_config`). A run already at or past ``steps`` is returned as it is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Collection, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from purrception.checkpoint import Checkpoint, CheckpointState, latest_checkpoint, load_checkpoint, save_checkpoint
from purrception.data.shards import TokenShards
from purrception.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    contiguous_slice,
    gather_to_rank0,
    init_distributed,
)
from purrception.errors import PurrError
from purrception.flows.base import FlowMethod, LossOutput, Randomness, get_method
from purrception.io import append_line, atomic_save_json, atomic_write
from purrception.locks import folder_lock
from purrception.models.dit import DiT, dit_config_from_preset
from purrception.models.dit_import import import_dit_trunk
from purrception.threads import threads_for_run
from purrception.training.config import (
    RUN_CONFIG_FORMAT,
    RUN_CONFIG_VERSION,
    TrainConfig,
    config_differences,
    resumed_config,
)
from purrception.training.data import ShardBatches, sample_generators
from purrception.training.ema import EMA
from purrception.training.optimizer import adamw
from purrception.training.rng_state import capture_rng_state, restore_rng_state

__all__ = ["TrainResult", "train", "build_model_for", "slots_of_rank", "PRECISION_DTYPES"]

log = logging.getLogger(__name__)

#: ``TrainConfig.precision`` -> autocast dtype (None: plain float32)
PRECISION_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    """What a :func:`train` call left: the newest checkpoint, its step, and the loss of the step before it.

    ``start_step`` is the step the call started from (0 for a new run). ``last_loss`` is None only for a run that
    trained no step in this call and whose checkpoint and metrics record no loss.
    """

    checkpoint: Path
    step: int
    last_loss: float | None
    start_step: int = 0


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


def slots_of_rank(config: TrainConfig, world: int, rank: int) -> tuple[int, int, range]:
    """``(micro_batch, slots_per_step, this rank's slots)`` for a global batch split over ``world`` processes.

    ``micro_batch_size = 0`` means one micro-batch per process (``batch_size / world``); a smaller value adds
    gradient accumulation. The global batch is never changed by the number of processes.
    """
    micro = config.micro_batch_size or config.batch_size // world
    if micro <= 0 or config.batch_size % micro or (config.batch_size // micro) % world:
        raise PurrError(f"global batch {config.batch_size} cannot be split into micro-batches of "
                        f"{config.micro_batch_size or 'batch/world'} over {world} processes; choose batch_size and "
                        f"micro_batch_size so that batch_size / micro_batch_size is a multiple of {world}")
    slots = config.batch_size // micro
    return micro, slots, contiguous_slice(slots, rank, world)


class _LossModule(nn.Module):
    """``forward(codes, y, generators) -> LossOutput``: the method's loss as a module, so DDP can wrap it."""

    def __init__(self, model: DiT, method: FlowMethod):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, codes: torch.Tensor, y: torch.Tensor, generator: Randomness) -> LossOutput:
        return self.method.loss(self.model, codes, y, generator)


def _lr_at(config: TrainConfig, step: int) -> float:
    if config.warmup_steps > 0 and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr


def _prune_checkpoints(ckpt_dir: Path, keep_last: int, keep_every: int) -> None:
    """Keep the newest ``keep_last`` checkpoints (0 = all) and every ``keep_every``-th step's."""
    found = sorted(ckpt_dir.glob("step_*.pt"))
    for path in found[:-keep_last] if keep_last > 0 else []:
        step = int(path.stem.split("_")[1])
        if keep_every > 0 and step % keep_every == 0:
            continue
        path.unlink()


def _seed_process(seed: int, rank: int) -> None:
    """Per-rank global RNG streams (the loop's own noise comes from per-slot generators, not from these)."""
    mixed = int(np.random.SeedSequence([seed, rank, 0x5EED]).generate_state(1)[0])
    random.seed(mixed)
    np.random.seed(mixed)
    torch.manual_seed(mixed)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = PRECISION_DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class _RunWriter:
    """Rank 0's outputs: metrics.jsonl, optional TensorBoard, periodic sample grids. Other ranks get a no-op."""

    def __init__(self, config: TrainConfig, run_dir: Path, info: DistInfo, tokenizer_path: str | None,
                 shards: TokenShards):
        self.config = config
        self.run_dir = run_dir
        self.active = info.is_main
        self.metrics_path = run_dir / "metrics.jsonl"
        self.tb = None
        self.tokenizer = None
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise PurrError("`tensorboard=True` needs the tensorboard package: pip install tensorboard "
                                "(or set `tensorboard=False`)") from None
            if self.active:
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        if config.sample_every > 0:
            if not tokenizer_path:
                raise PurrError("`sample_every` needs the tokenizer that made the shards; pass `tokenizer_path=PATH` "
                                "or `sample_every=0`")
            if self.active:
                self.tokenizer = _load_sampling_tokenizer(tokenizer_path, shards, info.device)

    def metrics(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        append_line(self.metrics_path, json.dumps(record))
        if self.tb is not None:
            for key, value in record.items():
                if key != "step":
                    self.tb.add_scalar(f"train/{key}", value, record["step"])

    def samples(self, step: int, method: FlowMethod, ema_model: DiT, num_classes: int, device: torch.device) -> None:
        """An EMA sample grid (class-balanced labels, fixed seed: comparable across steps), rank 0 only."""
        if not self.active or self.tokenizer is None:
            return
        from purrception.generation.generate import balanced_labels, generate_images
        from purrception.sampling.grid import image_grid, save_png
        from purrception.sampling.settings import SamplerSettings

        n = self.config.sample_images
        labels = balanced_labels(n, num_classes)
        sampler = SamplerSettings(sample_steps=self.config.sample_steps)
        images = generate_images(method, ema_model, self.tokenizer, labels, sampler, self.config.seed,
                                 batch_size=n, device=str(device))
        grid = image_grid(images, rows=max(1, int(math.sqrt(n))))
        save_png(self.run_dir / "samples" / f"step_{step:08d}.png", grid)
        if self.tb is not None:
            self.tb.add_image("samples/ema", grid, step, dataformats="HW" if grid.ndim == 2 else "HWC")
        log.info("step %d: sample grid saved to %s", step, self.run_dir / "samples")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _load_sampling_tokenizer(path: str, shards: TokenShards, device: torch.device):
    from purrception.tokenizers.store import load_matching_tokenizer

    return load_matching_tokenizer(path, shards.identity).to(device)


def train(config: TrainConfig, shards_path: str | Path, run_dir: str | Path, tokenizer_path: str | None = None,
          resume: bool = False, progress: bool = True, device: str = "cpu",
          explicit: Collection[str] | None = None) -> TrainResult:
    """Train (or resume) a run of ``config`` on the token shards at ``shards_path`` into ``run_dir``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this with the same arguments; each joins the process
    group (NCCL on CUDA, gloo on CPU), drives ``cuda:LOCAL_RANK`` when ``device`` is CUDA, and computes its share of
    every global batch (see the module docstring). The effective batch is ``config.batch_size`` whatever the number
    of processes.

    Args:
        explicit: on resume, the fields of ``config`` the caller asked for by name
            (:func:`~purrception.training.config.explicit_fields`); None means every field. The others keep the
            checkpoint's values; see :func:`~purrception.training.config.resumed_config`.
    """
    info = init_distributed(device)
    run_dir = Path(run_dir)
    # one writer per run: rank 0 (which alone writes) holds run_dir's lock, which also clears writes cut short
    with folder_lock(run_dir, param="run_dir") if info.is_main else contextlib.nullcontext():
        resumed = _resume_point(run_dir, resume, info)
        if resumed is not None:
            config = _config_to_resume(resumed, config, explicit, info)
            if resumed.step >= config.steps:
                return _already_done(resumed, config, run_dir, info)
        run = _Run(config, shards_path, run_dir, tokenizer_path, info, resumed)
        loss = run.fit(progress)
        final = latest_checkpoint(run_dir)
        assert final is not None
        return TrainResult(final, config.steps, loss, run.start_step)


def _resume_point(run_dir: Path, resume: bool, info: DistInfo) -> Checkpoint | None:
    """The newest checkpoint of ``run_dir`` when resuming; refuse to train over one otherwise."""
    existing = latest_checkpoint(run_dir)
    if existing is None:
        return None
    if not resume:
        raise PurrError(f"{run_dir} already holds checkpoints; pass `resume=True` to continue it or choose another "
                        "`run_dir`")
    resumed = load_checkpoint(existing)
    if info.is_main:
        log.info("resuming %s from step %d", run_dir, resumed.step)
    return resumed


def _config_to_resume(resumed: Checkpoint, asked: TrainConfig, explicit: Collection[str] | None,
                      info: DistInfo) -> TrainConfig:
    """The checkpoint's config with the caller's asked-for adjustable fields; say which of the run's values stay."""
    config = resumed_config(TrainConfig.from_dict(resumed.state.config), asked, explicit)
    kept = config_differences(config, asked)
    if kept and info.is_main:
        log.info("resuming with the run's own %s (not asked for in this call)",
                 ", ".join(f"{name}={json.dumps(v['run'])}" for name, v in kept.items()))
    return config


def _already_done(resumed: Checkpoint, config: TrainConfig, run_dir: Path, info: DistInfo) -> TrainResult:
    """A resumed run at or past ``config.steps``: nothing to train, so report its newest checkpoint as it is."""
    if info.is_main:
        log.info("%s is already at step %d (%d steps asked); nothing to train. Ask for more steps to continue it",
                 run_dir, resumed.step, config.steps)
    return TrainResult(resumed.path, resumed.step, _recorded_loss(resumed, run_dir), resumed.step)


def _recorded_loss(ckpt: Checkpoint, run_dir: Path) -> float | None:
    """The loss of the step before ``ckpt``: stored in it, else (older checkpoints) its step's metrics line."""
    if ckpt.state.loss is not None:
        return float(ckpt.state.loss)
    path = run_dir / "metrics.jsonl"
    losses = [r["loss"] for _, r in _metric_lines(path) if r.get("step") == ckpt.step] if path.exists() else []
    return float(losses[-1]) if losses else None


class _Run:
    """One call of :func:`train`, one job per method: set-up (``__init__``), :meth:`restore`, :meth:`step`,
    :meth:`log_metrics`, :meth:`checkpoint` and :meth:`fit`, the loop that calls them."""

    def __init__(self, config: TrainConfig, shards_path: str | Path, run_dir: Path, tokenizer_path: str | None,
                 info: DistInfo, resumed: Checkpoint | None):
        self.config, self.info, self.dev = config, info, info.device
        self.run_dir, self.ckpt_dir = run_dir, run_dir / "checkpoints"
        self.last_saved = resumed.path if resumed is not None else None
        self.start_step, self.train_seconds = 0, 0.0
        self._open_data(shards_path, tokenizer_path, resumed)
        self._build(resumed)
        if resumed is not None:
            self.restore(resumed)
        # one CPU thread count for the whole run, recorded and kept on resume: float rounding depends on it
        self.cpu_threads = threads_for_run(self.dev, resumed.state.cpu_threads if resumed is not None else None)
        self._wrap()
        self._write_run_files(shards_path)
        self.writer = _RunWriter(config, run_dir, info, self.tokenizer_entry["path"], self.shards)

    def _open_data(self, shards_path: str | Path, tokenizer_path: str | None, resumed: Checkpoint | None) -> None:
        """The shards (of the resumed run's tokenizer), this rank's micro-batch slots and their batches."""
        self.shards = shards = TokenShards.open(shards_path)
        if resumed is not None and resumed.tokenizer_identity != shards.identity:
            raise PurrError(f"shards {shards_path} were made by {shards.identity.describe()}, but the run was trained "
                            f"on {resumed.tokenizer_identity.describe()}; resume with the original shards")
        self.codebook = torch.from_numpy(shards.codebook).float()
        self.tokenizer_entry = {"identity": shards.identity.to_dict(),
                                "path": tokenizer_path or shards.manifest.get("source", {}).get("tokenizer_path")}
        self.micro, self.slots_per_step, self.my_slots = slots_of_rank(self.config, self.info.world_size,
                                                                       self.info.rank)
        self.batches = ShardBatches(shards, self.config.batch_size, self.micro, self.config.seed)

    def _build(self, resumed: Checkpoint | None) -> None:
        """Method, model (the same initial weights on every rank), AdamW (paper App. C) and EMA.

        A new run with ``init_from`` starts its trunk from that DiT / SiT file (:mod:`purrception.models.dit_import`);
        a resumed run keeps the position table its checkpoint records (format 1: the legacy one), since the table is
        a fixed buffer that checkpoints do not hold, and its weights come from :meth:`restore`.
        """
        config = self.config
        self.method = get_method(config.method)(self.codebook, **config.method_options).to(self.dev)
        torch.manual_seed(config.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        model = build_model_for(config, self.method, self.shards)
        if resumed is not None:
            layout = resumed.model_config.pos_embed_layout
            if layout != model.config.pos_embed_layout:
                model = DiT(replace(model.config, pos_embed_layout=layout))
            if config.init_from and self.info.is_main:
                log.info("resuming: init_from %s is not read again, the run's own weights continue", config.init_from)
        elif config.init_from:
            import_dit_trunk(model, config.init_from)
        self.model = model.to(self.dev)
        _seed_process(config.seed, self.info.rank)
        # lr is set from the schedule (_lr_at) before every step; 0.0 here only satisfies the constructor
        self.opt = adamw(self.model.parameters(), lr=0.0, betas=config.betas, eps=config.eps,
                         weight_decay=config.weight_decay)
        self.ema = EMA(self.model, config.ema_decay, config.ema_warmup)

    def restore(self, ckpt: Checkpoint) -> None:
        """Weights, EMA, optimizer, step, train time and (same world size) this rank's RNG states of ``ckpt``."""
        state = ckpt.state
        if state.optimizer is None or state.ema_updates is None:
            raise PurrError(f"checkpoint {ckpt.path} holds no optimizer or EMA state, so it cannot be resumed; "
                            f"train into a new `run_dir`")
        self.model.load_state_dict(state.model)
        self.ema.load_state_dict({"model": state.ema, "num_updates": state.ema_updates})
        self.opt.load_state_dict(state.optimizer)
        self.start_step = ckpt.step
        self.train_seconds = ckpt.train_seconds or 0.0
        if state.rng is not None and len(state.rng) == self.info.world_size:
            restore_rng_state(state.rng[self.info.rank], self.dev)

    def _wrap(self) -> None:
        """Optional per-block ``torch.compile`` and, over several CUDA processes, DistributedDataParallel.

        On CPU (gloo) the gradients are summed over processes once per step as one flat vector in parameter order
        (:func:`_sum_gradients`): the same summation order every step, so a resumed run reproduces the
        uninterrupted one bit for bit. DDP's buckets are laid out anew after a run's (or a resumed run's) first
        step, which moves each gradient entry to another place in gloo's ring, so another summation order.
        """
        if self.config.compile:
            for block in self.model.blocks:  # in place: parameter names (and checkpoints) stay those of the plain model
                block.compile()
        self.loss_module = _LossModule(self.model, self.method)
        self.ddp = None
        if self.info.world_size > 1 and self.dev.type == "cuda":
            self.ddp = DistributedDataParallel(self.loss_module, device_ids=[self.dev.index],
                                               gradient_as_bucket_view=True)
        self.forward = self.ddp if self.ddp is not None else self.loss_module
        # DDP averages over ranks, a plain sum does not: either way every rank holds sum_s grad(loss_s) / S.
        self.loss_scale = (self.info.world_size if self.ddp is not None else 1) / self.slots_per_step

    def _write_run_files(self, shards_path: str | Path) -> None:
        """Rank 0: ``config.json`` (resolved config, model, method, data, process layout); metrics cut to the step."""
        if not self.info.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_save_json(self.run_dir / "config.json", {
            "format": RUN_CONFIG_FORMAT, "version": RUN_CONFIG_VERSION,
            "train": self.config.to_dict(), "model": self.model.config.to_dict(),
            "method": {"name": self.method.name, "options": self.method.options()},
            "shards": str(shards_path), "tokenizer": self.tokenizer_entry,
            "distributed": {"world_size": self.info.world_size, "micro_batch_size": self.micro,
                            "slots_per_step": self.slots_per_step},
        })
        _truncate_metrics(self.run_dir / "metrics.jsonl", self.start_step)

    def fit(self, progress: bool) -> float:
        """Train from the start step to ``config.steps``; return the last step's loss (NaN when none ran)."""
        config = self.config
        loss = float("nan")
        bar = tqdm(range(self.start_step, config.steps), initial=self.start_step, total=config.steps,
                   desc=f"train {self.method.name}", disable=not (progress and self.info.is_main), dynamic_ncols=True)
        self._t_last, self._n_since = time.perf_counter(), 0
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dev)
        self.model.train()
        try:
            for step in bar:
                loss, parts, grad_norm = self.step(step)
                done = step + 1
                if done % config.log_every == 0 or done == config.steps:
                    self.log_metrics(done, loss, parts, grad_norm)
                    bar.set_postfix(loss=f"{loss:.4f}")
                if done % config.ckpt_every == 0 or done == config.steps:
                    self.checkpoint(done, loss)
                if config.sample_every > 0 and done % config.sample_every == 0:
                    self.writer.samples(done, self.method, self.ema.model, self.shards.num_classes, self.dev)
        finally:
            self.writer.close()
            bar.close()
        barrier()  # the final checkpoint exists for every rank before anyone returns
        self.model.eval()
        return loss

    def step(self, step: int) -> tuple[float, dict[str, float], float]:
        """One optimizer step on the global batch of ``step``: ``(loss, loss parts, gradient norm)``, all finite."""
        config = self.config
        t_step = time.perf_counter()
        for group in self.opt.param_groups:
            group["lr"] = _lr_at(config, step)
        loss, parts = _accumulate(self.forward, self.ddp, self.batches, config, step, self.my_slots,
                                  self.slots_per_step, self.loss_scale, self.dev)
        if self.ddp is None and self.info.world_size > 1:
            _sum_gradients(self.model)
        if not math.isfinite(loss):
            raise PurrError(f"loss became {loss} at step {step}{_last_good(self.last_saved)}; "
                            f"lower the learning rate or enable grad_clip")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), config.grad_clip if config.grad_clip > 0 else float("inf")))
        if not math.isfinite(grad_norm):
            raise PurrError(f"gradient norm became {grad_norm} at step {step}{_last_good(self.last_saved)}; "
                            f"lower the learning rate, enable grad_clip or use precision=fp32")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.train_seconds += time.perf_counter() - t_step  # steps only: no checkpoint writes or sample grids
        self._n_since += config.batch_size
        return loss, parts, grad_norm

    def log_metrics(self, done: int, loss: float, parts: dict[str, float], grad_norm: float) -> None:
        """One ``metrics.jsonl`` record (and TensorBoard scalars) after ``done`` steps."""
        now = time.perf_counter()
        record = {"step": done, "loss": loss, **parts, "grad_norm": grad_norm, "lr": self.opt.param_groups[0]["lr"],
                  "images_per_s": self._n_since / max(now - self._t_last, 1e-9), "train_seconds": self.train_seconds}
        if self.dev.type == "cuda":
            record["max_memory_gb"] = torch.cuda.max_memory_allocated(self.dev) / 2**30
        self.writer.metrics(record)
        self._t_last, self._n_since = now, 0

    def checkpoint(self, done: int, loss: float) -> None:
        """Every rank's RNG states to rank 0, which writes ``step_<done>.pt`` atomically and prunes old ones."""
        rng = gather_to_rank0(capture_rng_state(self.dev))  # collective: every rank takes part
        if not _all_finite(self.model):
            # never overwrite good checkpoints with a diverged model; the next step's loss guard stops
            if done == self.config.steps:
                raise PurrError(f"parameters became non-finite at step {done}{_last_good(self.last_saved)}; "
                                f"lower the learning rate or enable grad_clip")
            log.warning("parameters are non-finite after step %d; checkpoint not written", done)
        elif self.info.is_main:
            self.last_saved = save_checkpoint(self.ckpt_dir / f"step_{done:08d}.pt",
                                              self.checkpoint_state(done, rng, loss))
            _prune_checkpoints(self.ckpt_dir, self.config.keep_last, self.config.keep_every)

    def checkpoint_state(self, step: int, rng: list[Any], loss: float) -> CheckpointState:
        """What a checkpoint after ``step`` steps holds (:class:`CheckpointState`)."""
        config, model, shards = self.config, self.model, self.shards
        return CheckpointState(
            config=config.to_dict(), model_config=model.config.to_dict(),
            method={"name": self.method.name, "options": self.method.options()},
            tokenizer=self.tokenizer_entry, codebook=self.codebook.clone(), num_classes=shards.num_classes, step=step,
            model=model.state_dict(), ema=self.ema.model.state_dict(), ema_updates=self.ema.num_updates,
            optimizer=self.opt.state_dict(), rng=rng, world_size=self.info.world_size,
            cpu_threads=self.cpu_threads if self.dev.type == "cpu" else None, latent_shape=list(shards.latent_shape),
            data_position={"step": step, "samples_seen": step * config.batch_size, "seed": config.seed},
            train_seconds=self.train_seconds, loss=loss,
        )


def _accumulate(forward: nn.Module, ddp: DistributedDataParallel | None, batches: ShardBatches, config: TrainConfig,
                step: int, my_slots: range, slots_per_step: int, loss_scale: float,
                dev: torch.device) -> tuple[float, dict[str, float]]:
    """Forward + backward over this rank's micro-batch slots of ``step``; returns the global mean loss and parts."""
    loss_sum, parts = 0.0, {}
    for i, slot in enumerate(my_slots):
        codes, y = batches.get(step, slot, dev)
        sync = ddp is None or i == len(my_slots) - 1
        with contextlib.nullcontext() if sync else ddp.no_sync():
            with _autocast(dev, config.precision):
                out = forward(codes, y, sample_generators(config.seed, step, batches.positions(slot), dev))
            (out.loss.float() * loss_scale).backward()
        loss_sum += float(out.loss.detach())
        for k, v in out.metrics.items():
            parts[k] = parts.get(k, 0.0) + float(v)
    keys = sorted(parts)
    totals = all_reduce_sum(torch.tensor([loss_sum] + [parts[k] for k in keys], dtype=torch.float64, device=dev))
    values = (totals / slots_per_step).tolist()
    return values[0], dict(zip(keys, values[1:]))


@torch.no_grad()
def _sum_gradients(model: nn.Module) -> None:
    """Sum every parameter's gradient over the processes, as one vector in parameter order. A parameter without a
    gradient here counts as zeros in the sum and keeps no gradient (as in one process: the optimizer skips it; the
    losses keep every parameter in the graph, so the processes agree on which have one)."""
    params = list(model.parameters())
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    all_reduce_sum(flat)
    offset = 0
    for p in params:
        if p.grad is not None:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()


@torch.no_grad()
def _all_finite(model: nn.Module) -> bool:
    norms = torch._foreach_norm([p for p in model.parameters()])
    return bool(torch.isfinite(torch.stack(norms)).all())


def _last_good(path: Path | None) -> str:
    return f"; the last good checkpoint is {path}" if path else ""


def _metric_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for line in path.read_text().splitlines():
        try:
            yield line, json.loads(line)
        except ValueError:  # a line cut short by a killed process
            continue


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines past the resumed step so the curve matches an uninterrupted run."""
    if not path.exists():
        return
    kept = [line for line, record in _metric_lines(path) if record.get("step", math.inf) <= step]
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in kept)))
