"""What the ``purr app`` page does, as plain functions and classes (no gradio, no browser).

- :func:`parse_form` reads the form's values into a :class:`SampleRequest` and refuses bad ones with a
  :class:`~purrception.errors.PurrError` whose message the page shows: the knobs' own rules are
  :class:`~purrception.sampling.settings.SamplerSettings`' (τ ≤ 0, a malformed schedule, steps ≤ 0), the app adds
  its limits (more images or steps than it serves, an adaptive solver).
- :meth:`SampleRequest.pipeline_kwargs` are the arguments of :class:`~purrception.pipeline.PurrceptionPipeline`;
  the command that makes the same images again (image ``i`` depends only on ``(seed, i)``, and the temperature
  travels as the same spec string) comes from the session's :data:`CommandBuilder`. ``purr app`` gives it the
  ``purr sample`` command line and the CLI's translation of parameter names into flags; a library user of
  :class:`AppSession` gets :func:`python_command` and messages that name the Python parameters, unless they pass
  their own.
- :class:`AppSession` runs a pipeline for the page: a grid of results (:class:`Generation`, with an archive of the
  PNGs and the command), and, for one image of the grid regenerated alone (``first_index=i``), the posterior's
  per-position entropy maps over ``t`` and the top-``k`` codes at a clicked position, decoded side by side
  (:class:`Inspection`, from ``generation.uncertainty``).
- :func:`gallery_items`, :func:`entropy_items`, :func:`topk_items`, :func:`mark_position` and
  :func:`pixel_to_position` compose the images the page shows and map a click on the enlarged image to a latent
  position.
"""

from __future__ import annotations

import itertools
import math
import shlex
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from purrception.errors import PurrError
from purrception.generation.generate import balanced_labels, check_labels, repeat_labels
from purrception.generation.uncertainty import entropy_heatmap
from purrception.sampling.grid import save_sample_folder
from purrception.sampling.schedules import Schedule
from purrception.sampling.settings import SamplerSettings

__all__ = ["Limits", "SampleRequest", "parse_form", "AppSession", "Generation", "Inspection", "TAU_MODES",
           "SOLVER_CHOICES", "UNCERTAINTY_TIMES", "TOPK", "COMMAND_OUT", "CommandBuilder", "python_command",
           "to_rgb", "upscale", "display_factor", "pixel_to_position", "mark_position", "gallery_items",
           "entropy_items", "topk_items", "write_archive"]

