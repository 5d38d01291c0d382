"""``purr app`` in a real headless browser: start it on a free localhost port, change τ (a number, then a schedule),
generate, see the images change, click an image and a position, see the uncertainty panel; in the Edit tab pick an
image of the grid, have a box outside the image refused, keep its top, run two completions, click one and see its
entropy maps; and check that every request stayed local.

Needs gradio (the ``[app]`` extra), playwright (the ``[test]`` extra) and a Chromium binary from the system
(Debian's ``chromium``; ``.ci/run`` installs it; ``PURR_CHROMIUM`` names another); skips, saying which is missing,
otherwise. With ``PURR_APP_SCREENSHOTS=1`` it also saves the README's screenshots to ``docs/app/``.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from app_process import running_app
from PIL import Image

from purrception.app.core import REGION_BOX, UNCERTAINTY_TIMES

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "docs" / "app"
#: the longest wait for one answer of the page (generous: the CPU may be shared)
WAIT_MS = 90_000


def _chromium() -> str | None:
    for candidate in (os.environ.get("PURR_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def _skip_reason() -> str | None:
    if importlib.util.find_spec("gradio") is None:
        return "gradio is not installed: pip install 'purrception[app]'"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed: pip install playwright (part of the [test] extra)"
    if _chromium() is None:
        return "no Chromium browser found (apt-get install chromium, or set PURR_CHROMIUM=/path/to/chrome)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


@pytest.fixture
def app_url(tiny_checkpoint, tmp_path):
    """``purr app`` on the tiny checkpoint, in its own process, until the test ends."""
    with running_app(tiny_checkpoint, tmp_path, ["--host", "127.0.0.1"]) as (url, _, _):
        yield url


#: where an ``<img>``'s picture lies inside its box (``object-fit: contain`` centres it, keeping its aspect)
FITTED = """el => { const r = el.getBoundingClientRect();
  const s = Math.min(r.width / el.naturalWidth, r.height / el.naturalHeight);
  const w = el.naturalWidth * s, h = el.naturalHeight * s;
  return {x: (r.width - w) / 2, y: (r.height - h) / 2, w: w, h: h}; }"""


def _images(page, selector: str) -> list[np.ndarray]:
    """The pixels of the images under ``selector``, fetched from the app as the browser shows them."""
    out = []
    for src in page.eval_on_selector_all(selector, "els => els.map(e => e.src)"):
        body = page.request.get(src).body()
        out.append(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")))
    return out


def _generate(page, count: int) -> list[np.ndarray]:
    """Press Generate and wait for a grid of ``count`` new images."""
    before = set(page.eval_on_selector_all("#grid img", "els => els.map(e => e.src)"))
    page.click("#generate")
    page.wait_for_function(
        "([n, old]) => { const s = [...document.querySelectorAll('#grid img')].map(e => e.src);"
        " return s.length === n && s.every(x => !old.includes(x)); }", arg=[count, list(before)])
    return _images(page, "#grid img")


def test_page_in_a_browser(app_url):
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    shots = os.environ.get("PURR_APP_SCREENSHOTS") == "1"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(WAIT_MS)
            page.on("request", lambda r: requests.append(r.url))
            page.goto(app_url)
            page.wait_for_selector("#generate")

            # a bad value is refused in the page, with the reason
            page.fill("#tau input", "0")
            page.click("#generate")
            page.get_by_text("--tau must be a number > 0").first.wait_for()   # the CLI's words, as purr sample's
            for close in page.locator("[data-testid=toast-close]").all():     # dismiss it (gradio's own button)
                close.click()

            page.fill("#num input[type=number]", "4")
            page.press("#num input[type=number]", "Enter")
            page.fill("#tau input", "0.05")
            cold = _generate(page, 4)
            page.get_by_label("start → end").check()              # τ from 5 at t = 0 to 3 at t = 1
            page.locator("#tau-end").wait_for(state="visible")
            page.fill("#tau input", "5")
            page.fill("#tau-end input", "3")
            hot = _generate(page, 4)
            assert all(a.shape == cold[0].shape for a in cold + hot) and cold[0].shape[0] >= 112
            assert any((a != b).any() for a, b in zip(cold, hot)), "τ = 0.05 and τ = 5 → 3 gave the same images"
            assert "--tau linear:5:3" in page.inner_text("#command")
            assert "4 images in" in page.inner_text("#status")
            page.wait_for_function("() => document.querySelector('#downloads').innerText.includes('purr-app-samples')"
                                   " && document.querySelector('#downloads').innerText.includes('command')")
            if shots:
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.evaluate("window.scrollTo(0, 0)")
                page.screenshot(path=str(SCREENSHOTS / "grid.png"))

            # click an image: its entropy maps over t; click a position: the top-k codes there, decoded
            page.locator("#grid img").nth(1).click()
            page.wait_for_function("n => document.querySelectorAll('#entropy img').length === n",
                                   arg=len(UNCERTAINTY_TIMES))
            page.get_by_text("Image 1").first.wait_for()
            picked = page.locator("#picked img")
            shown = picked.evaluate(FITTED)
            row, col = 2, 5                                  # the middle of that code's cell on the 7x7 grid
            picked.click(position={"x": shown["x"] + shown["w"] * (col + 0.5) / 7,
                                   "y": shown["y"] + shown["h"] * (row + 0.5) / 7})
            page.wait_for_function("() => document.querySelectorAll('#topk img').length > 0")
            page.get_by_text(f"At position ({row}, {col})").first.wait_for()
            strip = _images(page, "#topk img")
            maps = _images(page, "#entropy img")
            assert len(strip) >= 2 and len(maps) == len(UNCERTAINTY_TIMES)
            assert "--position 2,5" in page.inner_text("#inspect-info")
            if shots:
                page.locator("#uncertainty").screenshot(path=str(SCREENSHOTS / "uncertainty.png"))

            # the Edit tab: image 1 of the grid, a box outside the image refused, then its top kept, 2 completions
            page.get_by_role("tab", name="Edit").click()
            page.locator("#edit-pick img").nth(1).click()
            page.get_by_text("Image 1 of the grid").first.wait_for()
            page.get_by_role("radio", name=REGION_BOX, exact=True).check()
            page.locator("#edit-box").locator("textarea, input").first.fill("0,0,40,8")
            page.click("#edit-run")
            page.get_by_text("--keep: box '0,0,40,8' must satisfy").first.wait_for()   # purr edit's flag
            for close in page.locator("[data-testid=toast-close]").all():
                close.click()
            page.get_by_role("radio", name="top", exact=True).check()
            page.fill("#edit-num input[type=number]", "2")
            page.press("#edit-num input[type=number]", "Enter")
            page.click("#edit-run")
            page.wait_for_function("() => document.querySelectorAll('#edit-results img').length === 2"
                                   " && document.querySelectorAll('#edit-overview img').length === 2")
            source, mask = _images(page, "#edit-overview img")
            assert source.shape == mask.shape and (mask[:96] == 255).all() and (mask[96:] == 0).all()  # rows 0..2 kept
            line = page.inner_text("#edit-command")
            assert "purr edit" in line and "--keep top" in line and "--num-per-image 2" in line
            page.locator("#edit-results img").nth(1).click()
            page.wait_for_function("n => document.querySelectorAll('#edit-entropy img').length === n",
                                   arg=len(UNCERTAINTY_TIMES))
            page.get_by_text("Completion 1").first.wait_for()
            first = _images(page, "#edit-entropy img")[0]                  # t = 0
            assert first[:96].max() <= 10 and first[96:].mean() > 30, "kept codes are certain, the rest is not"
            if shots:
                page.locator("#edit-tab").screenshot(path=str(SCREENSHOTS / "edit.png"))
        finally:
            browser.close()

    foreign = sorted({u for u in requests if urlsplit(u).scheme not in ("data", "blob")
                      and urlsplit(u).hostname not in ("127.0.0.1", "localhost")})
    assert not foreign, f"the page fetched from outside this machine: {foreign}"
    assert len(requests) > 5
