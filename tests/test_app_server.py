"""``purr app`` as a server under load and abuse: it listens on 127.0.0.1 unless told otherwise, 20 concurrent
sampling requests queue and all complete with bounded memory, and oversized or non-image uploads and paths outside
its own results are refused with a 4xx and one line.

The server runs in its own process on the tiny checkpoint (as in ``test_app_browser.py``) and is driven over HTTP
with gradio's plain API routes (``/gradio_api/call/<name>``, ``/gradio_api/upload``, ``/gradio_api/file=``) from
threads and ``urllib``; the unit tests of :mod:`purrception.app.guard` need no server. Needs gradio (the ``[app]``
extra) for the server tests.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from app_process import running_app
from PIL import Image

from purrception.app.guard import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, RequestGuard, path_problem, upload_problem
from purrception.cli import build_parser

#: concurrent sampling requests fired at once (more than one queue slot's worth, fewer than the queue holds)
CONCURRENT = 20
#: the most the server's peak resident memory may grow while the concurrent requests are served, over its peak
#: after one request: one request computes at a time, so waiting ones cost only their bookkeeping
PEAK_GROWTH_BYTES = 150 * 1024 * 1024

needs_gradio = pytest.mark.skipif(importlib.util.find_spec("gradio") is None,
                                  reason="gradio is not installed: pip install 'purrception[app]'")


# ---- the guard alone ----------------------------------------------------------------------------------------------
def _png(size: tuple[int, int] = (30, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _claims_60000_square() -> bytes:
    """A PNG of a few hundred bytes whose header claims 60000 x 60000 pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + chunk(b"IEND", b""))


def test_upload_problem_takes_images_and_refuses_the_rest_in_one_line():
    assert upload_problem(_png(), "'a.png'") is None
    cases = {
        b"hello": (415, "'x' is not an image (Pillow does not recognise it); upload a PNG or JPEG"),
        b"": (415, "'x' is not an image (Pillow does not recognise it); upload a PNG or JPEG"),
        _png()[:60]: (415, "'x' is not an image the app can read (image file is truncated); upload a PNG or JPEG"),
        _claims_60000_square(): (413, f"'x' claims more pixels than the app takes ({MAX_UPLOAD_PIXELS}); upload a "
                                      f"smaller image"),
    }
    for data, expected in cases.items():
        assert upload_problem(data, "'x'") == expected
    assert upload_problem(_png((5000, 4000)), "'x'") == (
        413, f"'x' is 5000x4000 pixels, more than the app takes ({MAX_UPLOAD_PIXELS} pixels); upload a smaller image")


@pytest.mark.parametrize("raw", ["/gradio_api/file=../../etc/passwd", "/gradio_api/file=%2e%2e/%2e%2e/etc/passwd",
                                 "/gradio_api/file=%252e%252e/x", "/files/../../etc/passwd", "/a/..%2fb",
                                 "/gradio_api/file=..\\..\\etc\\passwd"])
def test_paths_with_dot_dot_are_refused(raw):
    assert path_problem({"raw_path": raw.encode(), "path": raw}) == (
        "paths with '..' are not served; the app serves only its own results")


@pytest.mark.parametrize("raw", ["/", "/gradio_api/file=/tmp/purr-app-x/00001/purr-app-samples.zip",
                                 "/gradio_api/file=/tmp/a..b.png", "/config"])
def test_ordinary_paths_pass(raw):
    assert path_problem({"raw_path": raw.encode(), "path": raw}) is None


def _multipart(name: str, data: bytes) -> tuple[bytes, bytes]:
    boundary = b"purrboundary"
    body = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"files\"; filename=\"" + name.encode()
            + b"\"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n")
    return body, b"multipart/form-data; boundary=" + boundary


