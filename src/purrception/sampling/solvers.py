"""ODE solvers over a plain velocity callable ``v(z, t)``, integrating ``dz/dt = v`` from ``t = 0`` to ``1``.

The grid is uniform with exactly ``steps`` steps, ``t_i = i / T`` (paper App. B integrates with Euler on it).

**The last step.** For Purrception the velocity is ``v = (mu(z, t) - z) / (1 - t)`` (eqs. 7, 13): stiff as
``t -> 1`` and undefined at ``t = 1``. A method that exposes its endpoint prediction ``mu(z, t)`` passes it as
``endpoint``, and every solver then takes its last step, from ``t_{T-1}`` to ``1``, as the jump ``z <- mu(z,
t_{T-1})`` (for Euler this is the same update, ``z + (1/T) v = mu``, without the division). No solver ever
evaluates ``v`` at ``t = 1``: without an endpoint, Heun's last step is an Euler step, the midpoint rule only
evaluates at ``t_i + h/2``, and the adaptive solvers stop at ``t_{T-1}`` and jump when they can.

Function evaluations (NFE) with ``T`` steps: Euler ``T``; Heun ``2T - 1``; midpoint ``2T - 1`` with an endpoint
(``2T`` without); adaptive solvers (``dopri5``, ``bosh3``, ``adaptive_heun`` through the optional
``torchdiffeq``) as many as their error control needs, plus one for the jump.

Solver names: a registry key, optionally ``name:tol`` for the adaptive ones (``dopri5:1e-4`` sets
``rtol = atol = 1e-4``; default ``1e-3``).
"""

from __future__ import annotations

import abc
import importlib
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from purrception.errors import PurrError

__all__ = ["VelocityFn", "EndpointFn", "StepCallback", "Solver", "FixedGridSolver", "AdaptiveSolver", "SOLVERS",
           "euler_step", "heun_step", "midpoint_step", "parse_solver", "check_solver", "integrate", "DEFAULT_TOLERANCE"]

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]
#: ``mu(z, t)``: the method's prediction of the endpoint ``z_1`` at ``(z, t)`` (eq. 13's posterior mean).
EndpointFn = Callable[[torch.Tensor, float], torch.Tensor]
#: ``callback(t_i, z)``: called with the state at every grid time ``t_i = i / T``, ``i = 0 .. T-1``.
StepCallback = Callable[[float, torch.Tensor], None]
StepFn = Callable[[VelocityFn, torch.Tensor, float, float], torch.Tensor]

DEFAULT_TOLERANCE = 1e-3


def euler_step(v: VelocityFn, z: torch.Tensor, t: float, h: float) -> torch.Tensor:
    """Explicit Euler: ``z + h v(z, t)`` (paper App. B, Fig. 6)."""
    return z + h * v(z, t)


def heun_step(v: VelocityFn, z: torch.Tensor, t: float, h: float) -> torch.Tensor:
    """Heun (explicit trapezoid, 2nd order): ``k1 = v(z, t)``, ``k2 = v(z + h k1, t + h)``, ``z + h (k1 + k2) / 2``."""
    k1 = v(z, t)
    k2 = v(z + h * k1, t + h)
    return z + 0.5 * h * (k1 + k2)


def midpoint_step(v: VelocityFn, z: torch.Tensor, t: float, h: float) -> torch.Tensor:
    """Explicit midpoint (2nd order): ``z + h v(z + h/2 v(z, t), t + h/2)``."""
    return z + h * v(z + 0.5 * h * v(z, t), t + 0.5 * h)


class Solver(abc.ABC):
    """Integrates ``dz/dt = v`` on ``[0, 1]`` with ``steps`` grid steps (see the module docstring)."""

    @abc.abstractmethod
    def solve(self, v: VelocityFn, z0: torch.Tensor, steps: int, endpoint: Optional[EndpointFn],
              callback: Optional[StepCallback], option: str) -> torch.Tensor:
        """The state at ``t = 1``; ``option`` is the text after ``:`` in the solver name (``""`` if none)."""

    @abc.abstractmethod
    def check_option(self, name: str, option: str) -> None:
        """Refuse an ``option`` (the text after ``:`` in the solver name ``name``) this solver cannot take."""


@dataclass(frozen=True)
class FixedGridSolver(Solver):
    """A one-step method on the uniform grid; ``last_step`` replaces ``step`` on ``[t_{T-1}, 1]`` when no endpoint
    is given (so that no evaluation lands on ``t = 1``)."""

    step: StepFn
    last_step: StepFn

    def check_option(self, name: str, option: str) -> None:
        if option:
            raise PurrError(f"`solver` {name!r} is a fixed-grid solver and takes no tolerance (got ':{option}'); its "
                            "grid is set by `sample_steps`")

    def solve(self, v: VelocityFn, z0: torch.Tensor, steps: int, endpoint: Optional[EndpointFn],
              callback: Optional[StepCallback], option: str) -> torch.Tensor:
        z, h = z0, 1.0 / steps
        for i in range(steps):
            t = i / steps
            if callback is not None:
                callback(t, z)
            if i < steps - 1:
                z = self.step(v, z, t, h)
            elif endpoint is not None:
                z = endpoint(z, t)
            else:
                z = self.last_step(v, z, t, h)
        return z


