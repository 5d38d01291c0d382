"""The ``purr app`` page: a thin Gradio layer over :mod:`purrception.app.core`.

Importing this module imports gradio (the ``[app]`` extra); only ``purr app`` does. Nothing on the page comes from
the network: analytics and the version check are off, the theme uses the system's fonts (no web fonts), there is
no share link, and the page is served from the address given (localhost by default). Requests wait in a queue,
one at a time per kind of request (a grid, an image's uncertainty), and the form caps the size of a request.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

#: set before gradio is imported: no analytics, no version check, no hub telemetry
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1",
               "DO_NOT_TRACK": "1"}
os.environ.update(OFFLINE_ENV)

import gradio as gr  # noqa: E402  (after the environment above)

from purrception.app.core import (  # noqa: E402
    SOLVER_CHOICES,
    TAU_CONSTANT,
    TAU_MODES,
    TAU_SCHEDULE,
    AppSession,
    display_factor,
    gallery_items,
    pixel_to_position,
)
from purrception.errors import PurrError  # noqa: E402
from purrception.sampling.schedules import SHAPES  # noqa: E402

__all__ = ["build_page", "serve", "OFFLINE_ENV", "QUEUE_SIZE", "MIN_GRADIO"]

log = logging.getLogger(__name__)

#: the first gradio whose page loads no script from a CDN (earlier ones fetch iframe-resizer from one)
MIN_GRADIO = (6, 17)
#: requests waiting beyond this many are turned away with a message (rather than waiting for minutes)
QUEUE_SIZE = 16
SANS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace"]
#: pixels of the entropy and top-k strips: one row of thumbnails
GALLERY_HEIGHT = 230
CSS = ".purr-pixels img { image-rendering: pixelated; }"

INTRO = """\
Sample the model with the knobs of `purr sample`. **τ** is the temperature of the posterior π = softmax(ℓ/τ)
(paper eq. 15): below 1 sharper and less diverse, above 1 more varied; a *start → end* schedule moves it over the
trajectory from t = 0 (noise) to t = 1 (data). **Guidance** is classifier-free guidance (1 = off). Image i depends
only on (seed, i). Click an image of the grid for its uncertainty, then a position on the enlarged image.
"""


def build_page(session: AppSession) -> gr.Blocks:
    """The page's Blocks for ``session`` (not yet queued or launched); errors show as ``session.error_message``
    words them."""
    names = session.class_names
    limits = session.limits

    def _refuse(err: PurrError) -> gr.Error:
        return gr.Error(session.error_message(err))

    def generate(classes, num, tau_mode, tau, tau_end, shape, cfg, steps, solver, seed):
        try:
            request = session.parse(classes, num, tau_mode, tau, tau_end, shape, cfg, steps, solver, seed)
            result = session.generate(request)
        except PurrError as err:
            raise _refuse(err) from None
        items = gallery_items(result.pixels, result.labels, names, display_factor(result.pixels.shape[1:3]))
        state = {"request": request, "size": tuple(result.pixels.shape[1:3])}
        return (items, result.summary(), result.command, [str(result.archive), str(result.script)], state, None,
                None, [], [], "Click an image of the grid above.")

    def pick_image(state, evt: gr.SelectData):
        if not state:
            raise gr.Error("generate a grid first")
        try:
            found = session.inspect(state["request"], int(evt.index))
        except PurrError as err:
            raise _refuse(err) from None
        return found.index, found.enlarged(), found.entropy_gallery(), [], found.summary(names)

    def pick_position(state, index, evt: gr.SelectData):
        if not state or index is None:
            raise gr.Error("click an image of the grid first")
        size = state["size"]
        factor = display_factor(size)
        x, y = evt.index[0], evt.index[1]
        position = pixel_to_position(x, y, (size[0] * factor, size[1] * factor), session.latent)
        try:
            found = session.inspect(state["request"], int(index), position)
        except PurrError as err:
            raise _refuse(err) from None
        return found.enlarged(), found.entropy_gallery(), found.topk_gallery(), found.summary(names)

    def tau_fields(mode):
        schedule = mode == TAU_SCHEDULE
        return gr.update(label="τ start" if schedule else "τ"), gr.update(visible=schedule), gr.update(visible=schedule)

    # gradio keeps its own copies of the results: drop them after an hour, and all of them at exit
    with gr.Blocks(title="purr app", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"## Purrception\n{session.describe()}\n\n{INTRO}")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                classes = gr.Dropdown(choices=names, value=[], multiselect=True, label="classes",
                                      info="none picked: every class, in turn", elem_id="classes")
                num = gr.Slider(1, limits.max_images, value=min(8, limits.max_images), step=1,
                                label="number of images", elem_id="num")
                tau_mode = gr.Radio(list(TAU_MODES), value=TAU_CONSTANT, label="temperature", elem_id="tau-mode")
                with gr.Row():
                    tau = gr.Number(value=1.0, label="τ", elem_id="tau")
                    tau_end = gr.Number(value=0.6, label="τ end", visible=False, elem_id="tau-end")
                    shape = gr.Dropdown(choices=list(SHAPES), value="linear", label="shape", visible=False,
                                        elem_id="tau-shape")
                cfg = gr.Number(value=1.0, label="guidance scale (1 = off)", elem_id="cfg")
                steps = gr.Slider(1, limits.max_steps, value=min(16, limits.max_steps), step=1, label="steps",
                                  elem_id="steps")
                solver = gr.Dropdown(choices=list(SOLVER_CHOICES), value="euler", label="solver", elem_id="solver")
                seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                grid = gr.Gallery(label="results (click one)", columns=4, format="png", object_fit="contain",
                                  allow_preview=False, height="auto", elem_id="grid", elem_classes="purr-pixels")
                status = gr.Markdown(elem_id="status")
                command = gr.Code(label="the purr sample command that makes these images", language="shell",
                                  interactive=False, lines=2, wrap_lines=True, elem_id="command")
                files = gr.File(label="download: the images (zip) and the command", file_count="multiple",
                                interactive=False, elem_id="downloads")
        with gr.Column(elem_id="uncertainty"):
            gr.Markdown("### Uncertainty of the clicked image")
            with gr.Row():
                picked = gr.Image(label="click a position", interactive=False, format="png", type="numpy",
                                  elem_id="picked", elem_classes="purr-pixels", scale=1)
                with gr.Column(scale=3):
                    entropy = gr.Gallery(label="posterior entropy per position, over t",
                                         columns=len(session.times), format="png", object_fit="contain",
                                         allow_preview=False, height=GALLERY_HEIGHT, elem_id="entropy",
                                         elem_classes="purr-pixels")
                    topk = gr.Gallery(label="top codes at the clicked position, decoded", columns=session.topk,
                                      format="png", object_fit="contain", allow_preview=False,
                                      height=GALLERY_HEIGHT, elem_id="topk", elem_classes="purr-pixels")
            about = gr.Markdown(elem_id="inspect-info")
        state = gr.State(None)
        index = gr.State(None)

        tau_mode.change(tau_fields, tau_mode, [tau, tau_end, shape], queue=False)
        run.click(generate, [classes, num, tau_mode, tau, tau_end, shape, cfg, steps, solver, seed],
                  [grid, status, command, files, state, index, picked, entropy, topk, about], api_name="generate")
        grid.select(pick_image, state, [index, picked, entropy, topk, about], api_name="inspect_image")
        picked.select(pick_position, [state, index], [picked, entropy, topk, about], api_name="inspect_position")
    return page


def serve(session: AppSession, host: str = "127.0.0.1", port: int = 7860, concurrency: int = 1) -> None:
    """Queue and launch the page for ``session``; blocks until interrupted."""
    found = tuple(int(part) for part in re.findall(r"\d+", gr.__version__)[:2])
    if found < MIN_GRADIO:
        session.close()
        raise PurrError(f"purr app needs gradio >= {'.'.join(map(str, MIN_GRADIO))} (older pages fetch a script "
                        f"from a CDN), found {gr.__version__}: pip install -U 'purrception[app]'")
    page = build_page(session)
    page.queue(default_concurrency_limit=concurrency, max_size=QUEUE_SIZE)
    try:
        page.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=True,
                    ssr_mode=False, theme=gr.themes.Base(font=SANS, font_mono=MONO), css=CSS,
                    allowed_paths=[str(Path(session.workdir))])
    except OSError as err:
        reason = str(err).split(". ")[0]
        raise PurrError(f"cannot serve on {host}:{port} ({reason}); pass another --port or --host") from None
    finally:
        session.close()
