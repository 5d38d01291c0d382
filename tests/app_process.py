"""``purr app`` in its own process for the app's server and browser tests: started, waited for, stopped."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

import purrception

#: how long a starting app may take to answer (gradio's import alone takes tens of seconds on a loaded 2-core VM)
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(checkpoint: Path, folder: Path, extra_args: list[str] = (), extra_env: dict[str, str] | None = None
                ) -> Iterator[tuple[str, subprocess.Popen, int]]:
    """Start ``purr app CHECKPOINT --port P EXTRA_ARGS`` in ``folder``; yield ``(url, process, port)`` once the page
    answers; stop it afterwards and print its output (pytest shows it when the test fails)."""
    port = free_port()
    src = str(Path(purrception.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), **(extra_env or {})}
    log = open(folder / "app.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "purrception", "app", str(checkpoint), "--port", str(port),
                             *extra_args], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"purr app exited with {proc.returncode}:\n{log.read()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"purr app did not answer on {url} within {START_TIMEOUT_S} s:\n{log.read()}")
            time.sleep(0.5)
        yield url, proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.seek(0)
        print(f"--- purr app's output ---\n{log.read()}")
        log.close()
