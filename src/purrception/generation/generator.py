"""What a generator is, wherever it was loaded from: a method with its codebook, a network and its classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from purrception.checkpoint import Checkpoint
from purrception.flows.base import FlowMethod
from purrception.hashing import sha256_file

__all__ = ["Generator"]


@dataclass(frozen=True)
class Generator:
    """What an evaluation samples from: a method with its codebook, its network, the number of classes, and what
    they were loaded from (recorded in the report's ``checkpoint`` entry: path, step, sha256, method, weights)."""

    method: FlowMethod
    model: torch.nn.Module
    num_classes: int
    source: dict[str, Any]

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, ema: bool = True) -> "Generator":
        """A training checkpoint's EMA (or raw) weights."""
        return cls(ckpt.build_method(), ckpt.build_model(ema=ema), ckpt.num_classes,
                   {"path": str(ckpt.path), "step": ckpt.step, "sha256": sha256_file(ckpt.path, length=16),
                    "method": ckpt.method_name, "weights": "ema" if ema else "raw", "num_classes": ckpt.num_classes})