def _through_guard(body: bytes, content_type: bytes, path: str = "/gradio_api/upload", **limits):
    """Send one request through :class:`RequestGuard` in front of an app that records what reaches it."""
    reached, sent = [], []

    async def inner(scope, receive, send):
        event = await receive()
        reached.append(event["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(event):
        sent.append(event)

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
             "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]}
    asyncio.run(RequestGuard(inner, **limits)(scope, receive, send))
    return sent[0]["status"], sent[1]["body"].decode(), reached


def test_the_guard_passes_an_image_upload_on_unchanged_and_stops_the_others():
    pytest.importorskip("starlette")
    body, kind = _multipart("a.png", _png())
    assert _through_guard(body, kind) == (200, "ok", [body])
    status, text, reached = _through_guard(*_multipart("notes.txt", b"not an image"))
    assert (status, text, reached) == (415, "'notes.txt' is not an image (Pillow does not recognise it); upload a "
                                            "PNG or JPEG\n", [])
    status, text, reached = _through_guard(body, kind, max_upload_bytes=len(body) - 1)
    assert (status, reached) == (413, []) and text.count("\n") == 1 and "larger than the app takes" in text


def test_purr_app_listens_on_localhost_unless_told_otherwise():
    assert build_parser().parse_args(["app", "RUN"]).host == "127.0.0.1"


# ---- the server ---------------------------------------------------------------------------------------------------
def _listening(port: int) -> list[str]:
    """The local addresses listening on ``port`` (IPv4, from /proc/net/tcp)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class AppServer:
    def __init__(self, url: str, proc: subprocess.Popen, port: int):
        self.url, self.proc, self.port = url, proc, port

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=60) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def upload(self, name: str, data: bytes) -> tuple[int, str]:
        body, kind = _multipart(name, data)
        request = urllib.request.Request(self.url + "gradio_api/upload", data=body,
                                         headers={"Content-Type": kind.decode()})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except (ConnectionError, urllib.error.URLError) as err:  # refused before the body was read
            return 0, str(err)

    def call(self, name: str, data: list) -> tuple[str, object]:
        """Call the page's ``name`` endpoint and wait: ``("complete", outputs)`` or ``("error", message)``."""
        request = urllib.request.Request(self.url + f"gradio_api/call/{name}", data=json.dumps({"data": data}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            event_id = json.loads(response.read())["event_id"]
        with urllib.request.urlopen(self.url + f"gradio_api/call/{name}/{event_id}", timeout=600) as response:
            event = None
            for line in response.read().decode().splitlines():
                if line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("data: ") and event in ("complete", "error"):
                    return event, json.loads(line[len("data: "):])
        return "none", None


@pytest.fixture(scope="module")
def app_server(tiny_checkpoint, tmp_path_factory):
    """``purr app`` on the tiny checkpoint with its default host, in its own process, for the module's tests."""
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("gradio is not installed: pip install 'purrception[app]'")
    folder = tmp_path_factory.mktemp("app")
    with running_app(tiny_checkpoint, folder, extra_env={"GRADIO_TEMP_DIR": str(folder / "gradio")}) as (url, proc,
                                                                                                       port):
        yield AppServer(url, proc, port)


def _generate_args(seed: int, num: int = 2, steps: int = 4) -> list:
    # classes, number, tau mode, tau, tau end, shape, guidance, steps, solver, seed (the page's generate inputs)
    return [[], num, "constant", 1.0, 0.6, "linear", 1.0, steps, "euler", seed]


@needs_gradio
def test_the_server_listens_on_127_0_0_1_only(app_server):
    assert _listening(app_server.port) == ["127.0.0.1"]


@needs_gradio
def test_twenty_concurrent_sampling_requests_queue_and_all_complete_with_bounded_memory(app_server):
    event, _ = app_server.call("generate", _generate_args(seed=100, num=8, steps=16))
    assert event == "complete"
    after_one = _peak_rss(app_server.proc.pid)
    results: dict[int, tuple[str, object]] = {}

    def fire(i: int) -> None:
        try:
            results[i] = app_server.call("generate", _generate_args(seed=i, num=8, steps=16))
        except Exception as err:  # recorded, so that the assertion below names it
            results[i] = ("exception", repr(err))

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(CONCURRENT)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    seconds = time.monotonic() - start
    peak = _peak_rss(app_server.proc.pid)
    print(f"{CONCURRENT} concurrent requests in {seconds:.1f} s; server peak RSS {after_one / 2**20:.0f} MiB after "
          f"one request, {peak / 2**20:.0f} MiB after all")
    assert {i: r[0] for i, r in results.items()} == {i: "complete" for i in range(CONCURRENT)}
    archives = {Path(r[1][3][0]["path"]).name for r in results.values()}   # each answer carries its downloads
    assert archives == {"purr-app-samples.zip"}
    assert peak - after_one < PEAK_GROWTH_BYTES


@needs_gradio
def test_oversized_and_non_image_uploads_are_refused_in_one_line(app_server):
    status, text = app_server.upload("big.png", b"\0" * (MAX_UPLOAD_BYTES + 1))
    assert status in (413, 0), text   # 0: the server answered 413 and closed before the whole body was sent
    if status == 413:
        assert text == "the upload is larger than the app takes (8 MiB); upload a smaller image\n"
    assert app_server.upload("notes.txt", b"not an image") == (
        415, "'notes.txt' is not an image (Pillow does not recognise it); upload a PNG or JPEG\n")
    status, text = app_server.upload("bomb.png", _claims_60000_square())
    assert (status, text.count("\n")) == (413, 1) and "claims more pixels" in text
    status, text = app_server.upload("cut.png", _png()[:60])
    assert (status, text.count("\n")) == (415, 1) and "truncated" in text
    status, text = app_server.upload("fine.png", _png())
    assert status == 200
    uploaded = json.loads(text)[0]
    event, outputs = app_server.call("upload_source", [{"path": uploaded, "meta": {"_type": "gradio.FileData"}}])
    assert event == "complete" and "uploaded image" in outputs[1]


@needs_gradio
def test_no_file_outside_the_apps_own_results_is_served(app_server, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("sentinel 7d1c")
    cases = ["gradio_api/file=/etc/passwd", f"gradio_api/file={secret}", "gradio_api/file=../../etc/passwd",
             "gradio_api/file=%2e%2e/%2e%2e/etc/passwd", f"gradio_api/file={quote(str(secret), safe='')}",
             "files/../../etc/passwd", "file=/etc/passwd"]
    for path in cases:
        status, text = app_server.get(path)
        assert 400 <= status < 500, (path, status)
        assert "sentinel" not in text and "root:" not in text and text.strip().count("\n") == 0, (path, text)
    event, outputs = app_server.call("upload_source", [{"path": str(secret), "meta": {"_type": "gradio.FileData"}}])
    assert event == "error" and "sentinel" not in json.dumps(outputs)   # a typed path is not taken as an upload
    event, outputs = app_server.call("generate", _generate_args(seed=1))
    own = outputs[3][0]["path"]                                           # the app's own result is served
    assert app_server.get(f"gradio_api/file={own}")[0] == 200
