"""ODE solvers over a plain velocity callable ``v(z, t)``, integrating ``dz/dt = v`` from ``t = 0`` to ``1``.

The grid is uniform with exactly ``steps`` steps: ``t_i = i / T`` (paper App. B, Euler integration).
"""

from __future__ import annotations

from typing import Callable

import torch

from purrception.errors import PurrError

__all__ = ["VelocityFn", "euler", "SOLVERS", "integrate"]

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]


def euler(v: VelocityFn, z0: torch.Tensor, steps: int) -> torch.Tensor:
    """Explicit Euler: ``z_{s+1} = z_s + v(z_s, s/T) / T`` (paper App. B, Fig. 6)."""
    z = z0
    for s in range(steps):
        z = z + v(z, s / steps) / steps
    return z


SOLVERS: dict[str, Callable[[VelocityFn, torch.Tensor, int], torch.Tensor]] = {"euler": euler}


def integrate(v: VelocityFn, z0: torch.Tensor, steps: int, solver: str = "euler") -> torch.Tensor:
    """Integrate ``v`` from noise ``z0`` at ``t = 0`` to ``t = 1`` with ``solver`` and ``steps`` steps."""
    if steps <= 0:
        raise PurrError(f"steps must be a positive integer, got {steps}")
    if solver not in SOLVERS:
        raise PurrError(f"unknown solver {solver!r}; choose one of: {', '.join(SOLVERS)}")
    return SOLVERS[solver](v, z0, steps)
