"""Checkpoints that carry everything needed to sample: configs, method, tokenizer identity and codebook.

A checkpoint is a dict of tensors and plain values saved with ``torch.save`` and read back with
``weights_only=True`` (no code from the file runs). ``sample`` and ``eval`` need only its path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from purrception.errors import PurrError
from purrception.flows.base import FlowMethod, get_method
from purrception.io import atomic_torch_save, safe_torch_load
from purrception.models.dit import DiT, DiTConfig
from purrception.tokenizers.base import TokenizerIdentity

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "save_checkpoint", "load_checkpoint"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "purrception-checkpoint"
_REQUIRED = ("config", "model_config", "method", "tokenizer", "codebook", "num_classes", "step", "model", "ema")


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``raw`` holds every entry (optimizer state, RNG, ...) for resuming."""

    path: Path
    raw: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.raw["step"])

    @property
    def method_name(self) -> str:
        return str(self.raw["method"]["name"])

    @property
    def model_config(self) -> DiTConfig:
        return DiTConfig.from_dict(self.raw["model_config"])

    @property
    def tokenizer_identity(self) -> TokenizerIdentity:
        return TokenizerIdentity.from_dict(self.raw["tokenizer"]["identity"])

    @property
    def tokenizer_path(self) -> str | None:
        return self.raw["tokenizer"].get("path")

    @property
    def num_classes(self) -> int:
        return int(self.raw["num_classes"])

    @property
    def codebook(self) -> torch.Tensor:
        return self.raw["codebook"]

    def build_method(self) -> FlowMethod:
        return get_method(self.method_name)(self.codebook, **self.raw["method"]["options"])

    def build_model(self, ema: bool = True) -> DiT:
        """The backbone with EMA weights (``ema=True``, used for sampling) or the raw training weights."""
        model = DiT(self.model_config)
        model.load_state_dict(self.raw["ema" if ema else "model"])
        return model.eval()


def save_checkpoint(path: str | Path, entries: dict[str, Any]) -> Path:
    """Write a checkpoint atomically (temp file + rename)."""
    missing = [k for k in _REQUIRED if k not in entries]
    if missing:
        raise ValueError(f"checkpoint entries missing: {missing}")
    atomic_torch_save(path, {"format": CHECKPOINT_FORMAT, "version": 1, **entries})
    return Path(path)


def load_checkpoint(path: str | Path, expect_method: str | None = None) -> Checkpoint:
    """Read a checkpoint safely and check it is ours (and of ``expect_method`` when given)."""
    path = Path(path)
    raw = safe_torch_load(path, "checkpoint")
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise PurrError(f"{path} is not a purrception checkpoint (made by `purr train` / `purr demo`)")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise PurrError(f"checkpoint {path} is incomplete (missing {', '.join(missing)}); use another checkpoint")
    ckpt = Checkpoint(path, raw)
    if expect_method is not None and ckpt.method_name != expect_method:
        raise PurrError(f"checkpoint {path} was trained with method {ckpt.method_name!r}, not {expect_method!r}; "
                        f"drop --method or pass a {expect_method} checkpoint")
    return ckpt
