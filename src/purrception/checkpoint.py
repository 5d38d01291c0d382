"""Checkpoints that carry everything needed to sample: configs, method, tokenizer identity and codebook.

The checkpoint format sits below everything that reads checkpoints (training, generation, evaluation, the
pipeline, the studies): it knows the model, the method registry and the tokenizer's identity, and nothing of how a
run was trained (``training.config.TrainConfig.from_dict(ckpt.state.config)`` reads the training config).

A checkpoint is a dict of tensors and plain values saved with ``torch.save`` and read back with
``weights_only=True`` (no code from the file runs). ``sample`` and ``eval`` need only its path. Its layout is
:class:`CheckpointState`: one dataclass field per top-level key, written by :meth:`CheckpointState.to_dict` and
checked by :meth:`CheckpointState.from_dict`, the only two places that know the keys.

Format versions: 2 records the DiT's position-table orientation in ``model_config["pos_embed_layout"]`` (the table
is a fixed buffer, not a saved weight). Version 1 files predate that field; every DiT then used the row-first table,
so :meth:`CheckpointState.from_dict` gives them :data:`~purrception.models.dit.LEGACY_POS_EMBED_LAYOUT` and they
sample exactly as they did. A file without a version is version 1, a newer one is refused
(:func:`purrception.formats.read_version`).
"""

from __future__ import annotations

import logging
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from purrception.errors import PurrError
from purrception.flows.base import FlowMethod, get_method
from purrception.formats import read_version
from purrception.io import atomic_torch_save, safe_torch_load
from purrception.models.dit import LEGACY_POS_EMBED_LAYOUT, DiT, DiTConfig
from purrception.tokenizers.base import TokenizerIdentity, VQTokenizer
from purrception.tokenizers.store import load_matching_tokenizer

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointState", "Checkpoint", "load_weights",
           "save_checkpoint", "load_checkpoint", "latest_checkpoint", "resolve_checkpoint"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "purrception-checkpoint"
CHECKPOINT_VERSION = 2
_OURS, _FROM = "a checkpoint of this library", "pass one made by `purr train` or `purr demo`"


@dataclass
class CheckpointState:
    """The contents of one checkpoint file (format version 2), one field per top-level key on disk.

    Fields without a default are required: a file lacking one is not a complete checkpoint. The optional ones are
    needed only to resume a run exactly (optimizer, EMA count, RNG states) or are facts for reports; they are None
    where a file does not hold them.
    """

    # -- what sampling and evaluation need ---------------------------------------------------------------------
    config: dict[str, Any]               # TrainConfig.to_dict() of the run
    model_config: dict[str, Any]         # DiTConfig.to_dict()
    method: dict[str, Any]               # {"name": registry name, "options": constructor options}
    tokenizer: dict[str, Any]            # {"identity": TokenizerIdentity.to_dict(), "path": str | None}
    codebook: torch.Tensor               # (K, d) float32, the shards' codebook
    num_classes: int
    step: int                            # optimizer steps taken
    model: dict[str, torch.Tensor]       # training weights
    ema: dict[str, torch.Tensor]         # EMA weights (what sampling uses)
    # -- what an exact resume needs ----------------------------------------------------------------------------
    ema_updates: int | None = None
    optimizer: dict[str, Any] | None = None
    rng: list[dict[str, Any]] | None = None  # capture_rng_state() of every rank, in rank order
    world_size: int | None = None
    cpu_threads: int | None = None       # torch's CPU thread count of the run (float rounding depends on it)
    # -- facts -------------------------------------------------------------------------------------------------
    latent_shape: list[int] | None = None
    data_position: dict[str, Any] | None = None  # {"step", "samples_seen", "seed"}
    train_seconds: float | None = None   # seconds in training steps, summed over resumes
    loss: float | None = None            # global mean loss of the step that led to this checkpoint

    @classmethod
    def required_keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)

    def to_dict(self) -> dict[str, Any]:
        """The dict written to disk: the format tag and version, then every field under its own name."""
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_dict(cls, d: Any, source: str | Path = "checkpoint") -> CheckpointState:
        """Check a loaded dict is a complete checkpoint of this library and wrap it; ``source`` names it in errors."""
        if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
            raise PurrError(f"{source} is not {_OURS}; {_FROM}")
        missing = [k for k in cls.required_keys() if k not in d]
        if missing:
            raise PurrError(f"{source} is not a complete checkpoint of this library (missing {', '.join(missing)}); "
                            f"use another checkpoint")
        d = {**d, "model_config": _model_config_of_version(d, source)}
        names = {f.name for f in fields(cls)}
        ignored = sorted(set(d) - names - {"format", "version"})
        if ignored:
            log.debug("%s: ignoring unknown checkpoint entries %s", source, ", ".join(ignored))
        state = cls(**{k: v for k, v in d.items() if k in names})
        state.step, state.num_classes = int(state.step), int(state.num_classes)
        if state.train_seconds is not None:
            state.train_seconds = float(state.train_seconds)
        return state


