"""User-facing errors: one clear line naming the problem and the fix."""

__all__ = ["PurrError"]


class PurrError(Exception):
    """An error caused by the user's input (a file, a flag, a checkpoint).

    The CLI prints ``str(error)`` on one line and exits non-zero, without a traceback.
    Library callers can catch it like any exception.
    """
