"""Format versions of the files the library writes, and the one rule for reading them.

Every manifest, config, checkpoint and report the library writes records ``"version"`` (an integer, counted per
format from 1). A reader calls :func:`read_version` with the newest version it writes and the oldest it still reads:

* no ``version`` at all is version 1, the oldest layout (files from before versions were recorded);
* a version between ``oldest`` and ``current`` is read; the reader migrates older layouts in memory, one function
  per format next to it (e.g. :meth:`purrception.checkpoint.CheckpointState.from_dict`), and never rewrites the
  file unless it is the file's owner continuing its work (a resumed encode);
* a newer version is refused in one line: the file was written by a newer purrception, upgrade to read it;
* an older version than ``oldest``, or a version that is not a positive integer, is refused in one line that says
  how to make a readable one (``convert``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from purrception.errors import PurrError

__all__ = ["read_version", "UPGRADE"]

#: the advice for a file written by a newer version of the library
UPGRADE = "written by a newer purrception; upgrade purrception to read it"


def read_version(data: Mapping[str, Any], what: str, source: str | Path, current: int, convert: str,
                 oldest: int = 1) -> int:
    """The format version of ``data`` (a loaded manifest, config or checkpoint dict), checked readable.

    Args:
        data: the loaded file; its ``"version"`` entry is read (absent: 1).
        what: the format's name in messages, e.g. ``"shard manifest"``.
        source: the file, named in messages.
        current: the newest version this library writes.
        convert: how to get a readable file when this one is too old or damaged, e.g. ``"re-run `purr encode`"``.
        oldest: the oldest version this library still reads.

    Returns:
        The version, ``oldest <= version <= current``.

    Raises:
        PurrError: a newer version ("upgrade"), an older one than ``oldest`` or an invalid one (``convert``).
    """
    version = data.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PurrError(f"{source} records {what} format version {version!r}, which is not a version; {convert}")
    if version > current:
        raise PurrError(f"{source} is {what} format version {version} (this purrception reads {oldest} to "
                        f"{current}): {UPGRADE}")
    if version < oldest:
        raise PurrError(f"{source} is {what} format version {version}, older than this purrception reads "
                        f"({oldest} to {current}); {convert}")
    return version
