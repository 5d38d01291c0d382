"""The K-way categorical head: logits, cross-entropy with z-loss, and the posterior mean over the codebook.

``logits = head(h)`` for final features ``h``; the posterior is ``pi = softmax(logits / tau)`` (paper eq. 15) and
its mean ``mu = pi E`` (eq. 13). These are the reference implementations: they materialise all ``B x h x w x K``
logits in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from purrception.models.dit import DiT

__all__ = ["logits_from_features", "cross_entropy_and_zloss", "posterior_mean"]


def logits_from_features(model: DiT, h: torch.Tensor) -> torch.Tensor:
    """Final features ``(B, N, hidden)`` -> logits ``(B, H, W, K)`` in float32."""
    return model.unpatchify(model.head(h), model.config.out_channels).float()


def cross_entropy_and_zloss(model: DiT, h: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy to ``codes`` ``(B, H, W)`` (eq. 14) and mean squared log-partition (App. D)."""
    logits = logits_from_features(model, h)
    flat = logits.reshape(-1, logits.shape[-1])
    ce = F.cross_entropy(flat, codes.reshape(-1).long())
    z_sq = torch.logsumexp(flat, dim=-1).pow(2).mean()
    return ce, z_sq


def posterior_mean(model: DiT, h: torch.Tensor, codebook: torch.Tensor, tau: float) -> torch.Tensor:
    """``mu = softmax(logits / tau) @ E`` (eqs. 13 and 15) as latents ``(B, d, H, W)``."""
    pi = torch.softmax(logits_from_features(model, h) / tau, dim=-1)
    return (pi @ codebook.float()).permute(0, 3, 1, 2)
