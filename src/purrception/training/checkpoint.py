"""Checkpoints that carry everything needed to sample: configs, method, tokenizer identity and codebook.

A checkpoint is a dict of tensors and plain values saved with ``torch.save`` and read back with
``weights_only=True`` (no code from the file runs). ``sample`` and ``eval`` need only its path.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from purrception.errors import PurrError
from purrception.flows.base import FlowMethod, get_method
from purrception.io import atomic_torch_save, safe_torch_load
from purrception.models.dit import DiT, DiTConfig
from purrception.tokenizers.base import TokenizerIdentity

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "save_checkpoint", "load_checkpoint", "capture_rng_state",
           "restore_rng_state"]

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
    def train_seconds(self) -> float | None:
        """Seconds spent in training steps up to this checkpoint, summed over resumes (None in older checkpoints)."""
        value = self.raw.get("train_seconds")
        return None if value is None else float(value)

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


def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA, for a CUDA ``device``) RNG states as checkpoint-safe values.

    The training loop draws its noise from per-slot generators (``training.data.slot_generator``), so these global
    states do not affect the trained weights; they are stored so that a resumed process continues any other random
    stream (user hooks, libraries) where it stopped.
    """
    version, words, gauss = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, torch.tensor(words, dtype=torch.int64), gauss],
        "numpy": {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, words, gauss = state["python"]
    random.setstate((int(version), tuple(int(w) for w in words.tolist()), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
