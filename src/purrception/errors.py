"""User-facing errors: one clear line naming the problem and the fix."""

__all__ = ["PurrError"]


class PurrError(ValueError):
    """An error caused by the user's input (a file, a parameter, a checkpoint).

    A ``ValueError``, so library callers that catch bad values catch it too. Library messages name the Python
    parameter (``tau``, ``solver``); the CLI prints ``str(error)`` on one line and exits non-zero, without a
    traceback.
    """
