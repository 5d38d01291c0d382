"""The ``purr app`` page: a thin Gradio layer over :mod:`purrception.app.core`.

Importing this module imports gradio (the ``[app]`` extra); only ``purr app`` does. Nothing on the page comes from
the network: analytics and the version check are off, the theme uses the system's fonts (no web fonts), there is
no share link, and the page is served from the address given (localhost by default). Requests wait in a queue,
one at a time per kind of request (a grid, an image's uncertainty, an edit, a completion's uncertainty), and the
forms cap the size of a request. In front of gradio, :class:`~purrception.app.guard.RequestGuard` refuses uploads
over :data:`~purrception.app.guard.MAX_UPLOAD_BYTES`, uploads that are not images, and paths with ``..``; files
are served only from the session's downloads and gradio's cache of the page's own results and uploads. Two tabs:
*Sample* (the grid) and *Edit* (inpaint an image of the grid or an upload).
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
from starlette.middleware import Middleware  # noqa: E402  (a dependency of gradio's)

from purrception.app.core import (  # noqa: E402
    CLASS_MODES,
    CLASS_OWN,
    REGION_CHOICES,
    SOLVER_CHOICES,
    TAU_CONSTANT,
    TAU_MODES,
    TAU_SCHEDULE,
    AppSession,
    EditSource,
    display_factor,
    gallery_items,
    pixel_to_position,
    to_rgb,
    upscale,
)
from purrception.app.guard import MAX_UPLOAD_BYTES, RequestGuard  # noqa: E402
from purrception.errors import PurrError  # noqa: E402
from purrception.sampling.schedules import SHAPES  # noqa: E402

__all__ = ["build_page", "serve", "OFFLINE_ENV", "QUEUE_SIZE", "MIN_GRADIO"]

log = logging.getLogger(__name__)

#: the first gradio whose page loads no script from a CDN (earlier ones fetch iframe-resizer from one)
MIN_GRADIO = (6, 17)
#: requests waiting beyond this many are turned away with a message (rather than waiting for minutes); one runs at
#: a time, so memory stays that of one request however many wait
QUEUE_SIZE = 32
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

EDIT_INTRO = """\
Complete an image with the model (`purr edit`): pick an image of the *Sample* tab's grid (click it below) or
upload one, choose what to **keep** (a region, `not:REGION` for the rest, or a pixel box `x0,y0,x1,y1` at the
tokenizer's resolution; a code is kept only if its whole footprint is), the class of the completions and how many.
Kept codes ride their own path to their code; the rest is generated around them. Completion k depends only on
(seed, k). Click a completion for the posterior's entropy over t: bright where the model is inventing.
"""


def build_page(session: AppSession) -> gr.Blocks:
    """The page's Blocks for ``session`` (not yet queued or launched); errors show as ``session.error_message``
    words them."""
    names = session.class_names
    limits = session.limits
    size = session.image_size

    def _refuse(err: PurrError) -> gr.Error:
        return gr.Error(session.error_message(err))

    def generate(classes, num, tau_mode, tau, tau_end, shape, cfg, steps, solver, seed):
        try:
            request = session.parse(classes, num, tau_mode, tau, tau_end, shape, cfg, steps, solver, seed)
            result = session.generate(request)
        except PurrError as err:
            raise _refuse(err) from None
        items = gallery_items(result.pixels, result.labels, names, display_factor(result.pixels.shape[1:3]))
        state = {"request": request, "size": tuple(result.pixels.shape[1:3]), "pixels": result.pixels,
                 "labels": result.labels}
        return (items, result.summary(), result.command, [str(result.archive), str(result.script)], state, None,
                None, [], [], "Click an image of the grid above.", items)

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

    def pick_source(state, evt: gr.SelectData):
        if not state:
            raise gr.Error("generate a grid in the Sample tab first")
        try:
            source = EditSource.from_grid(state["request"], state["pixels"], state["labels"], int(evt.index))
        except PurrError as err:
            raise _refuse(err) from None
        big = upscale(to_rgb(source.pixels), display_factor(source.pixels.shape[:2]))
        return big, source, f"Image {source.index} of the grid (class {names[source.label]})."

    def upload_source(image):
        try:
            source = session.upload_source(image)
        except PurrError as err:
            raise _refuse(err) from None
        return source, "An uploaded image, brought to the tokenizer's resolution (its own class: unconditional)."

    def run_edit(source, region, box, class_mode, class_name, num_edits, tau_, cfg_, steps_, solver_, seed_):
        try:
            request = session.parse_edit(source, region, box, class_mode, class_name, num_edits, tau_, cfg_, steps_,
                                         solver_, seed_)
            result = session.edit(source, request)
        except PurrError as err:
            raise _refuse(err) from None
        return (result.overview_items(), result.completion_items(names), result.summary(), result.command,
                [str(f) for f in result.files], result, [], "Click a completion above.")

    def pick_completion(run_state, evt: gr.SelectData):
        if run_state is None:
            raise gr.Error("run an edit first")
        try:
            found = session.inspect_edit(run_state, int(evt.index))
        except PurrError as err:
            raise _refuse(err) from None
        return found.entropy_gallery(), found.summary(names)

    def tau_fields(mode):
        schedule = mode == TAU_SCHEDULE
        return gr.update(label="τ start" if schedule else "τ"), gr.update(visible=schedule), gr.update(visible=schedule)

    # gradio keeps its own copies of the results: drop them after an hour, and all of them at exit
    with gr.Blocks(title="purr app", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"## Purrception\n{session.describe()}")
        with gr.Tabs():
            with gr.Tab("Sample", id="sample", elem_id="sample-tab"):
                gr.Markdown(INTRO)
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        classes = gr.Dropdown(choices=names, value=[], multiselect=True, label="classes",
                                              info="none picked: every class, in turn", elem_id="classes")
                        num = gr.Slider(1, limits.max_images, value=min(8, limits.max_images), step=1,
                                        label="number of images", elem_id="num")
                        tau_mode = gr.Radio(list(TAU_MODES), value=TAU_CONSTANT, label="temperature",
                                            elem_id="tau-mode")
                        with gr.Row():
                            tau = gr.Number(value=1.0, label="τ", elem_id="tau")
                            tau_end = gr.Number(value=0.6, label="τ end", visible=False, elem_id="tau-end")
                            shape = gr.Dropdown(choices=list(SHAPES), value="linear", label="shape", visible=False,
                                                elem_id="tau-shape")
                        cfg = gr.Number(value=1.0, label="guidance scale (1 = off)", elem_id="cfg")
                        steps = gr.Slider(1, limits.max_steps, value=min(16, limits.max_steps), step=1, label="steps",
                                          elem_id="steps")
                        solver = gr.Dropdown(choices=list(SOLVER_CHOICES), value="euler", label="solver",
                                             elem_id="solver")
                        seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
                        run = gr.Button("Generate", variant="primary", elem_id="generate")
                    with gr.Column(scale=2):
                        grid = gr.Gallery(label="results (click one)", columns=4, format="png",
                                          object_fit="contain", allow_preview=False, height="auto", elem_id="grid",
                                          elem_classes="purr-pixels")
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
            with gr.Tab("Edit", id="edit", elem_id="edit-tab"):
                gr.Markdown(EDIT_INTRO)
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        pick = gr.Gallery(label="pick an image of the grid", columns=4, format="png",
                                          object_fit="contain", allow_preview=False, height=GALLERY_HEIGHT // 2,
                                          elem_id="edit-pick", elem_classes="purr-pixels")
                        source_image = gr.Image(label="the image to complete (or upload one)", sources=["upload"],
                                                type="numpy", format="png", elem_id="edit-source",
                                                elem_classes="purr-pixels", height=GALLERY_HEIGHT)
                        source_info = gr.Markdown(elem_id="edit-source-info")
                        region = gr.Radio(list(REGION_CHOICES), value="top", label="keep", elem_id="edit-region")
                        box = gr.Textbox(value=f"0,0,{size},{size // 2}", label=f"box x0,y0,x1,y1 (pixels of the "
                                         f"{size}×{size} image; read when keep is the box)", max_lines=1,
                                         elem_id="edit-box")
                        class_mode = gr.Radio(list(CLASS_MODES), value=CLASS_OWN, label="class of the completions",
                                              elem_id="edit-class-mode")
                        edit_class = gr.Dropdown(choices=names, value=None, label="the chosen class",
                                                 elem_id="edit-class")
                        edit_num = gr.Slider(1, limits.max_images, value=min(4, limits.max_images), step=1,
                                             label="number of completions", elem_id="edit-num")
                        with gr.Row():
                            edit_tau = gr.Number(value=1.0, label="τ", elem_id="edit-tau")
                            edit_cfg = gr.Number(value=1.0, label="guidance scale", elem_id="edit-cfg")
                        edit_steps = gr.Slider(1, limits.max_steps, value=min(16, limits.max_steps), step=1,
                                               label="steps", elem_id="edit-steps")
                        with gr.Row():
                            edit_solver = gr.Dropdown(choices=list(SOLVER_CHOICES), value="euler", label="solver",
                                                      elem_id="edit-solver")
                            edit_seed = gr.Number(value=0, precision=0, label="seed", elem_id="edit-seed")
                        edit_run = gr.Button("Run", variant="primary", elem_id="edit-run")
                    with gr.Column(scale=2):
                        overview = gr.Gallery(label="source and mask (white: kept codes)", columns=2, format="png",
                                              object_fit="contain", allow_preview=False, height=GALLERY_HEIGHT,
                                              elem_id="edit-overview", elem_classes="purr-pixels")
                        completions = gr.Gallery(label="completions (click one)", columns=4, format="png",
                                                 object_fit="contain", allow_preview=False, height="auto",
                                                 elem_id="edit-results", elem_classes="purr-pixels")
                        edit_status = gr.Markdown(elem_id="edit-status")
                        edit_command = gr.Code(label="the purr edit command that makes these completions",
                                               language="shell", interactive=False, lines=2, wrap_lines=True,
                                               elem_id="edit-command")
                        edit_files = gr.File(label="download: the command (and an uploaded source)",
                                             file_count="multiple", interactive=False, elem_id="edit-downloads")
                with gr.Column(elem_id="edit-uncertainty"):
                    gr.Markdown("### Where the model invents: the clicked completion's posterior")
                    edit_entropy = gr.Gallery(label="posterior entropy per position, over t (kept codes: 0)",
                                              columns=len(session.times), format="png", object_fit="contain",
                                              allow_preview=False, height=GALLERY_HEIGHT, elem_id="edit-entropy",
                                              elem_classes="purr-pixels")
                    edit_about = gr.Markdown(elem_id="edit-inspect-info")
        state = gr.State(None)
        index = gr.State(None)
        source = gr.State(None)
        edit_state = gr.State(None)

        tau_mode.change(tau_fields, tau_mode, [tau, tau_end, shape], queue=False)
        run.click(generate, [classes, num, tau_mode, tau, tau_end, shape, cfg, steps, solver, seed],
                  [grid, status, command, files, state, index, picked, entropy, topk, about, pick],
                  api_name="generate")
        grid.select(pick_image, state, [index, picked, entropy, topk, about], api_name="inspect_image")
        picked.select(pick_position, [state, index], [picked, entropy, topk, about], api_name="inspect_position")
        pick.select(pick_source, state, [source_image, source, source_info], api_name="edit_source")
        source_image.upload(upload_source, source_image, [source, source_info], api_name="upload_source")
        source_image.clear(lambda: (None, ""), None, [source, source_info], queue=False)
        edit_run.click(run_edit, [source, region, box, class_mode, edit_class, edit_num, edit_tau, edit_cfg,
                                  edit_steps, edit_solver, edit_seed],
                       [overview, completions, edit_status, edit_command, edit_files, edit_state, edit_entropy,
                        edit_about], api_name="edit")
        completions.select(pick_completion, edit_state, [edit_entropy, edit_about], api_name="inspect_edit")
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
                    allowed_paths=[str(Path(session.workdir))], max_file_size=MAX_UPLOAD_BYTES,
                    app_kwargs={"middleware": [Middleware(RequestGuard)]})
    except OSError as err:
        reason = str(err).split(". ")[0]
        raise PurrError(f"cannot serve on {host}:{port} ({reason}); pass another --port or --host") from None
    finally:
        session.close()
