"""What ``purr app`` refuses before gradio sees a request: oversized or non-image uploads, and ``..`` in a path.

:class:`RequestGuard` is an ASGI middleware (no gradio import; ``purr app`` puts it in front of the page's server):

* an upload (a ``POST`` to the page's ``/upload`` route) whose body is larger than :data:`MAX_UPLOAD_BYTES` is
  refused with 413 before it is read further; every file in it must be an image Pillow reads whole, of at most
  :data:`MAX_UPLOAD_PIXELS` pixels (else 413, checked from the header before any pixel is decoded, so a small file
  that claims 60000×60000 costs nothing), or the upload is refused with 415;
* a request whose path has a ``..`` segment, as sent or percent-decoded (``%2e%2e``), is refused with 400.

Each refusal is one line of plain text. Files are served only by gradio's own route, and only from the session's
download folder and gradio's cache of the page's results and uploads (``allowed_paths`` in
:func:`purrception.app.page.serve`): a path the user types is never opened.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

from PIL import Image, UnidentifiedImageError

__all__ = ["MAX_UPLOAD_BYTES", "MAX_UPLOAD_PIXELS", "RequestGuard", "upload_problem", "path_problem"]

log = logging.getLogger(__name__)

#: the largest upload body ``purr app`` reads (the Edit tab's image; the tokenizer's resolution is far smaller)
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
#: the most pixels an uploaded image may have (4096 x 4096)
MAX_UPLOAD_PIXELS = 4096 * 4096

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def path_problem(scope: Scope) -> str | None:
    """Why a request's path is refused (a ``..`` segment, as sent or percent-decoded), else ``None``."""
    raw = scope.get("raw_path") or scope.get("path", "").encode()
    sent = raw.decode("latin-1").split("?", 1)[0]
    for text in (sent, unquote(sent), unquote(unquote(sent)), scope.get("path", "")):
        # a segment "..", also as gradio's file route writes it ("file=../x": no slash before the dots)
        if any(part.rsplit("=", 1)[-1] == ".." for part in text.replace("\\", "/").split("/")):
            return "paths with '..' are not served; the app serves only its own results"
    return None


def upload_problem(data: bytes, name: str, max_pixels: int = MAX_UPLOAD_PIXELS) -> tuple[int, str] | None:
    """Why an uploaded file is refused, as ``(HTTP status, one line)``, else ``None``: it must be an image that
    Pillow reads whole, of at most ``max_pixels`` pixels (checked from its header before decoding)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > max_pixels:
                    return 413, (f"{name} is {width}x{height} pixels, more than the app takes ({max_pixels} pixels); "
                                 f"upload a smaller image")
                img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # raised by open, from the header
        return 413, f"{name} claims more pixels than the app takes ({max_pixels}); upload a smaller image"
    except UnidentifiedImageError:
        return 415, f"{name} is not an image (Pillow does not recognise it); upload a PNG or JPEG"
    except Exception as err:  # Pillow raises many types for files it cannot read
        why = type(err).__name__ if not str(err) else str(err).splitlines()[0]
        return 415, f"{name} is not an image the app can read ({why}); upload a PNG or JPEG"
    return None


def _text(status: int, message: str) -> tuple[dict[str, Any], dict[str, Any]]:
    body = (message + "\n").encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                         (b"connection", b"close")]}
    return start, {"type": "http.response.body", "body": body}


class RequestGuard:
    """ASGI middleware refusing oversized and non-image uploads and ``..`` paths (see the module docstring).

    Args:
        app: the ASGI application behind it (gradio's).
        max_upload_bytes: the largest upload body.
        max_upload_pixels: the most pixels of an uploaded image.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 max_upload_pixels: int = MAX_UPLOAD_PIXELS):
        self.app = app
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_upload_pixels = int(max_upload_pixels)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = path_problem(scope)
        if problem is not None:
            await self._refuse(scope, send, 400, problem)
            return
        if scope.get("method") == "POST" and scope.get("path", "").rstrip("/").endswith("/upload"):
            await self._upload(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send, status: int, message: str) -> None:
        log.info("refused %s %s: %s", scope.get("method"), scope.get("path"), message)
        for event in _text(status, message):
            await send(event)

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_upload_bytes
        too_big = (413, f"the upload is larger than the app takes ({limit // (1024 * 1024)} MiB); upload a smaller "
                        f"image")
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > limit:
            await self._refuse(scope, send, *too_big)
            return
        chunks, size, more = [], 0, True
        while more:
            event = await receive()
            if event["type"] == "http.disconnect":
                return
            chunks.append(event.get("body", b""))
            size += len(chunks[-1])
            more = event.get("more_body", False)
            if size > limit:
                await self._refuse(scope, send, *too_big)
                return
        body = b"".join(chunks)
        problem = await self._check_files(scope, body)
        if problem is not None:
            await self._refuse(scope, send, *problem)
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _check_files(self, scope: Scope, body: bytes) -> tuple[int, str] | None:
        from starlette.datastructures import UploadFile
        from starlette.requests import Request

        async def once() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(scope, once).form(max_files=8, max_fields=16)
        except Exception as err:  # a malformed multipart body
            return 400, f"the upload is not a well-formed form ({str(err).splitlines()[0] if str(err) else err!r})"
        try:
            files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
            if not files:
                return 400, "the upload holds no file; upload an image"
            for upload in files:
                problem = upload_problem(await upload.read(), repr(upload.filename or "the file"),
                                         self.max_upload_pixels)
                if problem is not None:
                    return problem
        finally:
            await form.close()
        return None
