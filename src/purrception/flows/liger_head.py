"""The K-way training loss through Liger-Kernel's fused linear cross-entropy: an optional GPU path (issue 9).

Liger fuses ``x W^T + b``, the cross-entropy (eq. 14) and the z-loss (App. D; its ``lse_square_scale``) into Triton
kernels that run chunk by chunk and compute the gradients during the forward pass, as
:func:`purrception.flows.categorical.linear_cross_entropy_and_zloss` does in plain torch. Liger handles one
classifier; the full head's ``G = p*p`` sub-position classifiers (see ``models.heads``) are ``G`` calls over the same
rows, averaged, which is the mean over all ``M G`` entries. Liger differentiates only its combined loss
``ce + z_loss_weight * z_sq``, which is exactly what training needs; ``ce`` and ``z_sq`` come back detached, for
logging.

Opt in with the method option ``head_kernel="liger"`` (``pip install liger-kernel``; CUDA GPUs). It is checked
against the naive loss and gradients on CPU through Triton's interpreter (``TRITON_INTERPRET=1``,
``tests/test_liger_head.py``); its speed on a GPU has not been measured by this project yet.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from purrception.errors import PurrError
from purrception.flows.categorical import matmul_dtype
from purrception.models.dit import DiT

__all__ = ["liger_available", "liger_cross_entropy_and_zloss"]


def liger_available() -> bool:
    """Whether the ``liger_kernel`` package is importable here."""
    return importlib.util.find_spec("liger_kernel") is not None


def _check_usable(device: torch.device) -> None:
    if not liger_available():
        raise PurrError("head_kernel='liger' needs the liger-kernel package: pip install liger-kernel "
                        "(or use head_kernel='chunked')")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise PurrError(f"head_kernel='liger' runs Triton kernels, which need a CUDA device, not {device.type}; "
                        f"use head_kernel='chunked' here (or TRITON_INTERPRET=1 to emulate them, slowly)")


def liger_cross_entropy_and_zloss(model: DiT, h: torch.Tensor, codes: torch.Tensor,
                                  z_loss_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(loss, ce, z_sq)``: ``loss = ce + z_loss_weight * z_sq`` with gradients; ``ce`` and ``z_sq`` detached
    (``z_sq`` is None when ``z_loss_weight == 0``: Liger then does not compute it)."""
    head = model.head
    if head.padding:
        raise PurrError(f"head_kernel='liger' needs a latent side that is a multiple of the patch size "
                        f"({head.side} is not a multiple of {head.patch_size}); use head_kernel='chunked'")
    _check_usable(h.device)
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    rows, targets = head.rows(h), head.row_targets(codes).long()               # (M, r), (M, G)
    groups, k = head.groups, head.out_channels
    dtype = matmul_dtype(rows)
    accum = torch.float32 if dtype in (torch.float16, torch.bfloat16) else None
    weight = head.classifier_weight.to(dtype)
    bias = None if head.classifier_bias is None else head.classifier_bias.to(dtype)
    losses, z_terms = [], []
    with torch.autocast(rows.device.type, enabled=False):
        x = rows.to(dtype)
        for g in range(groups):
            part = slice(g * k, (g + 1) * k)
            out = liger_fused_linear_cross_entropy(x, weight[part], targets[:, g].contiguous(),
                                                   None if bias is None else bias[part],
                                                   lse_square_scale=z_loss_weight, return_z_loss=True,
                                                   accum_dtype=accum)
            loss_g, z_g = (out.loss, out.z_loss) if hasattr(out, "z_loss") else out[:2]
            losses.append(loss_g.float())
            z_terms.append(z_g.detach().float())
    loss = torch.stack(losses).mean()
    z_weighted = torch.stack(z_terms).mean()
    z_sq = z_weighted / z_loss_weight if z_loss_weight > 0 else None
    return loss, (loss.detach() - z_weighted), z_sq