#: the temperature's two forms on the page: one number, or a schedule from a start value to an end value over t
TAU_CONSTANT, TAU_SCHEDULE = "constant", "start → end"
TAU_MODES = (TAU_CONSTANT, TAU_SCHEDULE)
#: the fixed-grid solvers (an adaptive one has no bound on its cost per request)
SOLVER_CHOICES = ("euler", "heun", "midpoint")
#: when the entropy maps are read (snapped to the sampling grid), and how many codes the top-k strip shows
UNCERTAINTY_TIMES = (0.0, 0.25, 0.5, 0.75, 0.95)
TOPK = 5
#: ``--out`` of the reproducing command, and the folder inside the downloaded archive
COMMAND_OUT = "purr-samples"
ARCHIVE_FOLDER = "purr-app-samples"
#: the enlarged images are about this many pixels on their longer side
DISPLAY_SIDE = 224
#: the outline drawn around the clicked position
MARK_COLOR = (0, 230, 255)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, so that no request holds the queue for long (the page's slider maxima)."""

    max_images: int = 16
    max_steps: int = 64

    def __post_init__(self) -> None:
        if self.max_images < 1 or self.max_steps < 1:
            raise PurrError(f"the app's limits must be positive, got {self.max_images} images, {self.max_steps} steps")


class CommandBuilder(Protocol):
    """Makes the command that writes a request's images again: ``purr sample``'s
    (``purrception.cli.sample.sample_command``, what ``purr app`` passes) or :func:`python_command` (the default).

    ``classes`` ``None`` means every class in turn (``0, 1, ..., C-1, 0, ...``); with ``uncertainty_times`` (and
    ``topk``, ``position``) the command also reads the posterior along the way.
    """

    def __call__(self, source: str, sampler: SamplerSettings, out: str, classes: Sequence[int] | None = None,
                 num: int | None = None, seed: int = 0, uncertainty_times: Sequence[float] | None = None,
                 topk: int = 0, position: tuple[int, int] | None = None) -> str: ...


def python_command(source: str, sampler: SamplerSettings, out: str, classes: Sequence[int] | None = None,
                   num: int | None = None, seed: int = 0, uncertainty_times: Sequence[float] | None = None,
                   topk: int = 0, position: tuple[int, int] | None = None) -> str:
    """The default :data:`CommandBuilder` of :class:`AppSession`: ``python -c '...'`` that loads ``source`` with
    :class:`~purrception.pipeline.PurrceptionPipeline`, calls it with the request's labels and knobs, and writes
    the images into ``out`` as ``purr sample`` does (``NNNNN_classY.png``, ``grid.png``, ``samples.npz``)."""
    knobs = sampler.record()
    count = 8 * (1 if classes is None else len(classes)) if num is None else int(num)
    labels = (f"[i % pipe.num_classes for i in range({count})]" if classes is None
              else repr(repeat_labels(classes, count).tolist()))
    call = (f"class_labels={labels}, num_inference_steps={knobs['sample_steps']}, tau={knobs['tau']!r}, "
            f"guidance_scale={knobs['cfg_scale']!r}, solver={knobs['solver']!r}, seed={int(seed)}")
    if uncertainty_times is not None:
        call += f", uncertainty_times={[float(t) for t in uncertainty_times]!r}"
        if position is not None and topk > 0:
            call += f", topk={int(topk)}, position={tuple(position)!r}"
    code = ("import pathlib; from purrception import PurrceptionPipeline; "
            "from purrception.sampling.grid import save_sample_folder; "
            f"pipe = PurrceptionPipeline.from_pretrained({str(source)!r}); out = pipe({call}); "
            f"pathlib.Path({str(out)!r}).mkdir(parents=True, exist_ok=True); "
            f"save_sample_folder({str(out)!r}, out.pixels, out.labels)")
    return "python -c " + shlex.quote(code)


@dataclass(frozen=True)
class SampleRequest:
    """One press of *Generate*: the knobs of :class:`~purrception.pipeline.PurrceptionPipeline`, checked.

    Attributes:
        classes: class ids, each repeated in turn to fill ``num_images`` (``purr sample --classes 3,7``), or
            ``None`` for every class, balanced (``--classes all``).
        num_images: how many images.
        tau: the temperature's spec, a number (``"0.8"``) or ``SHAPE:START:END``, passed as is to the pipeline
            and to the reproducing command.
        cfg_scale: classifier-free guidance scale (1 = off).
        sample_steps: integration steps.
        solver: a fixed-grid solver.
        seed: image ``i`` uses the noise of ``(seed, i)``.
    """

    classes: tuple[int, ...] | None
    num_images: int
    tau: str
    cfg_scale: float
    sample_steps: int
    solver: str
    seed: int

    def labels(self, num_classes: int) -> np.ndarray:
        """The class of each image, as ``purr sample`` assigns them."""
        if self.classes is None:
            return balanced_labels(self.num_images, num_classes)
        labels = repeat_labels(self.classes, self.num_images)
        check_labels(labels, num_classes)
        return labels

    def sampler(self) -> SamplerSettings:
        """The request's knobs, checked by :class:`SamplerSettings`."""
        return SamplerSettings(sample_steps=self.sample_steps, tau=self.tau, cfg_scale=self.cfg_scale,
                               solver=self.solver)

    def sampler_kwargs(self) -> dict[str, Any]:
        """The knobs as the pipeline's call takes them (diffusers' names for the steps and the guidance scale)."""
        return {"num_inference_steps": self.sample_steps, "tau": self.tau, "guidance_scale": self.cfg_scale,
                "solver": self.solver, "seed": self.seed}

    def pipeline_kwargs(self, num_classes: int) -> dict[str, Any]:
        """Arguments of the pipeline call that makes the whole grid."""
        return {"class_labels": self.labels(num_classes).tolist(), "num_per_class": 1, **self.sampler_kwargs()}

    def image_kwargs(self, index: int, num_classes: int, times: Sequence[float] = UNCERTAINTY_TIMES, topk: int = 0,
                     position: tuple[int, int] | None = None) -> dict[str, Any]:
        """Arguments that regenerate image ``index`` of the grid alone, reading its posterior along the way."""
        labels = self.labels(num_classes)
        if not 0 <= index < len(labels):
            raise PurrError(f"image {index} is not in this grid of {len(labels)}; generate again and pick one")
        return {"class_labels": [int(labels[index])], "num_per_class": 1, "first_index": int(index),
                "uncertainty_times": list(times), "topk": topk if position is not None else 0,
                "position": position, **self.sampler_kwargs()}

    def command(self, build: CommandBuilder, source: str, out: str = COMMAND_OUT,
                times: Sequence[float] | None = None, topk: int = 0, position: tuple[int, int] | None = None) -> str:
        """The command ``build`` makes for these images; with ``times`` (and ``topk``, ``position``) also the same
        entropy maps and top-k strips."""
        return build(source, self.sampler(), out, classes=self.classes, num=self.num_images, seed=self.seed,
                     uncertainty_times=times, topk=topk, position=position)


# -- reading the form -------------------------------------------------------------------------------------------


def _number(value: float) -> str:
    """The shortest text that reads back as exactly this float (``0.8``, ``1.0``, ``1e-05``)."""
    return repr(float(value))


def _finite(value: Any, name: str) -> float:
    """A form's number (gradio gives floats, or ``None`` for an empty field) as a float."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise PurrError(f"`{name}` is empty; give a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PurrError(f"`{name}` must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise PurrError(f"`{name}` must be a finite number, got {value!r}")
    return number


def _whole(value: Any, name: str) -> int:
    """A form's whole number (sliders give floats like ``12.0``) as an ``int``."""
    number = _finite(value, name)
    if number != int(number):
        raise PurrError(f"`{name}` must be a whole number, got {number:g}")
    return int(number)


def _at_most(value: int, name: str, high: int, limit: str) -> int:
    if value > high:
        raise PurrError(f"`{name}` is at most {high} in this app (start it with a larger `{limit}` to allow more), "
                        f"got {value}")
    return value


def _tau_spec(mode: str, tau: Any, tau_end: Any, shape: str) -> str:
    """The temperature's spec from the form (its rules are SamplerSettings')."""
    if mode == TAU_CONSTANT:
        return _number(_finite(tau, "tau"))
    if mode == TAU_SCHEDULE:
        return Schedule(shape, _finite(tau, "tau"), _finite(tau_end, "tau")).spec
    raise PurrError(f"`tau_mode` is either {' or '.join(repr(m) for m in TAU_MODES)}, got {mode!r}")


def _class_ids(selected: Sequence[Any] | None, class_names: Sequence[str]) -> tuple[int, ...] | None:
    if not selected:
        return None
    by_name = {name: i for i, name in enumerate(class_names)}
    ids = []
    for item in selected:
        if isinstance(item, str) and item in by_name:
            ids.append(by_name[item])
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool) and 0 <= item < len(class_names):
            ids.append(int(item))
        else:
            raise PurrError(f"unknown class {item!r}; pick classes from the list")
    return tuple(ids)


