"""File helpers shared by every module that writes: atomic writes and safe checkpoint reads."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

try:
    import resource
except ImportError:  # not on Windows: no file size limit to hit
    resource = None  # type: ignore[assignment]

from purrception.errors import PurrError
from purrception.hashing import sha256_tensor as sha256_of_tensor  # the name older code imports from here

__all__ = ["default_cache_dir", "cache_root", "atomic_write", "append_line", "disk_full_error", "reserve_space",
           "current_umask", "partial_writes", "remove_partial_writes", "atomic_save_json", "atomic_copy",
           "atomic_torch_save", "load_json", "safe_torch_load", "why_unreadable", "sha256_of_tensor"]

log = logging.getLogger(__name__)

#: suffix of atomic_write's temporary files (their names are ``.<target name>.<random>.tmp``)
_TMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, flush the file to disk, then rename it onto ``path``: the one way this library
    writes a file.

    The temporary file lies in the target's folder (so the rename is atomic), its contents are ``fsync``-ed before
    the rename and the folder after it (where the filesystem supports it), so a reader, a crash or a power cut sees
    the previous file or the new one, never part of one. A write that fails (an exception, a full disk, a file size
    limit) removes its temporary file and leaves the previous file untouched; a full disk or a size limit raises a
    one-line :class:`PurrError` (:func:`disk_full_error`). A process killed outright (SIGKILL) leaves its hidden
    temporary file ``.<name>.<random>.tmp`` beside the target; :func:`partial_writes` and
    :func:`remove_partial_writes` find and remove those.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        _fsync_path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's file is private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException as err:
        at_limit = _filled_up(tmp)
        if os.path.exists(tmp):
            os.unlink(tmp)
        full = disk_full_error(path, err, at_limit)
        if full is not None:
            raise full from None
        raise
    _fsync_dir(path.parent)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` and a newline to the log file ``path``, flushed to disk.

    Append-only logs (``metrics.jsonl``) are the one exception to :func:`atomic_write`: each record is appended
    and flushed, so a killed process leaves at most one line cut short, which their readers skip. A full disk or a
    size limit raises :func:`disk_full_error`'s one-line :class:`PurrError`.
    """
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        full = disk_full_error(Path(path), err)
        if full is not None:
            raise full from None
        raise


#: errno values of a full disk, a full quota and a hit file size limit (RLIMIT_FSIZE, ``ulimit -f``)
_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
#: how writers that do not raise OSError report those: torch's zip writer ("unexpected pos", "failed writing"),
#: safetensors' Rust errors ("os error 28") and the C library's messages
_FULL_MESSAGES = re.compile(r"unexpected pos|PytorchStreamWriter failed writing|No space left on device|"
                            r"File too large|Disk quota exceeded|os error (?:27|28|122)\b")


def disk_full_error(path: str | os.PathLike, err: BaseException, filled_up: bool = False) -> PurrError | None:
    """A one-line :class:`PurrError` when ``err`` (raised while writing ``path``) means the disk is full or a file
    size limit was hit, else None.

    Writers in C++ or Rust report it in their own words (torch's zip writer: "unexpected pos" or an iostream
    error), so besides the known messages an I/O-looking error counts when ``filled_up`` says the file being written
    reached the size limit or its disk is out of space (:func:`_filled_up`).
    """
    if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
        detail = os.strerror(err.errno)
    elif isinstance(err, (OSError, RuntimeError)) and (filled_up or _FULL_MESSAGES.search(str(err))):
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        detail = _ENFORCE_PREFIX.sub("", detail)[:120]
    else:
        return None
    return PurrError(f"could not write {path}: the disk is full or a file size limit was hit ({detail}); free space "
                     f"and run the command again (files written before are intact; a training run continues from "
                     f"its last checkpoint with `resume=True`)")


#: torch's C++ assertion prefix, "[enforce fail at inline_container.cc:672] ", which says nothing to a user
_ENFORCE_PREFIX = re.compile(r"^\[enforce fail at [^\]]*\]\s*")


#: below this many free bytes a failed write is taken for a full disk
_NEARLY_FULL = 1 << 20


def _filled_up(tmp: str) -> bool:
    """Whether the half-written ``tmp`` reached the process's file size limit or its disk has (almost) no room."""
    try:
        size = os.path.getsize(tmp)
        if resource is not None:
            soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
            if soft != resource.RLIM_INFINITY and size >= soft:
                return True
        st = os.statvfs(os.path.dirname(tmp) or ".")
        return st.f_bavail * st.f_frsize < _NEARLY_FULL
    except (OSError, AttributeError):
        return False


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; filesystems that cannot sync a folder (some network ones) are skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def reserve_space(path: str | os.PathLike) -> None:
    """Allocate the blocks of the (sparse) file ``path`` up to its size, so that a full disk is reported now as an
    ``OSError`` instead of killing the process (SIGBUS) when a memory map of it is written. Filesystems without
    ``posix_fallocate`` are left as they are."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as err:
        if err.errno in _FULL_ERRNOS:
            raise
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's file-creation mask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def partial_writes(folder: str | os.PathLike, name_glob: str) -> list[Path]:
    """The temporary files that :func:`atomic_write` calls for targets matching ``name_glob`` in ``folder`` left
    when they were killed mid-write (never complete files: a finished write renames its temporary file)."""
    return sorted(p for p in Path(folder).glob(f".{name_glob}.*{_TMP_SUFFIX}") if _TMP_NAME.match(p.name))


#: the name of :func:`atomic_write`'s temporary file: ``.<target name>.<random characters>.tmp``
_TMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def remove_partial_writes(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left anywhere under ``folder``; return them.

    Call it only as the folder's one writer (under :func:`purrception.locks.folder_lock`): another writer's
    temporary file is in use until it is renamed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = sorted(p for p in folder.rglob(f".*{_TMP_SUFFIX}") if _TMP_NAME.match(p.name) and p.is_file())
    for path in found:
        path.unlink(missing_ok=True)
        log.info("removed %s, a file write cut short when an earlier process was killed", path)
    return found


def atomic_save_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(path, write)


def atomic_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy the file ``source`` to ``target`` through :func:`atomic_write` (``shutil.copytree``'s
    ``copy_function`` for folders this library copies)."""
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


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
