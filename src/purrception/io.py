"""File helpers shared by every module that writes: atomic writes and safe checkpoint reads."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from purrception.errors import PurrError
from purrception.hashing import sha256_tensor as sha256_of_tensor  # the name older code imports from here

__all__ = ["default_cache_dir", "atomic_write", "atomic_save_json", "atomic_torch_save", "load_json", "safe_torch_load", "sha256_of_tensor"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    A crash in the middle leaves the previous file (if any) untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def safe_torch_load(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """Load a torch file with ``weights_only=True``: tensors and plain containers only.

    No code from the file is executed. Missing, truncated or foreign files raise :class:`PurrError`.
    """
    path = Path(path)
    if not path.is_file():
        raise PurrError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt / unsafe files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PurrError(f"cannot read {what} {path}: {first_line[:200]}") from None


def default_cache_dir() -> Path:
    """``$PURR_CACHE``, else ``$XDG_CACHE_HOME/purrception``, else ``~/.cache/purrception``."""
    if os.environ.get("PURR_CACHE"):
        return Path(os.environ["PURR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "purrception"