def parse_form(classes: Sequence[Any] | None, num_images: Any, tau_mode: str, tau: Any, tau_end: Any,
               tau_shape: str, cfg_scale: Any, sample_steps: Any, solver: str, seed: Any, *,
               class_names: Sequence[str], limits: Limits = Limits()) -> SampleRequest:
    """The page's form -> a checked :class:`SampleRequest`.

    Args:
        classes: selected class names (or ids); empty: every class, balanced.
        num_images: how many images (1 .. ``limits.max_images``).
        tau_mode: :data:`TAU_CONSTANT` (``tau``) or :data:`TAU_SCHEDULE` (``tau`` at ``t = 0`` to ``tau_end`` at
            ``t = 1`` along ``tau_shape``).
        tau, tau_end: temperatures, > 0.
        tau_shape: a schedule shape (``linear``, ``cosine``).
        cfg_scale: a number (1 = no guidance).
        sample_steps: 1 .. ``limits.max_steps``.
        solver: one of :data:`SOLVER_CHOICES`.
        seed: a non-negative integer.
        class_names: the model's classes, in id order.
        limits: the largest request this app serves.

    Raises:
        PurrError: naming the parameter and the fix, for the page to show.
    """
    ids = _class_ids(classes, class_names)
    num = _whole(num_images, "num_images")
    if num < 1:
        raise PurrError(f"`num_images` must be a positive integer, got {num}")
    _at_most(num, "num_images", limits.max_images, "max_images")
    request = SampleRequest(classes=ids, num_images=num, tau=_tau_spec(tau_mode, tau, tau_end, tau_shape),
                            cfg_scale=_finite(cfg_scale, "cfg_scale"), sample_steps=_whole(sample_steps,
                                                                                            "sample_steps"),
                            solver=str(solver), seed=_whole(seed, "seed"))
    request.sampler()                                   # the knobs' own rules
    _at_most(request.sample_steps, "sample_steps", limits.max_steps, "max_steps")
    if request.solver not in SOLVER_CHOICES:
        raise PurrError(f"`solver` must be one of {', '.join(SOLVER_CHOICES)} in this app, got {solver!r}")
    if request.seed < 0:
        raise PurrError(f"`seed` must be a non-negative integer, got {request.seed}")
    return request


