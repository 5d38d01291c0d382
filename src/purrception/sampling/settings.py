"""The inference knobs every method's sampler reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

__all__ = ["SamplerSettings"]


@dataclass
class SamplerSettings:
    """Inference knobs shared by all methods.

    ``tau`` (the posterior temperature of eq. 15) and ``cfg_scale`` (the guidance scale ``s`` of
    ``l_u + s (l_c - l_u)``) are constants or callables of ``t`` (schedules). ``steps`` is the number of
    integration steps T on the uniform grid ``t_i = i / T``; ``solver`` names a solver of
    :mod:`purrception.sampling.solvers`.
    """

    steps: int = 100
    tau: float | Callable[[float], float] = 1.0
    cfg_scale: float | Callable[[float], float] = 1.0
    solver: str = "euler"

    def tau_at(self, t: float) -> float:
        return float(self.tau(t)) if callable(self.tau) else float(self.tau)

    def cfg_at(self, t: float) -> float:
        return float(self.cfg_scale(t)) if callable(self.cfg_scale) else float(self.cfg_scale)
