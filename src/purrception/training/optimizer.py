"""AdamW (paper App. C) with the fused kernel wherever torch has one for the parameters' device.

The fused kernel updates each tensor in one pass with no temporaries. On CPU (torch >= 2.4) that matters: the
single-tensor implementation allocates two parameter-sized temporaries per tensor (``sqrt`` and the bias-corrected
denominator), so with a large K-way head the optimizer step, not the head, can set a training step's peak memory,
and it is slower (``bench/step.py`` measures both).
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch

__all__ = ["adamw"]

log = logging.getLogger(__name__)


def adamw(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float], eps: float,
          weight_decay: float) -> torch.optim.AdamW:
    """``torch.optim.AdamW``, fused when the parameters' device supports it, else torch's default implementation."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError) as err:  # a device or dtype without a fused kernel, or an older torch
        log.info("fused AdamW unavailable here (%s); using the default implementation", err)
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