@dataclass(frozen=True)
class AdaptiveSolver(Solver):
    """An adaptive Runge-Kutta method of ``torchdiffeq.odeint`` (optional dependency).

    With an endpoint it integrates ``[0, t_{T-1}]`` and jumps; without one it integrates ``[0, 1]``. ``steps``
    only places the jump (and the callback times: the states there come from the solver's dense output).
    """

    method: str

    def tolerance(self, option: str) -> float:
        """``rtol = atol`` from the option text (``""``: :data:`DEFAULT_TOLERANCE`)."""
        try:
            tol = float(option) if option else DEFAULT_TOLERANCE
        except ValueError:
            tol = float("nan")
        if not (math.isfinite(tol) and tol > 0):
            raise PurrError(f"`solver` tolerance must be a number > 0, e.g. {self.method}:1e-4; got {option!r}")
        return tol

    def check_option(self, name: str, option: str) -> None:
        self.tolerance(option)

    def solve(self, v: VelocityFn, z0: torch.Tensor, steps: int, endpoint: Optional[EndpointFn],
              callback: Optional[StepCallback], option: str) -> torch.Tensor:
        try:
            odeint = importlib.import_module("torchdiffeq").odeint
        except ImportError:
            raise PurrError(f"`solver` {self.method!r} needs torchdiffeq: pip install torchdiffeq") from None
        tol = self.tolerance(option)
        t_end = (steps - 1) / steps if endpoint is not None else 1.0
        grid = [i / steps for i in range(steps)] if callback is not None else [0.0]
        if grid[-1] < t_end:
            grid.append(t_end)
        times = torch.tensor(grid, dtype=torch.float64 if z0.dtype == torch.float64 else torch.float32,
                             device=z0.device)
        if len(grid) == 1:  # steps == 1 with an endpoint: nothing to integrate before the jump
            states = z0.unsqueeze(0)
        else:
            # step_t: the last step lands on t_end instead of stepping past it and interpolating back
            states = odeint(lambda t, z: v(z, float(t)), z0, times, rtol=tol, atol=tol, method=self.method,
                            options={"step_t": times[-1:]})
        if callback is not None:
            for i in range(steps):
                callback(i / steps, states[i])
        z = states[-1]
        return endpoint(z, t_end) if endpoint is not None else z


SOLVERS: dict[str, Solver] = {
    "euler": FixedGridSolver(euler_step, euler_step),
    "heun": FixedGridSolver(heun_step, euler_step),
    "midpoint": FixedGridSolver(midpoint_step, midpoint_step),
    "dopri5": AdaptiveSolver("dopri5"),
    "bosh3": AdaptiveSolver("bosh3"),
    "adaptive_heun": AdaptiveSolver("adaptive_heun"),
}


def parse_solver(spec: str) -> tuple[Solver, str]:
    """``"name"`` or ``"name:option"`` -> the registered solver and its option string."""
    if not isinstance(spec, str):
        raise PurrError(f"`solver` must be a solver name like 'euler' or 'dopri5:1e-4', got {spec!r}")
    name, _, option = spec.partition(":")
    if name not in SOLVERS:
        raise PurrError(f"unknown `solver` {name!r}; choose one of: {', '.join(SOLVERS)} (adaptive ones as NAME:TOL)")
    return SOLVERS[name], option


def check_solver(spec: str) -> str:
    """``spec`` if it names a registered solver with an option that solver takes (``NAME``, or ``NAME:TOL`` for the
    adaptive ones, ``TOL > 0``); the optional ``torchdiffeq`` is needed only when an adaptive solver runs.

    Raises:
        PurrError: naming ``solver``.
    """
    solver, option = parse_solver(spec)
    solver.check_option(spec.partition(":")[0], option)
    return spec


def integrate(v: VelocityFn, z0: torch.Tensor, steps: int, solver: str = "euler",
              endpoint: Optional[EndpointFn] = None, callback: Optional[StepCallback] = None) -> torch.Tensor:
    """Integrate ``v`` from noise ``z0`` at ``t = 0`` to ``t = 1``.

    Args:
        v: velocity ``v(z, t)``.
        z0: the state at ``t = 0``.
        steps: grid steps ``T`` (``t_i = i / T``).
        solver: a :data:`SOLVERS` name, optionally ``name:tol`` for adaptive ones.
        endpoint: ``mu(z, t)`` if the velocity is ``(mu - z) / (1 - t)``; the last step is then ``z <- mu``.
        callback: called with ``(t_i, z_{t_i})`` for ``i = 0 .. T-1``.

    Returns:
        The state at ``t = 1``.
    """
    if steps <= 0:
        raise PurrError(f"`steps` must be a positive integer, got {steps}")
    chosen, option = parse_solver(check_solver(solver))
    return chosen.solve(v, z0, steps, endpoint, callback, option)
