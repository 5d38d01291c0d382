"""File helpers shared by every module that writes: atomic writes and safe checkpoint reads."""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from purrception.errors import PurrError
from purrception.hashing import sha256_tensor as sha256_of_tensor  # the name older code imports from here

__all__ = ["default_cache_dir", "cache_root", "atomic_write", "current_umask", "partial_writes", "atomic_save_json",
           "atomic_torch_save", "load_json", "safe_torch_load", "why_unreadable", "sha256_of_tensor"]

#: suffix of atomic_write's temporary files (their names are ``.<target name>.<random>.tmp``)
_TMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    A crash in the middle leaves the previous file (if any) untouched. A process killed outright (SIGKILL) also
    leaves its hidden temporary file beside it; :func:`partial_writes` finds those.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's file is private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process's file-creation mask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def partial_writes(folder: str | os.PathLike, name_glob: str) -> list[Path]:
    """The temporary files that :func:`atomic_write` calls for targets matching ``name_glob`` in ``folder`` left
    when they were killed mid-write (never complete files: a finished write renames its temporary file)."""
    return sorted(Path(folder).glob(f".{name_glob}.*{_TMP_SUFFIX}"))


def atomic_save_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(path, write)


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` through a temporary file and a rename."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file or raise a one-line :class:`PurrError`."""
    path = Path(path)
    if not path.is_file():
        raise PurrError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PurrError(f"{what} {path} is not readable JSON ({err}); regenerate it") from None


def safe_torch_load(path: str | os.PathLike, what: str = "checkpoint", expected: str = "a torch file of tensors",
                    fix: str = "pass another file") -> Any:
    """Load a torch file with ``weights_only=True``: tensors and plain containers only.

    No code from the file is executed. A missing, truncated or foreign file raises :class:`PurrError` in this
    library's words: "cannot read ``what`` PATH: it is not ``expected`` (why); ``fix``". Torch's own advice (which
    includes turning the safe loader off) is never passed on, and its warnings about the file (pickle protocol, ...)
    are silenced, since the error says what matters.
    """
    path = Path(path)
    if not path.is_file():
        raise PurrError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt / unsafe files
        raise PurrError(f"cannot read {what} {path}: it is not {expected} ({why_unreadable(err)}); {fix}") from None


#: how torch's weights-only unpickler names a pickled class it refuses
_FOREIGN_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")


def why_unreadable(err: Exception) -> str:
    """Why the safe loader refused a file: foreign objects (named), or not a readable torch file at all."""
    found = sorted(set(_FOREIGN_GLOBAL.findall(str(err))))
    if found:
        return f"it holds foreign objects: pickled classes this library never writes, {', '.join(found)}"
    return "another kind of file, or one cut short while it was written"


def default_cache_dir() -> Path:
    """``$PURR_CACHE``, else ``$XDG_CACHE_HOME/purrception``, else ``~/.cache/purrception``."""
    if os.environ.get("PURR_CACHE"):
        return Path(os.environ["PURR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "purrception"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder to use: ``cache_dir`` when given (non-empty), else the user cache (:func:`default_cache_dir`).

    Every cache of the library goes through this, so nothing is ever cached in the current working directory unless
    the caller names it.
    """
    return Path(cache_dir) if cache_dir else default_cache_dir()
