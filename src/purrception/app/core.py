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
- The Edit tab: an :class:`EditSource` (an image of the grid, with its class and the command that makes it, or an
  upload brought to the tokenizer's resolution), :func:`parse_edit_form` -> :class:`EditRequest` (a region of
  :data:`REGION_CHOICES` or a pixel box to keep, a class, ``N`` completions, the knobs), :meth:`AppSession.edit`
  (:meth:`~purrception.pipeline.PurrceptionPipeline.inpaint`, an :class:`EditRun` with the ``purr edit`` command
  from the session's :data:`EditCommandBuilder`) and :meth:`AppSession.inspect_edit`: one completion regenerated
  alone, the posterior's entropy read along its editing trajectory (:class:`EditInspection`,
  ``generation.uncertainty.trace_edit``).
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
import torch

from purrception.errors import PurrError
from purrception.generation.editing import REGIONS, EditOutput, keep_mask, prepare_images
from purrception.generation.generate import balanced_labels, check_labels, repeat_labels
from purrception.generation.uncertainty import entropy_heatmap, trace_edit_labels
from purrception.sampling.grid import save_png, save_sample_folder
from purrception.sampling.schedules import Schedule
from purrception.sampling.settings import SamplerSettings

__all__ = ["Limits", "SampleRequest", "parse_form", "AppSession", "Generation", "Inspection", "TAU_MODES",
           "SOLVER_CHOICES", "UNCERTAINTY_TIMES", "TOPK", "COMMAND_OUT", "CommandBuilder", "python_command",
           "to_rgb", "upscale", "display_factor", "pixel_to_position", "mark_position", "gallery_items",
           "entropy_items", "topk_items", "write_archive", "EditCommandBuilder", "python_edit_command", "EditSource",
           "EditRequest", "parse_edit_form", "EditRun", "EditInspection", "CLASS_MODES", "REGION_CHOICES",
           "REGION_BOX", "EDIT_OUT", "EDIT_INPUT", "mask_image"]

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
#: the Edit tab: the class of the completions (the source's own, one picked from the list, or none), the regions
#: it offers (:data:`REGION_BOX` reads the box field), and the reproducing command's ``--out`` and uploaded input
CLASS_OWN, CLASS_CHOSEN, CLASS_NONE = "the image's own", "a chosen class", "unconditional"
CLASS_MODES = (CLASS_OWN, CLASS_CHOSEN, CLASS_NONE)
REGION_BOX = "box x0,y0,x1,y1"
REGION_CHOICES = (*REGIONS, *(f"not:{r}" for r in REGIONS), REGION_BOX)
EDIT_OUT = "purr-edits"
EDIT_INPUT = "purr-edit-source.png"
#: the enlarged images are about this many pixels on their longer side
DISPLAY_SIDE = 224
#: the outline drawn around the clicked position
MARK_COLOR = (0, 230, 255)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, so that no request holds the queue for long (the page's slider maxima):
    ``max_images`` caps a grid and the Edit tab's number of completions, ``max_steps`` the steps of either."""

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


def _check_in_app(request: SampleRequest | EditRequest, limits: Limits) -> None:
    """The knobs' own rules (:class:`SamplerSettings`), then this app's: at most ``max_steps`` steps, a fixed-grid
    solver, a non-negative seed."""
    request.sampler()
    _at_most(request.sample_steps, "sample_steps", limits.max_steps, "max_steps")
    if request.solver not in SOLVER_CHOICES:
        raise PurrError(f"`solver` must be one of {', '.join(SOLVER_CHOICES)} in this app, got {request.solver!r}")
    if request.seed < 0:
        raise PurrError(f"`seed` must be a non-negative integer, got {request.seed}")


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
    _check_in_app(request, limits)
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


# -- the Edit tab -----------------------------------------------------------------------------------------------


class EditCommandBuilder(Protocol):
    """Makes the command that writes an edit's completions again from the one image file ``image``: ``purr edit``'s
    (``purrception.cli.edit.edit_command``, what ``purr app`` passes) or :func:`python_edit_command` (the default).
    ``class_label`` ``None`` means unconditional."""

    def __call__(self, source: str, sampler: SamplerSettings, image: str, out: str, keep: str,
                 class_label: int | None, num_per_image: int = 1, seed: int = 0) -> str: ...


def python_edit_command(source: str, sampler: SamplerSettings, image: str, out: str, keep: str,
                        class_label: int | None, num_per_image: int = 1, seed: int = 0) -> str:
    """The default :data:`EditCommandBuilder` of :class:`AppSession`: ``python -c '...'`` that loads ``source``,
    calls :meth:`~purrception.pipeline.PurrceptionPipeline.inpaint` on ``image`` and writes completion ``k`` to
    ``out/NNNNN.png``."""
    knobs = sampler.record()
    call = (f"[Image.open({str(image)!r})], {str(keep)!r}, class_labels={[class_label]!r}, "
            f"num_per_image={int(num_per_image)}, num_inference_steps={knobs['sample_steps']}, tau={knobs['tau']!r}, "
            f"guidance_scale={knobs['cfg_scale']!r}, solver={knobs['solver']!r}, seed={int(seed)}")
    code = ("import pathlib; from PIL import Image; from purrception import PurrceptionPipeline; "
            "from purrception.sampling.grid import save_png; "
            f"pipe = PurrceptionPipeline.from_pretrained({str(source)!r}); out = pipe.inpaint({call}); "
            f"folder = pathlib.Path({str(out)!r}); folder.mkdir(parents=True, exist_ok=True); "
            "[save_png(folder / f'{k:05d}.png', p) for k, p in enumerate(out.pixels)]")
    return "python -c " + shlex.quote(code)


@dataclass(frozen=True)
class EditSource:
    """The image the Edit tab completes, at the tokenizer's resolution.

    Attributes:
        pixels: uint8 ``(H, W)`` or ``(H, W, C)``.
        label: its own class (an image of the grid), or ``None`` (an upload: it has none).
        index: which image of the grid (``None``: an upload).
        request: the grid it came from (``None``: an upload); its command writes the image again.
    """

    pixels: np.ndarray
    label: int | None = None
    index: int | None = None
    request: SampleRequest | None = None

    @classmethod
    def from_grid(cls, request: SampleRequest, pixels: np.ndarray, labels: np.ndarray, index: int) -> EditSource:
        """Image ``index`` of a grid ``request`` made (``pixels`` ``(N, H, W[, C])``, ``labels`` ``(N,)``)."""
        if not 0 <= index < len(pixels):
            raise PurrError(f"image {index} is not in this grid of {len(pixels)}; generate again and pick one")
        return cls(np.asarray(pixels[index], dtype=np.uint8), int(labels[index]), int(index), request)

    @classmethod
    def from_upload(cls, image: Any, size: int, channels: int) -> EditSource:
        """An uploaded image (uint8 array or PIL image), brought to ``size`` and ``channels`` as ``purr encode``
        brings images (:func:`~purrception.generation.editing.prepare_images`)."""
        if image is None:
            raise PurrError("`images` is empty; pick an image of the grid or upload one")
        return cls(prepare_images([image], size, channels)[0])

    def file_name(self) -> str:
        """The file the reproducing command reads: the grid command's PNG of this image, or the upload's."""
        if self.index is None:
            return EDIT_INPUT
        return f"{COMMAND_OUT}/{self.index:05d}_class{self.label}.png"


@dataclass(frozen=True)
class EditRequest:
    """One press of *Run* in the Edit tab, checked.

    Attributes:
        keep: the region to keep, as :meth:`~purrception.pipeline.PurrceptionPipeline.inpaint`'s ``keep`` takes it
            (``top``, ..., ``not:centre``, ``x0,y0,x1,y1``).
        class_label: the class of every completion, ``None`` for unconditional.
        num_per_image: how many completions.
        tau, cfg_scale, sample_steps, solver, seed: the sampler's knobs, as in :class:`SampleRequest`.
    """

    keep: str
    class_label: int | None
    num_per_image: int
    tau: str
    cfg_scale: float
    sample_steps: int
    solver: str
    seed: int

    def sampler(self) -> SamplerSettings:
        return SamplerSettings(sample_steps=self.sample_steps, tau=self.tau, cfg_scale=self.cfg_scale,
                               solver=self.solver)

    def inpaint_kwargs(self) -> dict[str, Any]:
        """Arguments of :meth:`~purrception.pipeline.PurrceptionPipeline.inpaint` after the images."""
        return {"keep": self.keep, "class_labels": [self.class_label], "num_per_image": self.num_per_image,
                "num_inference_steps": self.sample_steps, "tau": self.tau, "guidance_scale": self.cfg_scale,
                "solver": self.solver, "seed": self.seed}

    def command(self, build: EditCommandBuilder, source: str, image: str, out: str = EDIT_OUT) -> str:
        """The command ``build`` makes for these completions of the image file ``image``."""
        return build(source, self.sampler(), image, out, self.keep, self.class_label, self.num_per_image, self.seed)


def _region(region: Any, box: Any) -> str:
    if region == REGION_BOX:
        text = "" if box is None else str(box).strip()
        if not text:
            raise PurrError("`keep` is a box but the box is empty; give x0,y0,x1,y1 in pixels, e.g. 0,0,28,14")
        return text
    if region not in REGION_CHOICES:
        raise PurrError(f"`keep` must be one of {', '.join(REGION_CHOICES)}, got {region!r}")
    return str(region)


def parse_edit_form(source: EditSource | None, region: Any, box: Any, class_mode: str, class_name: Any,
                    num_per_image: Any, tau: Any, cfg_scale: Any, sample_steps: Any, solver: str, seed: Any, *,
                    class_names: Sequence[str], image_size: int, side: int,
                    limits: Limits = Limits()) -> EditRequest:
    """The Edit tab's form -> a checked :class:`EditRequest`.

    Args:
        source: the picked or uploaded image (``None``: none yet).
        region: one of :data:`REGION_CHOICES`: what to keep (``not:REGION`` keeps the rest).
        box: ``x0,y0,x1,y1`` in pixels at the tokenizer's resolution, read when ``region`` is :data:`REGION_BOX`.
        class_mode: one of :data:`CLASS_MODES` (the source's own class: unconditional for an upload).
        class_name: the class for :data:`CLASS_CHOSEN` (a name or an id).
        num_per_image: how many completions (1 .. ``limits.max_images``).
        tau, cfg_scale, sample_steps, solver, seed: as in :func:`parse_form` (``tau`` a number).
        class_names: the model's classes, in id order.
        image_size, side: the tokenizer's resolution and the code grid's side (a code is kept only if its whole
            footprint is: generation/editing.py).
        limits: the largest request this app serves.

    Raises:
        PurrError: naming the parameter and the fix, for the page to show.
    """
    if source is None:
        raise PurrError("`images` is empty; pick an image of the grid or upload one")
    keep = _region(region, box)
    try:
        grid = keep_mask(keep, 1, image_size, side)[0]
    except PurrError as err:
        raise PurrError(f"`keep`: {err}") from None
    if not grid.any():
        f = image_size // side
        raise PurrError(f"`keep` {keep!r} keeps no whole code (a code is kept only if all its {f}x{f} pixels are); "
                        "choose a larger region")
    if grid.all():
        raise PurrError(f"`keep` {keep!r} keeps every code, so nothing would be regenerated; choose a smaller region")
    if class_mode == CLASS_OWN:
        label = source.label
    elif class_mode == CLASS_NONE:
        label = None
    elif class_mode == CLASS_CHOSEN:
        if class_name is None or class_name == "" or class_name == []:
            raise PurrError("`class_labels` is empty; pick a class from the list (or the image's own, or "
                            "unconditional)")
        (label,) = _class_ids([class_name], class_names)
    else:
        raise PurrError(f"`class_labels` is one of {', '.join(repr(m) for m in CLASS_MODES)}, got {class_mode!r}")
    num = _whole(num_per_image, "num_per_image")
    if num < 1:
        raise PurrError(f"`num_per_image` must be a positive integer, got {num}")
    _at_most(num, "num_per_image", limits.max_images, "max_images")
    request = EditRequest(keep=keep, class_label=label, num_per_image=num, tau=_number(_finite(tau, "tau")),
                          cfg_scale=_finite(cfg_scale, "cfg_scale"),
                          sample_steps=_whole(sample_steps, "sample_steps"), solver=str(solver),
                          seed=_whole(seed, "seed"))
    _check_in_app(request, limits)
    return request


def mask_image(keep: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A code-grid mask ``(h, w)`` -> uint8 RGB ``size`` (white = kept, black = regenerated), nearest upsampling."""
    rows = (np.arange(size[0]) * keep.shape[0]) // size[0]
    cols = (np.arange(size[1]) * keep.shape[1]) // size[1]
    return to_rgb(np.where(keep[rows][:, cols], 255, 0).astype(np.uint8))


@dataclass
class EditRun:
    """The completions of one press of *Run* and how to make them again."""

    request: EditRequest
    source: EditSource
    output: EditOutput
    seconds: float
    command: str
    files: list[Path]

    @property
    def factor(self) -> int:
        return display_factor(self.output.sources.shape[1:3])

    def overview_items(self) -> list[tuple[np.ndarray, str]]:
        """The source and its mask (white: kept codes), enlarged."""
        big = upscale(to_rgb(self.output.sources[0]), self.factor)
        return [(big, "source"), (mask_image(self.output.keep[0], big.shape[:2]), "kept (white) / regenerated")]

    def completion_items(self, class_names: Sequence[str]) -> list[tuple[np.ndarray, str]]:
        return [(upscale(to_rgb(p), self.factor), f"{k}: {_class_caption(int(label), class_names)}")
                for k, (p, label) in enumerate(zip(self.output.pixels, self.output.labels))]

    def summary(self) -> str:
        kept = self.output.keep[0]
        return (f"{len(self.output.pixels)} completions in {self.seconds:.1f} s, keeping `{self.request.keep}` "
                f"({int(kept.sum())} of {kept.size} codes). Click a completion to see where the posterior was "
                "uncertain.")


def _class_caption(label: int, class_names: Sequence[str]) -> str:
    return "unconditional" if label >= len(class_names) else f"class {class_names[label]}"


@dataclass
class EditInspection:
    """What the posterior said along one completion's editing trajectory (regenerated alone)."""

    index: int
    label: int
    image: np.ndarray                        # uint8 (H, W[, C])
    keep: np.ndarray                         # (h, w) bool
    times: list[float]
    entropy: np.ndarray                      # (T, h, w) nats; 0 at kept codes
    max_entropy: float

    def entropy_gallery(self) -> list[tuple[np.ndarray, str]]:
        size = upscale(to_rgb(self.image), display_factor(self.image.shape[:2])).shape[:2]
        return entropy_items(self.entropy, self.times, self.max_entropy, size)

    def summary(self, class_names: Sequence[str]) -> str:
        regenerated = ~self.keep
        means = ", ".join(f"{float(e[regenerated].mean()):.2f}" for e in self.entropy)
        return (f"**Completion {self.index}** ({_class_caption(self.label, class_names)}), regenerated alone. Entropy "
                f"of the posterior π = softmax(ℓ/τ) at each position (paper eq. 15), from 0 (black: one code; every "
                f"kept code, whose posterior is its own one-hot) to log K = {self.max_entropy:.2f} nats (bright), at "
                f"t = {', '.join(f'{t:.2f}' for t in self.times)}; mean over the regenerated codes: {means}.")


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
        edit_command: makes the command that writes an edit's completions again (default
            :func:`python_edit_command`; ``purr app`` passes the ``purr edit`` command line).
    """

    def __init__(self, pipe: Any, source: str | Path, limits: Limits = Limits(),
                 times: Sequence[float] = UNCERTAINTY_TIMES, topk: int = TOPK, workdir: str | Path | None = None,
                 command: CommandBuilder = python_command, explain: Callable[[str], str] = str,
                 edit_command: EditCommandBuilder = python_edit_command):
        self.pipe = pipe
        self.command = command
        self.edit_command = edit_command
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

    # -- the Edit tab

    @property
    def image_size(self) -> int:
        return int(self.pipe.tokenizer.image_size)

    def upload_source(self, image: Any) -> EditSource:
        """:meth:`EditSource.from_upload` at this tokenizer's resolution and channels."""
        return EditSource.from_upload(image, self.image_size, int(self.pipe.tokenizer.image_channels))

    def parse_edit(self, *values: Any) -> EditRequest:
        """:func:`parse_edit_form` with this model's classes, code grid and this app's limits."""
        return parse_edit_form(*values, class_names=self.class_names, image_size=self.image_size,
                               side=self.latent[0], limits=self.limits)

    def edit(self, source: EditSource, request: EditRequest) -> EditRun:
        """Complete ``source`` as ``request`` asks and write the command that makes the same completions (after
        the ``purr sample`` command that makes the source, for an image of the grid; next to the uploaded source,
        saved as :data:`EDIT_INPUT`, for an upload)."""
        start = time.perf_counter()
        out = self.pipe.inpaint(source.pixels[None], **request.inpaint_kwargs())
        seconds = time.perf_counter() - start
        with self._lock:
            folder = self.workdir / f"{next(self._counter):05d}"
        folder.mkdir(parents=True)
        command = request.command(self.edit_command, self.source, source.file_name())
        files = []
        if source.request is not None:
            command = f"{source.request.command(self.command, self.source)} && {command}"
        else:
            save_png(folder / EDIT_INPUT, source.pixels)
            files.append(folder / EDIT_INPUT)
        script = folder / "purr-app-edit-command.sh"
        script.write_text(_command_script(command).replace("the same images", "the same completions"))
        files.append(script)
        return EditRun(request, source, out, seconds, command, files)

    def inspect_edit(self, run: EditRun, index: int) -> EditInspection:
        """Regenerate completion ``index`` of ``run`` alone (its noise is ``(seed, index)``) and read the
        posterior's entropy along its editing trajectory at :attr:`times`."""
        if not self.pipe.has_posterior:
            raise PurrError(f"this model ({self.pipe.method.name}) has no categorical posterior over codes; the "
                            "uncertainty panel needs a purrception model")
        out = run.output
        if not 0 <= index < len(out.pixels):
            raise PurrError(f"completion {index} is not among these {len(out.pixels)}; run again and pick one")
        pipe = self.pipe
        keep = torch.from_numpy(out.keep[index:index + 1].copy())
        codes = out.source_codes[out.source_index[index:index + 1]]
        trace = trace_edit_labels(pipe.method, pipe.model, codes, keep, out.labels[index:index + 1],
                                  run.request.sampler(), run.request.seed, pipe.tokenizer.snap, self.times,
                                  batch_size=1, first_index=index, device=str(pipe.device))
        return EditInspection(index=index, label=int(out.labels[index]), image=pipe.decode(trace.codes)[0],
                              keep=out.keep[index], times=list(trace.times), entropy=trace.entropy[0].numpy(),
                              max_entropy=float(np.log(pipe.method.codebook_size)))

    def close(self) -> None:
        """Remove the downloads folder this session made."""
        if self._tmp is not None:
            self._tmp.cleanup()
