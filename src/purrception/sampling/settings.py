"""The inference knobs every method's sampler reads, and the one place they are checked."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Callable

from purrception.errors import PurrError, positive_int
from purrception.sampling.schedules import Schedule, as_spec, parse_schedule
from purrception.sampling.solvers import check_solver

__all__ = ["SamplerSettings", "Knob"]

#: a temperature or guidance scale as given: a number, a :class:`Schedule`, its spec string (``"linear:1.2:0.6"``),
#: or any other callable of ``t`` (library use only: such a callable is not checked and cannot be recorded)
Knob = float | Schedule | str | Callable[[float], float]


def _knob(value: Any, name: str, positive: bool) -> float | Schedule | Callable[[float], float]:
    """A constant (float), a :class:`Schedule` (spec strings parsed), or an unchecked callable."""
    what = "a number > 0" if positive else "a finite number"
    if isinstance(value, str):
        value = parse_schedule(value, f"`{name}`")
    if isinstance(value, Schedule):
        ends = (value.start, value.end)
        if not all(math.isfinite(v) and (v > 0 or not positive) for v in ends):
            raise PurrError(f"`{name}` must be {what} at both ends of its schedule, got {value.spec}")
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
        if not (math.isfinite(number) and (number > 0 or not positive)):
            raise PurrError(f"`{name}` must be {what} or a schedule like linear:1.2:0.6, got {value!r}")
        return number
    if callable(value):
        return value
    raise PurrError(f"`{name}` must be {what}, a schedule like linear:1.2:0.6, or a callable of t, got {value!r}")


@dataclass(frozen=True)
class SamplerSettings:
    """Inference knobs shared by all methods, checked when made.

    Attributes:
        sample_steps: the number of integration steps T on the uniform grid ``t_i = i / T``; a positive ``int``.
        tau: the posterior temperature of eq. 15: a number > 0, or a :class:`Schedule` of ``t`` (or its spec string,
            parsed here) whose ends are both > 0. Methods without logits (``FlowMethod.has_temperature``) take only
            ``1``; ``FlowMethod.check_sampler`` says so.
        cfg_scale: the guidance scale ``s`` of ``l_u + s (l_c - l_u)`` (1 = off): a finite number or a schedule.
        solver: a solver of :mod:`purrception.sampling.solvers`, ``NAME`` or an adaptive ``NAME:TOL``.

    ``tau`` and ``cfg_scale`` may also be any other callable of ``t`` for library use; such a callable is neither
    checked nor recordable (:meth:`record` refuses it, so reports and command lines never hold one).

    Raises:
        PurrError: naming the field, for a value outside these rules.
    """

    sample_steps: int = 100
    tau: float | Schedule | Callable[[float], float] = 1.0
    cfg_scale: float | Schedule | Callable[[float], float] = 1.0
    solver: str = "euler"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample_steps", positive_int(self.sample_steps, "sample_steps"))
        object.__setattr__(self, "tau", _knob(self.tau, "tau", positive=True))
        object.__setattr__(self, "cfg_scale", _knob(self.cfg_scale, "cfg_scale", positive=False))
        object.__setattr__(self, "solver", check_solver(self.solver))

    def tau_at(self, t: float) -> float:
        return float(self.tau(t)) if callable(self.tau) else float(self.tau)

    def cfg_at(self, t: float) -> float:
        return float(self.cfg_scale(t)) if callable(self.cfg_scale) else float(self.cfg_scale)

    @property
    def constant_tau(self) -> float | None:
        """``tau`` when it is one number, else ``None`` (a schedule or a callable)."""
        return self.tau if isinstance(self.tau, float) else None

    def record(self) -> dict[str, Any]:
        """The settings as JSON values (each field by name; a schedule by its spec string).

        Raises:
            PurrError: when ``tau`` or ``cfg_scale`` is a callable other than a :class:`Schedule`, which no report or
                command line could name.
        """
        for name in ("tau", "cfg_scale"):
            value = getattr(self, name)
            if callable(value) and not isinstance(value, Schedule):
                raise PurrError(f"`{name}` is a {type(value).__name__}, which cannot be recorded; give a number or a "
                                "Schedule (see parse_schedule)")
        return {f.name: as_spec(getattr(self, f.name)) for f in fields(self)}
