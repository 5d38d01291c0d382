"""Schedules ``f(t)`` for the temperature ``tau`` (eq. 15) and the CFG scale, read from short strings.

``SamplerSettings`` takes a constant or any callable of ``t``; this module gives the command line the common
ones. A spec is a number (a constant) or ``shape:start:end``, which moves from ``start`` at ``t = 0`` to ``end`` at
``t = 1`` along ``shape``:

- ``linear``: ``start + (end - start) t``
- ``cosine``: ``start + (end - start) (1 - cos(pi t)) / 2`` (flat at both ends)

Both stay between ``start`` and ``end``, so a temperature schedule with two positive ends is positive throughout
(``SamplerSettings`` asks a temperature for exactly that).
A :class:`Schedule` is a frozen dataclass whose :attr:`Schedule.spec` (also ``str()``) parses back to an equal
schedule; reports record schedules by that spec (:func:`as_spec`), never as objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from purrception.errors import PurrError

__all__ = ["SHAPES", "Schedule", "parse_schedule", "as_spec"]

#: ``w(t)`` with ``w(0) = 0`` and ``w(1) = 1``: how a schedule moves from its start value to its end value.
SHAPES: dict[str, Callable[[float], float]] = {
    "linear": lambda t: t,
    "cosine": lambda t: 0.5 * (1.0 - math.cos(math.pi * t)),
}


@dataclass(frozen=True)
class Schedule:
    """``start + (end - start) w(t)`` with ``w = SHAPES[shape]``."""

    shape: str
    start: float
    end: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise PurrError(f"unknown schedule shape {self.shape!r}; choose one of: {', '.join(SHAPES)}")

    def __call__(self, t: float) -> float:
        return self.start + (self.end - self.start) * SHAPES[self.shape](float(t))

    @property
    def spec(self) -> str:
        """``SHAPE:START:END``, which :func:`parse_schedule` reads back to an equal schedule."""
        return f"{self.shape}:{_number(self.start)}:{_number(self.end)}"

    def __str__(self) -> str:
        return self.spec


def _number(x: float) -> str:
    """The short ``%g`` form where it is exact (``1``, ``0.5``), else the shortest exact ``repr``."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


def as_spec(value: Any) -> Any:
    """A :class:`Schedule` -> its spec string; anything else (a constant) unchanged. For JSON reports."""
    return value.spec if isinstance(value, Schedule) else value


def parse_schedule(text: str, name: str = "value") -> float | Schedule:
    """``"0.8"`` -> ``0.8``; ``"linear:1.2:0.6"`` -> ``Schedule("linear", 1.2, 0.6)``.

    Only the form is checked here (numbers, finite, a known shape); what range a knob takes is
    :class:`~purrception.sampling.settings.SamplerSettings`' rule (e.g. a temperature's ends must be > 0).

    Args:
        text: the spec.
        name: what the value is, for error messages, as messages name parameters (e.g. ``"`tau`"``).

    Raises:
        PurrError: for a malformed spec, an unknown shape, or a value that is not finite.
    """
    parts = text.strip().split(":")
    if len(parts) not in (1, 3):
        raise PurrError(f"{name} must be a number or SHAPE:START:END (shapes: {', '.join(SHAPES)}), got {text!r}")
    try:
        values = [float(p) for p in parts[-2:]] if len(parts) == 3 else [float(parts[0])]
    except ValueError:
        raise PurrError(f"{name} must be a number or SHAPE:START:END with numbers, got {text!r}") from None
    if any(not math.isfinite(v) for v in values):
        raise PurrError(f"{name} must be finite, got {text!r}")
    if len(parts) == 1:
        return values[0]
    return Schedule(parts[0], values[0], values[1])
