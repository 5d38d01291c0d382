"""Continuous flow matching baselines: regress a ``d``-channel output with MSE, integrate its velocity, snap.

Two targets share everything but two lines, so they share one base class, :class:`RegressionFlow`:

- :class:`CFM` (Lipman et al. 2023; paper eq. 5): the backbone predicts the velocity, target ``u_t = z1 - z0``
  (the conditional field of the linear path), and the velocity *is* the output.
- :class:`~purrception.flows.cfm_endpoint.CFMEndpoint` (paper Sec. 4.1, SiT-style): the backbone predicts the
  endpoint ``z1``, and the velocity is ``(z1_hat - z_t) / (1 - t)`` (eq. 7 with a point estimate of ``mu``).

Both are trained on the same path (:func:`~purrception.flows.base.make_path_sample`) and sampled like
Purrception: Euler from ``z0 = noise`` to ``t = 1``, then the nearest code. The loss is the mean over elements of
the squared error (eq. 5's squared norm divided by ``d h w``, a constant factor). There are no logits, so a
temperature other than 1 is an error rather than silently ignored.
"""

from __future__ import annotations

import abc

import torch

from purrception.flows.base import (
    FlowMethod,
    LossOutput,
    PathSample,
    Randomness,
    drop_labels,
    make_path_sample,
    register_method,
)
from purrception.flows.known import clamped_velocity_fields
from purrception.models.dit import DiT
from purrception.sampling.guidance import guided_features
from purrception.sampling.settings import SamplerSettings
from purrception.sampling.solvers import EndpointFn, VelocityFn

__all__ = ["RegressionFlow", "CFM", "regression_output"]


def regression_output(model: DiT, h: torch.Tensor) -> torch.Tensor:
    """Final features ``(B, N, hidden)`` -> the ``d``-channel head output as latents ``(B, d, H, W)``."""
    return model.unpatchify(model.head(h), model.config.out_channels).permute(0, 3, 1, 2).float()


class RegressionFlow(FlowMethod):
    """A method whose backbone regresses a latent-shaped target with MSE; subclasses name the target.

    Args:
        codebook: ``E``, ``(K, d)``.
        label_dropout: probability of the null class during training (trains CFG).
    """

    #: no logits, so no temperature: ``check_sampler`` refuses a tau other than 1, and studies sample at 1
    has_temperature = False

    @abc.abstractmethod
    def target(self, path: PathSample) -> torch.Tensor:
        """The regression target ``(B, d, h, w)`` for one path sample."""

    @abc.abstractmethod
    def velocity_from_output(self, out: torch.Tensor, z: torch.Tensor, t: float) -> torch.Tensor:
        """The velocity ``(B, d, h, w)`` at ``(z, t)`` given the (guided) backbone output ``out``."""

    def backbone_io(self) -> dict[str, int]:
        return {"in_channels": self.latent_dim, "out_channels": self.latent_dim, "input_vocab_size": 0}

    def loss(self, model: DiT, codes: torch.Tensor, y: torch.Tensor, generator: Randomness = None) -> LossOutput:
        """``mean ||f(z_t, t, y) - target||^2`` on the shared path (eq. 5 for CFM)."""
        path = make_path_sample(self.codebook, codes, generator)
        y = drop_labels(y, self.label_dropout, model.null_class, generator)
        out = regression_output(model, model.features(path.z_t, path.t, y))
        mse = (out - self.target(path)).pow(2).mean()
        return LossOutput(mse, {"mse": mse.item()})

    def output(self, model: DiT, z: torch.Tensor, t: float, y: torch.Tensor, tau: float,
               cfg_scale: float) -> torch.Tensor:
        """Guided backbone output ``(B, d, h, w)``: CFG mixes the features, the affine head then runs once. ``tau``
        is always 1 here (``has_temperature`` is false, so :meth:`~FlowMethod.check_sampler` refuses any other)."""
        return regression_output(model, guided_features(model, z, t, y, cfg_scale))

    def velocity(self, model: DiT, z: torch.Tensor, t: float, y: torch.Tensor, tau: float,
                 cfg_scale: float) -> torch.Tensor:
        """Guided velocity at ``(z, t)``."""
        return self.velocity_from_output(self.output(model, z, t, y, tau, cfg_scale), z, t)


@register_method
class CFM(RegressionFlow):
    """Conditional flow matching (paper eq. 5): predict ``u_t(z_t | z1) = z1 - z0`` and integrate it."""

    name = "cfm"

    def target(self, path: PathSample) -> torch.Tensor:
        return path.z1 - path.z0

    def velocity_from_output(self, out: torch.Tensor, z: torch.Tensor, t: float) -> torch.Tensor:
        return out

    def known_fields(self, model: DiT, y: torch.Tensor, sampler: SamplerSettings, target: torch.Tensor,
                     keep: torch.Tensor, noise: torch.Tensor) -> tuple[VelocityFn, EndpointFn | None]:
        """Known positions: the velocity is the straight path's own, ``u = E[c] - z0`` (eq. 5's target), so
        ``z_t = t E[c] + (1 - t) z0`` there at every ``t``."""
        return clamped_velocity_fields(self.fields(model, y, sampler)[0], target - noise, keep), None
