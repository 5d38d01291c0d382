"""Classifier-free guidance on the backbone's final features.

Every method's output head is affine in the final features ``h``, so guiding the features,
``h_cfg = h_u + s (h_c - h_u)``, gives exactly ``head(h_cfg) = l_u + s (l_c - l_u)`` (paper: CFG on logits,
docs/ARCHITECTURE.md) while the head — the K-way classifier for Purrception — runs once instead of twice.
Conditional and unconditional passes share one batched forward.
"""

from __future__ import annotations

import torch

from purrception.models.dit import DiT

__all__ = ["guided_features"]


def guided_features(model: DiT, x: torch.Tensor, t: float | torch.Tensor, y: torch.Tensor,
                    cfg_scale: float) -> torch.Tensor:
    """Final features ``(B, N, hidden)`` of ``model`` at ``(x, t, y)`` guided with scale ``cfg_scale``.

    ``cfg_scale == 1`` is the plain conditional model (one forward pass of batch B); otherwise one forward
    pass of batch 2B with labels ``[y, null]``.
    """
    b = x.shape[0]
    t_vec = torch.as_tensor(t, dtype=torch.float32, device=x.device)
    if t_vec.ndim == 0:                                    # one time for the whole batch (the sampling grid)
        t_vec = t_vec.expand(b)
    if cfg_scale == 1.0:
        return model.features(x, t_vec, y)
    null = torch.full_like(y, model.null_class)
    h = model.features(torch.cat([x, x]), torch.cat([t_vec, t_vec]), torch.cat([y, null]))
    h_cond, h_uncond = h[:b], h[b:]
    return h_uncond + cfg_scale * (h_cond - h_uncond)
