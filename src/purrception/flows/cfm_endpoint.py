"""CFM-endpoint (paper Sec. 4.1, following SiT): regress the endpoint ``z1`` with MSE, sample with eq. 7."""

from __future__ import annotations

import torch

from purrception.flows.base import PathSample, register_method
from purrception.flows.cfm import RegressionFlow
from purrception.flows.purrception import purrception_velocity

__all__ = ["CFMEndpoint"]


@register_method
class CFMEndpoint(RegressionFlow):
    """Predict ``z1_hat = f(z_t, t, y)`` (MSE to ``z1``); velocity ``(z1_hat - z_t) / (1 - t)``.

    This is Purrception's velocity (eq. 7 / 13) with the posterior mean replaced by a regressed point estimate,
    which isolates the effect of the categorical objective (paper Sec. 4.1).
    """

    name = "cfm-endpoint"

    def target(self, path: PathSample) -> torch.Tensor:
        return path.z1

    def velocity_from_output(self, out: torch.Tensor, z: torch.Tensor, t: float) -> torch.Tensor:
        return purrception_velocity(out, z, t)
