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
    iostream = RuntimeError("basic_ios::clear: iostream error")  # torch's C++ writer at a size limit, say
    assert disk_full_error(tmp_path, iostream) is None
    assert "(basic_ios::clear: iostream error)" in str(disk_full_error(tmp_path, iostream, filled_up=True))
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


# ---- every writing command takes its output's lock ---------------------------------------------------------------
class _Holder:
    """Another process holding the lock of a folder (``folder_lock``) or an output file (``file_lock``)."""

    def __init__(self, path: Path, kind: str = "folder_lock"):
        self.proc = _python(f"""
            import sys
            from purrception.locks import {kind}
            with {kind}({str(path)!r}):
                print("held", flush=True)
                sys.stdin.readline()
            """, stdin=subprocess.PIPE)
        assert self.proc.stdout.readline().strip() == "held"

    def __enter__(self) -> int:
        return self.proc.pid

    def __exit__(self, *exc) -> None:
        self.proc.communicate("\n", timeout=30)


def _refusal(capsys, pid: int) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("purr: error: ") and f"is being written by pid {pid} on {socket.gethostname()}" in err
    return err


def test_encode_export_tokenizer_train_eval_and_study_refuse_a_held_output(tiny_tokenizer_dir, tiny_checkpoint,
                                                                          tmp_path, capsys):
    from purrception.cli import main
    from purrception.studies.core import StudyStore

    out = tmp_path / "out"
    with _Holder(out) as pid:
        assert main(["encode", "--tokenizer", str(tiny_tokenizer_dir), "--embedded", "heldout", "--no-progress",
                     "--out", str(out)]) == 2
        assert "choose another --out" in _refusal(capsys, pid)
        assert main(["export", str(tiny_checkpoint), "--out", str(out)]) == 2
        assert "choose another --out" in _refusal(capsys, pid)
        assert main(["tokenizer", "train", "--out", str(out), "--steps", "1", "--no-progress"]) == 2
        assert "choose another --out" in _refusal(capsys, pid)
        with pytest.raises(PurrError, match=f"is being written by pid {pid} .*choose another `folder`"):
            StudyStore(out, {"study": "x"}, "purr study")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written beside the holder's lock
    report = tmp_path / "report.json"
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    with _Holder(report, "file_lock") as pid:
        assert main(["eval", str(tiny_checkpoint), "--protocol", "folder", "--reference", str(images.parent),
                     "-n", "4", "--out", str(report)]) == 2
        assert "choose another --out" in _refusal(capsys, pid)
    # the holder's folder went with its lock (created by it, left empty); the refused commands wrote nothing
    assert not report.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_two_trainings_into_one_folder_started_together_one_trains_one_refuses(tiny_shards_dir, tmp_path):
    from purrception.checkpoint import load_checkpoint

    run = tmp_path / "run"
    argv = [sys.executable, "-m", "purrception", "train", "--shards", str(tiny_shards_dir), "--out", str(run),
            "--no-progress", "--device", "cpu", "--set", "steps=120", "--set", "batch_size=8", "--set", "log_every=1",
            "--set", "ckpt_every=60", "--set", "model_overrides=" + json.dumps(
                {"hidden_size": 32, "depth": 1, "num_heads": 2})]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    trained = next(r for r in results if r[0] == 0)
    refused = next(r for r in results if r[0] == 2)
    loser = procs[[r[0] for r in results].index(2)]
    assert refused[2].strip().count("\n") == 0, refused[2]
    winner_pid = procs[[r[0] for r in results].index(0)].pid
    assert refused[2].startswith(f"purr: error: {run} is being written by pid {winner_pid} on "), refused[2]
    assert refused[2].rstrip().endswith("wait for it to finish or choose another --out") and loser.pid != winner_pid
    assert json.loads(trained[1].splitlines()[-1])["step"] == 120
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 121))  # one writer: no interleaved or repeated lines
    assert load_checkpoint(run / "checkpoints" / "step_00000120.pt").step == 120
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "metrics.jsonl"]


# ---- a full disk -------------------------------------------------------------------------------------------------
def test_a_checkpoint_write_over_the_file_size_limit_fails_in_one_line_and_the_last_good_one_loads(tiny_shards_dir,
                                                                                                  tmp_path):
    from conftest import tiny_config

    from purrception.checkpoint import load_checkpoint
    from purrception.training.loop import train

    run = tmp_path / "run"
    first = train(tiny_config(steps=2, ckpt_every=2), tiny_shards_dir, run, progress=False)
    good = first.checkpoint.read_bytes()
    limit = len(good) - 4096  # the next checkpoint, of the same size, cannot be written
    resumed = _python(f"""
        import resource, sys
        from purrception.cli import main
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))  # ulimit -f; Python ignores SIGXFSZ
        sys.exit(main(["train", "--shards", {str(tiny_shards_dir)!r}, "--out", {str(run)!r}, "--resume",
                       "--set", "steps=4", "--no-progress", "--device", "cpu"]))
        """)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 2, stderr
    lines = [line for line in stderr.strip().splitlines() if " INFO " not in line]  # all but the log's INFO lines
    assert len(lines) == 1, stderr
    step4 = run / "checkpoints" / "step_00000004.pt"
    assert lines[0].startswith(f"purr: error: could not write {step4}: the disk is full or a file size limit was hit (")
    assert "enforce fail" not in stderr and "--resume" in stderr  # torch's words for it are translated
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002.pt"]  # no temporary file
    assert first.checkpoint.read_bytes() == good and load_checkpoint(first.checkpoint).step == 2
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "metrics.jsonl"]  # lock released
    assert train(tiny_config(steps=4, ckpt_every=2), tiny_shards_dir, run, resume=True, progress=False).step == 4


