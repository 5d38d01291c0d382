"""Purrception: variational flow matching with a categorical posterior over codebook indices (paper Sec. 3)."""

from __future__ import annotations

from typing import Any

import torch

from purrception.errors import PurrError
from purrception.flows.base import (
    FlowMethod,
    LossOutput,
    Randomness,
    drop_labels,
    endpoint_velocity,
    make_path_sample,
    register_method,
)
from purrception.flows.categorical import cross_entropy_and_zloss, logits_from_features, posterior_mean
from purrception.flows.known import clamped_endpoint_fields
from purrception.flows.liger_head import liger_cross_entropy_and_zloss
from purrception.models.dit import DiT
from purrception.sampling.guidance import guided_features
from purrception.sampling.settings import SamplerSettings
from purrception.sampling.solvers import EndpointFn, VelocityFn

__all__ = ["Purrception", "purrception_velocity"]


#: Implementations of the training loss (see :class:`Purrception`).
HEAD_KERNELS = ("chunked", "liger")

#: ``v = (mu - z_t) / (1 - t)`` (paper eqs. 7 and 13); ``t < 1`` on the sampling grid.
purrception_velocity = endpoint_velocity


@register_method
class Purrception(FlowMethod):
    """Cross-entropy over codebook indices (eq. 14) + z-loss (App. D); velocity from the posterior mean (eq. 13).

    Args:
        codebook: ``E``, ``(K, d)``.
        label_dropout: probability of the null class during training (trains CFG).
        z_loss_weight: weight of ``mean(logsumexp(logits)^2)``; the paper uses ``1e-5``.
        head_kernel: how training computes the K-way loss: ``"chunked"`` (``flows.categorical``, any device) or
            ``"liger"`` (Liger-Kernel's fused Triton kernel, CUDA; ``flows.liger_head``). Sampling is the same.
    """

    name = "purrception"
    has_endpoint = True
    has_posterior = True

    def __init__(self, codebook: torch.Tensor, label_dropout: float = 0.1, z_loss_weight: float = 1e-5,
                 head_kernel: str = "chunked"):
        super().__init__(codebook, label_dropout)
        if head_kernel not in HEAD_KERNELS:
            raise PurrError(f"unknown `head_kernel` {head_kernel!r}; choose from {', '.join(HEAD_KERNELS)}")
        self.z_loss_weight = z_loss_weight
        self.head_kernel = head_kernel

    def options(self) -> dict[str, Any]:
        return {**super().options(), "z_loss_weight": self.z_loss_weight, "head_kernel": self.head_kernel}

    def backbone_io(self) -> dict[str, int]:
        return {"in_channels": self.latent_dim, "out_channels": self.codebook_size, "input_vocab_size": 0}

    def loss(self, model: DiT, codes: torch.Tensor, y: torch.Tensor, generator: Randomness = None) -> LossOutput:
        """Paper App. B training step: ``z_t = t E[c] + (1 - t) z0``; CE(c, pi(z_t)) + lambda_z logsumexp^2."""
        path = make_path_sample(self.codebook, codes, generator)
        y = drop_labels(y, self.label_dropout, model.null_class, generator)
        h = model.features(path.z_t, path.t, y)
        if self.head_kernel == "liger":
            loss, ce, z_sq = liger_cross_entropy_and_zloss(model, h, codes, self.z_loss_weight)
            return LossOutput(loss, {"ce": ce.item(), **({} if z_sq is None else {"z_loss": z_sq.item()})})
        ce, z_sq = cross_entropy_and_zloss(model, h, codes, self.z_loss_weight)
        loss = ce + self.z_loss_weight * z_sq
        return LossOutput(loss, {"ce": ce.item(), "z_loss": z_sq.item()})

    def endpoint(self, model: DiT, z: torch.Tensor, t: float, y: torch.Tensor, tau: float,
                 cfg_scale: float) -> torch.Tensor:
        """Posterior mean ``mu = softmax(l / tau) E`` at ``(z, t)`` with CFG on the logits (eqs. 13, 15); ``tau > 0``
        (``SamplerSettings`` holds only such temperatures)."""
        return posterior_mean(model, guided_features(model, z, t, y, cfg_scale), self.codebook, tau)

    def posterior_logits(self, model: DiT, z: torch.Tensor, t: float, y: torch.Tensor,
                         cfg_scale: float) -> torch.Tensor:
        """Guided logits ``l`` ``(B, h, w, K)`` of the posterior ``pi = softmax(l / tau)`` (eq. 15), materialised."""
        return logits_from_features(model, guided_features(model, z, t, y, cfg_scale))

    def known_fields(self, model: DiT, y: torch.Tensor, sampler: SamplerSettings, target: torch.Tensor,
                     keep: torch.Tensor, noise: torch.Tensor) -> tuple[VelocityFn, EndpointFn | None]:
        """Known positions: the posterior is the one-hot of the known code, so ``mu = E[c]`` there (eq. 13)."""
        return clamped_endpoint_fields(self.fields(model, y, sampler)[1], target, keep)
