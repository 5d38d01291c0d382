"""Reliability of the library's writes: one owner per output folder (purrception.locks), atomic writes that flush
and survive a full disk (purrception.io), and the CLI's one-line failures for impossible requests."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from purrception.errors import PurrError
from purrception.io import append_line, atomic_save_json, atomic_write, disk_full_error, remove_partial_writes
from purrception.locks import LOCK_NAME, folder_lock, is_lock_file, lock_holder

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _python(code: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


# ---- locks -------------------------------------------------------------------------------------------------------
def test_a_live_lock_refuses_in_one_line_naming_pid_and_host(tmp_path):
    holder = _python(f"""
        import sys, time
        from purrception.locks import folder_lock
        with folder_lock({str(tmp_path / "out")!r}):
            print("held", flush=True)
            sys.stdin.readline()
        """, stdin=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PurrError) as err:
            with folder_lock(tmp_path / "out", param="run_dir"):
                pass
        message = str(err.value)
        assert "\n" not in message
        assert f"is being written by pid {holder.pid} on {socket.gethostname()}" in message
        assert message.endswith("wait for it to finish or choose another `run_dir`")
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    assert not (tmp_path / "out" / LOCK_NAME).exists()  # released: the file is gone
    with folder_lock(tmp_path / "out"):  # and the folder is free again
        assert lock_holder(tmp_path / "out")["pid"] == os.getpid()


def test_the_lock_of_a_killed_process_is_taken_over_with_a_log_line(tmp_path, caplog):
    holder = _python(f"""
        import os, time
        from purrception.locks import folder_lock
        with folder_lock({str(tmp_path)!r}):
            print("held", flush=True)
            time.sleep(60)
        """)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(timeout=30)
    assert lock_holder(tmp_path)["pid"] == holder.pid  # the kill left its lock file
    (tmp_path / ".checkpoint.pt.a1b2c3d4.tmp").write_bytes(b"torn")  # and a write cut short
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".part.npz.zz99_abc.tmp").write_bytes(b"torn")
    (tmp_path / "kept.tmp").write_bytes(b"not ours")  # not an atomic_write temporary name
    with caplog.at_level(logging.INFO, logger="purrception"):
        with folder_lock(tmp_path):
            assert lock_holder(tmp_path)["pid"] == os.getpid()
    text = caplog.text
    assert f"left by pid {holder.pid}" in text and "no longer running" in text
    assert "a file write cut short" in text
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["kept.tmp", "sub"]


def test_a_held_lock_whose_recorded_process_is_gone_is_taken_over(tmp_path, caplog):
    """A child that inherited the descriptor keeps the flock after its parent (the recorded pid) died."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    orphan = _python(f"""
        import fcntl, json, os, socket, time
        fd = os.open({str(tmp_path / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({{"host": socket.gethostname(), "pid": {dead_pid}, "since": "x"}}).encode())
        print("held", flush=True)
        time.sleep(60)
        """)
    try:
        assert orphan.stdout.readline().strip() == "held"
        with caplog.at_level(logging.INFO, logger="purrception"):
            with folder_lock(tmp_path):
                assert lock_holder(tmp_path)["pid"] == os.getpid()
        assert f"outlived pid {dead_pid}" in caplog.text
    finally:
        orphan.kill()
        orphan.wait(timeout=30)


def test_locks_are_reentrant_in_one_process_and_leave_no_trace(tmp_path):
    out = tmp_path / "new" / "run"
    with folder_lock(out) as folder:
        assert folder == out and out.is_dir()
        with folder_lock(out):
            assert (out / LOCK_NAME).is_file()
        assert (out / LOCK_NAME).is_file()  # still held by the outer block
        assert is_lock_file(out / LOCK_NAME) and not is_lock_file(out / "config.json")
    assert not out.exists()  # created by the lock, nothing written: removed again
    with folder_lock(out):
        (out / "data").write_text("x")
    assert [p.name for p in out.iterdir()] == ["data"]


def test_a_file_is_not_a_folder_to_lock(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(PurrError, match=r"^`out` .*f is a file, not a folder; choose another `out`"):
        with folder_lock(tmp_path / "f"):
            pass
    assert (tmp_path / "f").read_text() == "x"


# ---- atomic writes -----------------------------------------------------------------------------------------------
def test_atomic_write_flushes_and_renames(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    atomic_save_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert len(synced) == 2 and Path(synced[0]).name.startswith(".a.json.") and synced[1] == str(tmp_path)
    append_line(tmp_path / "log.jsonl", "1")
    append_line(tmp_path / "log.jsonl", "2")
    assert (tmp_path / "log.jsonl").read_text() == "1\n2\n" and len(synced) == 4


@pytest.mark.parametrize("err, detail", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (OSError(errno.EFBIG, "File too large"), "File too large"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1472 vs 1408"),
     ". unexpected pos 1472 vs 1408"),
    (RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on "
                  "device\" })"), "Error while serializing"),
])
def test_a_full_disk_is_one_line_and_the_old_file_stays(tmp_path, err, detail):
    target = tmp_path / "model.bin"
    target.write_bytes(b"good")

    def write(tmp):
        Path(tmp).write_bytes(b"half")
        raise err

    with pytest.raises(PurrError) as caught:
        atomic_write(target, write)
    message = str(caught.value)
    assert message.startswith(f"could not write {target}: the disk is full or a file size limit was hit ({detail}")
    assert "\n" not in message and "enforce fail" not in message
    assert target.read_bytes() == b"good" and sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_other_write_errors_pass_through(tmp_path):
    assert disk_full_error(tmp_path, OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full_error(tmp_path, RuntimeError("boom")) is None
    with pytest.raises(ZeroDivisionError):
        atomic_write(tmp_path / "x", lambda tmp: 1 / 0)
    assert list(tmp_path.iterdir()) == []


def test_remove_partial_writes_only_takes_temporary_files(tmp_path):
    (tmp_path / ".a.json.k3j_x9z1.tmp").write_text("torn")
    (tmp_path / ".keep.tmp").write_text("a user's file")
    (tmp_path / ".dir.abc.tmp").mkdir()  # a folder: export_image_folder's, not a file write
    assert [p.name for p in remove_partial_writes(tmp_path)] == [".a.json.k3j_x9z1.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dir.abc.tmp", ".keep.tmp"]
    assert remove_partial_writes(tmp_path / "missing") == []