def test_an_append_over_the_file_size_limit_fails_in_one_line(tmp_path):
    log_file = tmp_path / "metrics.jsonl"
    proc = _python(f"""
        import resource
        from purrception.errors import PurrError
        from purrception.io import append_line
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
        append_line({str(log_file)!r}, "x" * 60)
        try:
            append_line({str(log_file)!r}, "y" * 60)
        except PurrError as err:
            print(err)
        """)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert stdout.startswith(f"could not write {log_file}: the disk is full or a file size limit was hit (File too "
                             "large)")


# ---- the CLI's failures ------------------------------------------------------------------------------------------
def test_sample_refuses_an_impossible_count_and_a_file_as_out_in_one_line(tiny_checkpoint, tmp_path, capsys):
    from purrception.cli import main

    assert main(["sample", str(tiny_checkpoint), "--out", str(tmp_path / "s"), "--num", "1000000000000"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("purr: error: --num asks for 1,000,000,000,000 images, which need ")
    assert "GiB available; ask for fewer images per call" in err
    assert main(["sample", str(tiny_checkpoint), "--out", str(tmp_path / "s"), "--classes", "1,2",
                 "--num", "1000000000000"]) == 2
    assert "--num asks for" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["sample", str(tiny_checkpoint), "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err == f"purr: error: --out {tmp_path / 'file'} is a file, not a folder; choose another --out " \
                  "(nothing was written)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and (tmp_path / "file").read_text() == "x"


def test_the_pipeline_refuses_more_images_than_memory_holds(tiny_checkpoint):
    from purrception.generation.generate import available_memory
    from purrception.pipeline import PurrceptionPipeline

    pipe = PurrceptionPipeline.from_pretrained(str(tiny_checkpoint), device="cpu")
    too_many = available_memory() // (28 * 28) + 1
    with pytest.raises(PurrError, match=r"^`num_per_class` asks for [\d,]+ images, which need"):
        pipe(class_labels=[0], num_per_class=too_many, num_inference_steps=1)


def _grey_folder(root: Path, n: int) -> None:
    from PIL import Image

    for i in range(n):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("L", (28, 28), 20 * i).save(root / f"c{i % 2}" / f"{i}.png")


def test_an_error_under_a_progress_bar_starts_its_own_line(tiny_tokenizer_dir, tmp_path, capsys):
    from purrception.cli import main

    root = tmp_path / "images"
    _grey_folder(root, 6)
    (root / "c1" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")  # read last, while the bar is open
    assert main(["encode", "--tokenizer", str(tiny_tokenizer_dir), "--images", str(root), "--out",
                 str(tmp_path / "out"), "--batch-size", "1", "--part-size", "2"]) == 2
    err = capsys.readouterr().err
    assert "encode out" in err  # the bar was shown
    error_lines = [line for line in err.split("\n") if "purr: error:" in line]
    assert len(error_lines) == 1 and error_lines[0].startswith("purr: error: cannot read image"), err


def test_a_failed_encode_is_retried_on_the_repaired_folder(tiny_tokenizer_dir, tmp_path, capsys, caplog):
    from PIL import Image

    from purrception.cli import main
    from purrception.data.shards import TokenShards, parts_dir

    root, out = tmp_path / "images", tmp_path / "out"
    _grey_folder(root, 6)
    broken = root / "c1" / "5.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    argv = ["encode", "--tokenizer", str(tiny_tokenizer_dir), "--images", str(root), "--out", str(out),
            "--batch-size", "1", "--part-size", "2", "--no-progress"]
    assert main(argv) == 2
    assert len(list(parts_dir(out).glob("part-*.npz"))) == 2  # the parts before the broken image
    capsys.readouterr()
    Image.new("L", (28, 28), 100).save(broken)  # repaired
    with caplog.at_level(logging.INFO, logger="purrception"):
        assert main(argv) == 0, capsys.readouterr().err
    assert "the input images changed since the unfinished encode there stopped; discarding its 2 stale" in caplog.text
    assert len(TokenShards.open(out)) == 6 and not parts_dir(out).exists()
    assert sorted(p.name for p in out.iterdir()) == ["codebook.npy", "codes.npy", "labels.npy", "manifest.json"]


def test_reserve_space_allocates_a_sparse_file_before_it_is_written_through_a_map(tmp_path):
    from purrception.io import reserve_space

    path = tmp_path / "codes.npy"
    with open(path, "wb") as f:
        f.truncate(8 << 20)  # sparse: no blocks yet
    assert path.stat().st_blocks * 512 < 1 << 20
    reserve_space(path)
    assert path.stat().st_blocks * 512 >= 8 << 20 and path.stat().st_size == 8 << 20