def _model_config_of_version(d: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """The checkpoint's ``model_config`` in the current layout: version 1 gets the legacy position table."""
    version = read_version(d, "checkpoint", source, CHECKPOINT_VERSION, "use another checkpoint")
    model_config = dict(d["model_config"])
    if version == 1:  # written before the layout was recorded, when every DiT used the legacy table
        model_config["pos_embed_layout"] = LEGACY_POS_EMBED_LAYOUT
    elif "pos_embed_layout" not in model_config:
        raise PurrError(f"{source} is not a complete checkpoint of this library (its model_config lacks "
                        f"pos_embed_layout); use another checkpoint")
    return model_config


@dataclass
class Checkpoint:
    """A loaded checkpoint: where it came from and its :class:`CheckpointState`."""

    path: Path
    state: CheckpointState

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def method_name(self) -> str:
        return str(self.state.method["name"])

    @property
    def model_config(self) -> DiTConfig:
        return DiTConfig.from_dict(self.state.model_config)

    @property
    def tokenizer_identity(self) -> TokenizerIdentity:
        return TokenizerIdentity.from_dict(self.state.tokenizer["identity"])

    @property
    def tokenizer_path(self) -> str | None:
        return self.state.tokenizer.get("path")

    @property
    def train_seconds(self) -> float | None:
        """Seconds spent in training steps up to this checkpoint, summed over resumes (None in older checkpoints)."""
        return self.state.train_seconds

    @property
    def num_classes(self) -> int:
        return self.state.num_classes

    @property
    def codebook(self) -> torch.Tensor:
        return self.state.codebook

    def build_method(self) -> FlowMethod:
        return get_method(self.method_name)(self.codebook, **self.state.method["options"])

    def load_tokenizer(self, path: str | Path | None = None, kind: str | None = None) -> VQTokenizer:
        """The tokenizer that decodes this checkpoint's codes (``path``, else the one it records), checked to be the
        one the model was trained on (same kind, codebook size and codebook hash)."""
        path = path or self.tokenizer_path
        if not path:
            raise PurrError(f"checkpoint {self.path} records no tokenizer path; pass `tokenizer=PATH`")
        return load_matching_tokenizer(path, self.tokenizer_identity, kind)

    def build_model(self, ema: bool = True) -> DiT:
        """The backbone with EMA weights (``ema=True``, used for sampling) or the raw training weights."""
        model = DiT(self.model_config)
        load_weights(model, self.state.ema if ema else self.state.model, f"the {'ema' if ema else 'model'} "
                     f"weights of {self.path}", "use another checkpoint")
        return model.eval()


def load_weights(model: torch.nn.Module, state: Any, what: str, fix: str) -> None:
    """``model.load_state_dict(state)`` (strict); weights missing, extra or of another shape are a one-line
    :class:`PurrError` naming ``what`` and the first problem, ending in ``fix``."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PurrError(f"{what} are not a dict of tensors; {fix}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        raise PurrError(f"{what} do not fit the model ({lines[0] if lines else err}); {fix}") from None


def save_checkpoint(path: str | Path, state: CheckpointState) -> Path:
    """Write a checkpoint atomically (temp file + rename)."""
    atomic_torch_save(path, state.to_dict())
    return Path(path)


def load_checkpoint(path: str | Path, expect_method: str | None = None) -> Checkpoint:
    """Read a checkpoint safely and check it is ours (and of ``expect_method`` when given)."""
    path = Path(path)
    ckpt = Checkpoint(path, CheckpointState.from_dict(safe_torch_load(path, "checkpoint", _OURS, _FROM), path))
    if expect_method is not None and ckpt.method_name != expect_method:
        raise PurrError(f"checkpoint {path} was trained with method {ckpt.method_name!r}, not {expect_method!r}; "
                        f"pass a {expect_method} checkpoint or do not assert the method")
    return ckpt


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest ``checkpoints/step_*.pt`` of a run folder, or None (half-written hidden temporaries never count)."""
    found = sorted((Path(run_dir) / "checkpoints").glob("step_*.pt"))
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path, expect_method: str | None = None) -> Checkpoint:
    """A checkpoint file, or the newest checkpoint of a run folder."""
    p = Path(path)
    if p.is_dir():
        newest = latest_checkpoint(p)
        if newest is None:
            raise PurrError(f"run folder {p} has no checkpoints yet; train it first or pass a checkpoint file")
        p = newest
    return load_checkpoint(p, expect_method)
