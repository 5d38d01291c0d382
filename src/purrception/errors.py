"""User-facing errors: one clear line naming the problem and the fix.

How a message names a parameter: library messages name Python parameters and fields, never command-line flags,
and write each one in backticks, bare or with a value::

    `tau` must be > 0, got -1
    this tokenizer does not match; pass the matching `tokenizer=PATH`
    runs/a already holds checkpoints; pass `resume=True` to continue it or choose another `run_dir`

Nothing else in a message is put in backticks, so :data:`PARAMETER` finds exactly the parameters and never an
ordinary word. The ``purr`` command rewrites each one that the invoked subcommand's parser defines into its flag
(``tau`` -> ``--tau``, ``resume=True`` -> ``--resume``, ``tokenizer=PATH`` -> ``--tokenizer PATH``) and leaves the
others as written (``purrception.cli.flag_message``); ``purr app`` shows the page's errors through the same rewrite.
"""

import numbers
import re
from typing import Any

__all__ = ["PurrError", "PARAMETER", "positive_int"]

#: a parameter as a message writes it: ```name``` or ```name=VALUE``` (groups: the name, the value or ``None``)
PARAMETER = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(?:=([^`]*))?`")


class PurrError(ValueError):
    """An error caused by the user's input (a file, a parameter, a checkpoint).

    A ``ValueError``, so library callers that catch bad values catch it too. Library messages name the Python
    parameter in backticks (```tau```, ```solver```; see the module docstring); the CLI prints ``str(error)`` with
    those names turned into its flags on one line and exits non-zero, without a traceback.
    """


def positive_int(value: Any, name: str) -> int:
    """``value`` as a positive ``int`` (bools and non-integers refused), else a :class:`PurrError` naming the
    parameter ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise PurrError(f"`{name}` must be a positive integer, got {value!r}")
    return int(value)
