"""Sampling with some codes known: the clamped fields and the integration shared by the continuous methods.

A known position ``i`` with code ``c_i`` is carried along its own conditional path,
``z_t^i = t E[c_i] + (1 - t) z_0^i`` (the linear path of paper Sec. 2.2, App. B), while the model fills the rest:

- an endpoint predictor (Purrception, CFM-endpoint) has its predicted endpoint clamped to ``mu^i = E[c_i]``
  (for Purrception the posterior collapses to the one-hot of ``c_i``, so eq. 13's mean is ``E[c_i]``); its velocity
  ``(mu - z_t) / (1 - t)`` (eq. 7) at a point of that path is ``E[c_i] - z_0^i``, and its last step is the jump
  ``z^i <- E[c_i]``;
- a velocity predictor (CFM) has its velocity replaced by the conditional one of that path, ``E[c_i] - z_0^i``
  (paper eq. 5's target ``u_t = z_1 - z_0``), a constant.

Either way every solver (Euler, Heun, midpoint, adaptive) evaluates only points of the path at the known positions
and moves along it, so the known positions stay on it up to float rounding whatever the solver, and their final
codes are ``c_i``. The model still sees the whole state, so the unknown positions are generated conditioned on the
known ones.

Starting later (variations, SDEdit for flows): with ``first_step = s`` of a ``T``-step grid ``t_i = i / T``, the
state starts at ``t_s = s / T`` as ``z_{t_s} = t_s E[c] + (1 - t_s) z_0`` at every position (a draw from the
path given the source codes) and is integrated over the grid's last ``T - s`` steps. The integration runs on
``u in [0, 1]`` with ``t = t_s + (1 - t_s) u`` and ``dz/du = (1 - t_s) v(z, t)``, so the solvers of
:mod:`purrception.sampling.solvers` are used unchanged: ``T - s`` steps in ``u`` land on the grid times
``t_s, t_{s+1}, ..., 1``; with ``s = 0`` this is exactly ordinary sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from purrception.errors import PurrError
from purrception.sampling.solvers import EndpointFn, StepCallback, VelocityFn, integrate

__all__ = ["KnownCodes", "clamped_endpoint_fields", "clamped_velocity_fields", "start_state", "integrate_from"]


@dataclass(frozen=True)
class KnownCodes:
    """Source codes and which of them to keep.

    Attributes:
        codes: the source codes ``(B, h, w)`` (int64); where ``keep`` is false they only set the starting point
            of a later start (``first_step > 0``).
        keep: ``(B, h, w)`` bool, true where the code is known and kept.
    """

    codes: torch.Tensor
    keep: torch.Tensor

    def __post_init__(self) -> None:
        if self.codes.ndim != 3 or tuple(self.keep.shape) != tuple(self.codes.shape):
            raise PurrError(f"known codes {tuple(self.codes.shape)} and keep mask {tuple(self.keep.shape)} must both "
                            "be (batch, rows, cols)")
        if self.keep.dtype != torch.bool:
            raise PurrError(f"the keep mask must be boolean, got {self.keep.dtype}")

    def check(self, noise: torch.Tensor) -> None:
        """Refuse codes whose grid is not the noise's ``(B, ., h, w)``."""
        if (noise.shape[0], *noise.shape[2:]) != tuple(self.codes.shape):
            raise PurrError(f"known codes {tuple(self.codes.shape)} do not fit noise {tuple(noise.shape)}; they must "
                            "share batch size and grid")

    def latents(self, codebook: torch.Tensor) -> torch.Tensor:
        """``E[c]`` ``(B, d, h, w)``."""
        return codebook[self.codes.long()].permute(0, 3, 1, 2)


def clamped_endpoint_fields(mu: EndpointFn, target: torch.Tensor,
                            keep: torch.Tensor) -> tuple[VelocityFn, EndpointFn]:
    """``(v, mu')`` with ``mu' = E[c]`` where ``keep`` ``(B, 1, h, w)`` and ``mu`` elsewhere, ``v = (mu' - z) / (1 -
    t)`` (eq. 7); ``target`` is ``E[c]`` ``(B, d, h, w)``. With nothing kept these are the method's own fields."""

    def clamped(z: torch.Tensor, t: float) -> torch.Tensor:
        return torch.where(keep, target, mu(z, t))

    return (lambda z, t: (clamped(z, t) - z) / (1.0 - t)), clamped


def clamped_velocity_fields(v: VelocityFn, velocity: torch.Tensor, keep: torch.Tensor) -> VelocityFn:
    """``v`` with ``velocity`` ``(B, d, h, w)`` (the conditional path's, ``E[c] - z_0``) where ``keep``."""
    return lambda z, t: torch.where(keep, velocity, v(z, t))


def start_state(noise: torch.Tensor, target: torch.Tensor, first_step: int, steps: int) -> torch.Tensor:
    """``z_{t_s} = t_s E[c] + (1 - t_s) z_0`` with ``t_s = first_step / steps``; exactly ``noise`` at 0."""
    if first_step == 0:
        return noise
    t0 = first_step / steps
    return t0 * target + (1.0 - t0) * noise


def integrate_from(v: VelocityFn, mu: EndpointFn | None, z_start: torch.Tensor, steps: int, first_step: int,
                   solver: str, callback: StepCallback | None = None) -> torch.Tensor:
    """Integrate the grid's last ``steps - first_step`` steps from ``z_start`` at ``t_s = first_step / steps`` to
    ``t = 1`` (module docstring); ``callback`` sees ``(t, z_t)`` at ``t_s, ..., t_{T-1}``. ``first_step = 0`` is
    :func:`~purrception.sampling.solvers.integrate` itself."""
    if not 0 <= first_step < steps:
        raise PurrError(f"`first_step` must be in 0 .. `sample_steps` - 1 = {steps - 1}, got {first_step}")
    if first_step == 0:
        return integrate(v, z_start, steps, solver, endpoint=mu, callback=callback)
    t0 = first_step / steps
    scale = 1.0 - t0

    def t_of(u: float) -> float:
        return t0 + scale * u

    v_u = lambda z, u: scale * v(z, t_of(u))  # noqa: E731
    mu_u = None if mu is None else (lambda z, u: mu(z, t_of(u)))
    cb_u = None if callback is None else (lambda u, z: callback(t_of(u), z))
    return integrate(v_u, z_start, steps - first_step, solver, endpoint=mu_u, callback=cb_u)
