"""One writer per output folder: an exclusive advisory lock held while a command writes into a folder.

``with folder_lock(out, param="run_dir"):`` creates ``out`` (if missing) and the lock file ``out/.purr.lock``,
locks it with ``flock`` and writes into it the host, pid and start time of the holder, which only serve to name the
holder in the refusal of a second writer: "``out`` is being written by pid N on HOST; wait for it or choose another
``run_dir``". The kernel releases a ``flock`` when its process dies, so a lock file left by a killed process is
free: the next writer takes it over (and says so in a log line). A lock that is held although the process it names
on this host is gone (a child that inherited the descriptor outlived it) is taken over too.

Taking the lock also removes the temporary files that writers killed mid-write left in the folder
(:func:`purrception.io.remove_partial_writes`): under the lock no other writer can be using them. On release the
lock file is deleted, and a folder the lock created and nothing wrote into is removed again, so a refused or failed
command leaves nothing behind.

The lock file is never data: :func:`is_lock_file` tells the checks that a folder is empty or "foreign" to skip it,
and nothing lists it as a shard, checkpoint or exported file. Locks are re-entrant within one process (a command
that locks a folder may call library code that locks it again). Under ``torchrun`` only the process that owns the
folder (rank 0) takes the lock. Advisory: only writers that take it are kept out, and on a network filesystem
without ``flock`` the host / pid contents are the only guard.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from purrception.errors import PurrError
from purrception.io import partial_writes, remove_partial_writes

__all__ = ["LOCK_NAME", "folder_lock", "file_lock", "is_lock_file", "lock_holder"]

log = logging.getLogger(__name__)

#: the lock file's name inside the locked folder
LOCK_NAME = ".purr.lock"

#: folders this process holds, with their hold count: ``{(pid, resolved folder): [count, fd]}`` (re-entrancy)
_HELD: dict[tuple[int, Path], list[int]] = {}


def is_lock_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a lock file of :func:`folder_lock` or :func:`file_lock` (to be skipped wherever a
    folder's contents count)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(LOCK_NAME)


def lock_holder(folder: str | os.PathLike) -> dict | None:
    """What the lock file of ``folder`` says about its last holder (``host``, ``pid``, ``since``), or None."""
    try:
        data = json.loads((Path(folder) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, param: str = "out") -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` for the body; yields the folder.

    Args:
        folder: the output folder (created if missing; removed again on exit if the lock created it and it is
            still empty).
        param: the parameter that named ``folder``, for the refusal's "choose another ``param``".

    Raises:
        PurrError: another live process holds the lock (naming its pid and host), or ``folder`` is a file.
    """
    folder = Path(folder)
    try:
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise PurrError(f"`{param}` {folder} is a file, not a folder; choose another `{param}` "
                        "(nothing was written)") from None
    except OSError as err:
        raise PurrError(f"cannot create the folder {folder} ({err.strerror}); choose another `{param}`") from None
    if not folder.is_dir():
        raise PurrError(f"`{param}` {folder} is a file, not a folder; choose another `{param}` (nothing was written)")
    with _held(folder / LOCK_NAME, folder, param, created):
        remove_partial_writes(folder)
        yield folder


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, param: str = "out") -> Iterator[Path]:
    """Hold the exclusive lock of the output file ``path`` (a report, say) for the body; yields ``path``.

    The lock file is ``.<name>.purr.lock`` beside it, so writers of other files in the same folder are not kept out.
    Temporary files of an earlier write of ``path`` cut short are removed. Refusals as in :func:`folder_lock`.
    """
    path = Path(path)
    if path.is_dir():
        raise PurrError(f"`{param}` {path} is a folder, not a file; choose another `{param}` (nothing was written)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PurrError(f"cannot create the folder {path.parent} ({err.strerror}); choose another `{param}`") from None
    with _held(path.parent / f".{path.name}{LOCK_NAME}", path, param, created=False):
        for partial in partial_writes(path.parent, glob.escape(path.name)):
            partial.unlink(missing_ok=True)
            log.info("removed %s, a write of %s cut short when an earlier process was killed", partial, path)
        yield path


@contextlib.contextmanager
def _held(lock_path: Path, target: Path, param: str, created: bool) -> Iterator[None]:
    """Hold ``lock_path`` (re-entrant in this process) for the body; release and tidy up after it."""
    key = (os.getpid(), lock_path.resolve())
    if key in _HELD:
        _HELD[key][0] += 1
        try:
            yield
        finally:
            _HELD[key][0] -= 1
        return
    fd = _acquire(lock_path, target, param)
    _HELD[key] = [1, fd]
    try:
        yield
    finally:
        del _HELD[key]
        _release(lock_path, fd, target if created else None)


def _acquire(path: Path, folder: Path, param: str) -> int:
    """Lock the lock file ``path`` of ``folder`` (a folder or file) and record this process in it; return the open
    descriptor."""
    for _ in range(5):  # the file can be deleted (released) or replaced (taken over) between open and flock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileNotFoundError:  # a writer that created the folder and wrote nothing removed it on release
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            locked = _try_flock(fd)
            if not locked:
                holder = _read_holder(fd)
                if not _dead_here(holder):
                    raise PurrError(_busy_message(folder, holder, param))
                log.warning("%s is locked by a process that outlived pid %s, which is gone; taking it over",
                            folder, holder.get("pid"))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                os.close(fd)
                continue
            if not _same_file(fd, path):  # released (deleted) or taken over since we opened it: open again
                os.close(fd)
                continue
            previous = _read_holder(fd)
            if previous and previous.get("pid") != os.getpid():
                log.info("taking over the lock of %s left by pid %s on %s, which is no longer running", folder,
                         previous.get("pid"), previous.get("host"))
            _write_holder(fd)
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
    raise PurrError(f"could not take the lock of {folder}: other processes keep taking it; wait for them or "
                    f"choose another `{param}`")


def _try_flock(fd: int) -> bool:
    """``flock(LOCK_EX | LOCK_NB)``: True when taken, False when another open file holds it. A filesystem without
    ``flock`` counts as taken (the holder recorded in the file is then the only guard; see :func:`_acquire`)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            holder = _read_holder(fd)
            return holder is None or holder.get("pid") == os.getpid() or _dead_here(holder)
        raise


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _read_holder(fd: int) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode() or "null")
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _write_holder(fd: int) -> None:
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(record) + "\n").encode())


def _dead_here(holder: dict | None) -> bool:
    """Whether ``holder`` names a process on this host that no longer runs."""
    if not holder or holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    pid = holder["pid"]
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _busy_message(folder: Path, holder: dict | None, param: str) -> str:
    who = (f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})" if holder
           else "another process")
    return f"{folder} is being written by {who}; wait for it to finish or choose another `{param}`"


def _release(path: Path, fd: int, created: Path | None) -> None:
    """Delete the lock file (while still holding it, so no one locks the doomed file), unlock, and remove the folder
    ``created`` by the lock if it stayed empty."""
    with contextlib.suppress(OSError):
        if _same_file(fd, path):
            os.unlink(path)
    with contextlib.suppress(OSError):
        os.close(fd)
    if created is not None:
        with contextlib.suppress(OSError):
            created.rmdir()  # only succeeds when empty
