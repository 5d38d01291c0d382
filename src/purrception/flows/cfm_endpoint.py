"""CFM-endpoint (paper Sec. 4.1, following SiT): regress the endpoint ``z1`` with MSE, sample with eq. 7."""

from __future__ import annotations

import torch

from purrception.flows.base import PathSample, endpoint_velocity, register_method
from purrception.flows.cfm import RegressionFlow
from purrception.flows.known import clamped_endpoint_fields
from purrception.models.dit import DiT
from purrception.sampling.settings import SamplerSettings
from purrception.sampling.solvers import EndpointFn, VelocityFn

__all__ = ["CFMEndpoint"]


@register_method
class CFMEndpoint(RegressionFlow):
    """Predict ``z1_hat = f(z_t, t, y)`` (MSE to ``z1``); velocity ``(z1_hat - z_t) / (1 - t)``.

    This is Purrception's velocity (eq. 7 / 13) with the posterior mean replaced by a regressed point estimate,
    which isolates the effect of the categorical objective (paper Sec. 4.1). As an endpoint predictor it gives
    solvers ``mu`` too, so the last step is the jump ``z <- z1_hat`` and ``1 / (1 - t)`` is never taken at ``t = 1``.
    """

    name = "cfm-endpoint"
    has_endpoint = True

    def target(self, path: PathSample) -> torch.Tensor:
        return path.z1

    def velocity_from_output(self, out: torch.Tensor, z: torch.Tensor, t: float) -> torch.Tensor:
        return endpoint_velocity(out, z, t)

    def endpoint(self, model: DiT, z: torch.Tensor, t: float, y: torch.Tensor, tau: float,
                 cfg_scale: float) -> torch.Tensor:
        """The guided endpoint prediction ``z1_hat`` ``(B, d, h, w)``."""
        return self.output(model, z, t, y, tau, cfg_scale)

    def known_fields(self, model: DiT, y: torch.Tensor, sampler: SamplerSettings, target: torch.Tensor,
                     keep: torch.Tensor, noise: torch.Tensor) -> tuple[VelocityFn, EndpointFn | None]:
        """Known positions: the endpoint prediction is replaced by ``E[c]`` (flows/known.py)."""
        return clamped_endpoint_fields(self.fields(model, y, sampler)[1], target, keep)