# -- images for the page ----------------------------------------------------------------------------------------


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` -> ``(H, W, 3)``."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer ``factor`` (codes stay crisp squares)."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image


def display_factor(size: tuple[int, int], side: int = DISPLAY_SIDE) -> int:
    """The integer enlargement that brings an image of ``size`` to about ``side`` pixels."""
    return max(1, side // max(size))


def pixel_to_position(x: float, y: float, size: tuple[int, int], latent: tuple[int, int]) -> tuple[int, int]:
    """A click at pixel ``(x, y)`` (column, row) of an image of ``size`` ``(H, W)`` -> the latent ``(row, col)``
    whose code covers it, in a code grid of ``latent`` ``(h, w)``."""
    (height, width), (h, w) = size, latent
    row = min(max(int(y) * h // height, 0), h - 1)
    col = min(max(int(x) * w // width, 0), w - 1)
    return row, col


def mark_position(image: np.ndarray, position: tuple[int, int], latent: tuple[int, int],
                  color: tuple[int, int, int] = MARK_COLOR) -> np.ndarray:
    """An RGB copy of ``image`` with an outline around the pixels of the code at ``position``."""
    out = to_rgb(image).copy()
    height, width = out.shape[:2]
    (h, w), (row, col) = latent, position
    top, bottom = row * height // h, (row + 1) * height // h
    left, right = col * width // w, (col + 1) * width // w
    edge = max(1, (bottom - top) // 12)
    box = out[top:bottom, left:right]
    box[:edge], box[-edge:], box[:, :edge], box[:, -edge:] = color, color, color, color
    return out


def gallery_items(pixels: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                  factor: int) -> list[tuple[np.ndarray, str]]:
    """The grid of results: each image enlarged, captioned with its index and class."""
    return [(upscale(to_rgb(p), factor), f"{i}: {class_names[int(label)]}")
            for i, (p, label) in enumerate(zip(pixels, labels))]


def entropy_items(entropy: np.ndarray, times: Sequence[float], max_entropy: float, size: tuple[int, int],
                  position: tuple[int, int] | None = None) -> list[tuple[np.ndarray, str]]:
    """One heat-map per time (``entropy`` ``(T, h, w)`` nats, 0 .. ``max_entropy`` on magma, black = certain),
    of ``size`` pixels, the clicked ``position`` outlined; captions give ``t`` and the mean entropy (nats)."""
    items = []
    for t, ent in zip(times, entropy):
        heat = entropy_heatmap(ent, max_entropy, size)
        if position is not None:
            heat = mark_position(heat, position, ent.shape)
        items.append((heat, f"t={t:.2f}: {float(ent.mean()):.2f}"))
    return items


def topk_items(candidates: np.ndarray, codes: Sequence[int], probs: Sequence[float], factor: int,
               position: tuple[int, int], latent: tuple[int, int]) -> list[tuple[np.ndarray, str]]:
    """The image decoded with ``position``'s code replaced by each candidate (most probable first), enlarged and
    outlined there, captioned with the code and its probability under the final posterior."""
    return [(mark_position(upscale(to_rgb(image), factor), position, latent), f"code {int(code)}: p = {float(p):.3f}")
            for image, code, p in zip(candidates, codes, probs)]


def write_archive(path: Path, pixels: np.ndarray, labels: np.ndarray, command: str) -> Path:
    """A zip of what ``purr sample`` would write for these images (PNGs, ``grid.png``, ``samples.npz``) and a
    ``command.sh`` holding the command that makes them again, all in one folder :data:`ARCHIVE_FOLDER`."""
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        folder = Path(tmp)
        save_sample_folder(folder, pixels, labels)
        (folder / "command.sh").write_text(_command_script(command))
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.iterdir()):
                archive.write(file, f"{ARCHIVE_FOLDER}/{file.name}")
    return path


def _command_script(command: str) -> str:
    return ("#!/bin/sh\n# Made by purr app: this command writes the same images again (image i depends only on\n"
            "# (seed, i)); run it where the model's path is valid.\n" + command + "\n")


# -- running the pipeline for the page --------------------------------------------------------------------------


@dataclass
class Generation:
    """One grid of results and its downloads."""

    request: SampleRequest
    pixels: np.ndarray
    labels: np.ndarray
    seconds: float
    command: str
    archive: Path
    script: Path

    def summary(self) -> str:
        return (f"{len(self.labels)} images in {self.seconds:.1f} s (τ {self.request.tau}, guidance "
                f"{self.request.cfg_scale:g}, {self.request.sample_steps} {self.request.solver} steps, seed "
                f"{self.request.seed}). Click an image to see the posterior's uncertainty.")


@dataclass
class Inspection:
    """What the posterior said along one image's trajectory (regenerated alone with ``first_index``)."""

    index: int
    label: int
    image: np.ndarray                        # uint8 (H, W[, C])
    latent: tuple[int, int]
    times: list[float]
    entropy: np.ndarray                      # (T, h, w) nats
    max_entropy: float
    position: tuple[int, int] | None = None
    topk_codes: list[int] = field(default_factory=list)
    topk_probs: list[float] = field(default_factory=list)
    candidates: np.ndarray | None = None     # (k, H, W[, C])
    final_time: float = 1.0
    command: str = ""

    @property
    def factor(self) -> int:
        return display_factor(self.image.shape[:2])

    def enlarged(self) -> np.ndarray:
        """The image as the page shows it (click it to pick a position), the picked position outlined."""
        big = upscale(to_rgb(self.image), self.factor)
        return big if self.position is None else mark_position(big, self.position, self.latent)

    def entropy_gallery(self) -> list[tuple[np.ndarray, str]]:
        size = self.enlarged().shape[:2]
        return entropy_items(self.entropy, self.times, self.max_entropy, size, self.position)

    def topk_gallery(self) -> list[tuple[np.ndarray, str]]:
        if self.candidates is None or self.position is None:
            return []
        return topk_items(self.candidates, self.topk_codes, self.topk_probs, self.factor, self.position, self.latent)

    def summary(self, class_names: Sequence[str]) -> str:
        head = (f"**Image {self.index}** (class {class_names[self.label]}), regenerated alone. Entropy of the "
                f"posterior π = softmax(ℓ/τ) at each position, from 0 (black: one code) to log K = "
                f"{self.max_entropy:.2f} nats (bright), at t = {', '.join(f'{t:.2f}' for t in self.times)} "
                "(captions: t and the mean over positions).")
        if self.position is None:
            tail = " Click a position on the enlarged image for its most probable codes."
        else:
            tail = (f" At position {self.position}: the top {len(self.topk_codes)} codes of the final posterior "
                    f"(t = {self.final_time:.2f}), each decoded in place.")
        return head + tail + f"\n\nThe same maps from the command line (image {self.index:05d}):\n`{self.command}`"


class AppSession:
    """A pipeline serving the page: grids of results and the uncertainty of one image.

    Args:
        pipe: a loaded :class:`~purrception.pipeline.PurrceptionPipeline`.
        source: the path it was loaded from, as the reproducing command names it.
        limits: the largest request served.
        times: when the entropy maps are read.
        topk: how many alternative codes the strip shows.
        workdir: where the downloads are written (default: a new temporary folder; :meth:`close` removes it).
        command: makes the command that writes a result again (default :func:`python_command`, a ``python -c``
            line; ``purr app`` passes the ``purr sample`` command line).
        explain: rewrites an error message for the page (default: unchanged, naming the Python parameters;
            ``purr app`` passes the CLI's translation into flags).
    """

    def __init__(self, pipe: Any, source: str | Path, limits: Limits = Limits(),
                 times: Sequence[float] = UNCERTAINTY_TIMES, topk: int = TOPK, workdir: str | Path | None = None,
                 command: CommandBuilder = python_command, explain: Callable[[str], str] = str):
        self.pipe = pipe
        self.command = command
        self.explain = explain
        self.source = str(source)
        self.limits = limits
        self.times = tuple(times)
        self.topk = min(int(topk), pipe.method.codebook_size)
        self._tmp = tempfile.TemporaryDirectory(prefix="purr-app-") if workdir is None else None
        self.workdir = Path(self._tmp.name if self._tmp else workdir)
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def class_names(self) -> list[str]:
        return self.pipe.class_names

    @property
    def latent(self) -> tuple[int, int]:
        side = int(self.pipe.model.config.input_size)
        return side, side

    def describe(self) -> str:
        """One line on the model for the page's header."""
        info, method = self.pipe.info, self.pipe.method
        step = info.get("step")
        side = self.latent[0]
        names = ", ".join(self.class_names[:10]) + (", ..." if self.pipe.num_classes > 10 else "")
        return (f"`{self.source}`: {method.name}, {self.pipe.num_classes} classes ({names}), K = "
                f"{method.codebook_size} codes on a {side}×{side} grid"
                + (f", trained {step} steps" if step is not None else "") + ".")

    def error_message(self, err: PurrError) -> str:
        """What the page shows for ``err``: its message through :attr:`explain`."""
        return self.explain(str(err))

    def parse(self, *values: Any) -> SampleRequest:
        """:func:`parse_form` with this model's classes and this app's limits."""
        return parse_form(*values, class_names=self.class_names, limits=self.limits)

    def generate(self, request: SampleRequest) -> Generation:
        """Make the grid for ``request`` and write its downloads."""
        start = time.perf_counter()
        out = self.pipe(**request.pipeline_kwargs(self.pipe.num_classes))
        seconds = time.perf_counter() - start
        with self._lock:
            folder = self.workdir / f"{next(self._counter):05d}"
        folder.mkdir(parents=True)
        command = request.command(self.command, self.source)
        script = folder / "purr-app-command.sh"
        script.write_text(_command_script(command))
        archive = write_archive(folder / f"{ARCHIVE_FOLDER}.zip", out.pixels, out.labels, command)
        return Generation(request, out.pixels, out.labels, seconds, command, archive, script)

    def inspect(self, request: SampleRequest, index: int, position: tuple[int, int] | None = None) -> Inspection:
        """Regenerate image ``index`` of ``request``'s grid alone and read its posterior: the entropy maps at
        :attr:`times` and, with ``position``, the top-``k`` codes there, decoded."""
        if not self.pipe.has_posterior:
            raise PurrError(f"this model ({self.pipe.method.name}) has no categorical posterior over codes; the "
                            "uncertainty panel needs a purrception model")
        if position is not None:
            h, w = self.latent
            if not (0 <= position[0] < h and 0 <= position[1] < w):
                raise PurrError(f"position {position} is outside the {h}x{w} code grid")
        out = self.pipe(**request.image_kwargs(index, self.pipe.num_classes, self.times, self.topk, position))
        trace = out.uncertainty
        found = position is not None and out.candidates is not None
        return Inspection(
            index=index, label=int(out.labels[0]), image=out.pixels[0], latent=self.latent,
            times=list(trace.times), entropy=trace.entropy[0].numpy(),
            max_entropy=float(np.log(self.pipe.method.codebook_size)), position=position,
            topk_codes=trace.topk_codes[0].tolist() if found else [],
            topk_probs=trace.topk_probs[0].tolist() if found else [],
            candidates=out.candidates[0] if found else None, final_time=float(trace.final_time),
            command=request.command(self.command, self.source, times=self.times, topk=self.topk, position=position))

    def close(self) -> None:
        """Remove the downloads folder this session made."""
        if self._tmp is not None:
            self._tmp.cleanup()
