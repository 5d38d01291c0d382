"""Editing images with a trained generator: inpainting, outpainting and variations (SDEdit for flows).

The images are brought to the tokenizer's resolution by the one preprocessing rule of ``purr encode``
(:func:`~purrception.data.images.prepare_image`, each distinct conversion logged once) and encoded to codes
``c = argmin_k ||q(x) - E_k||`` (paper eq. 9). The method then samples with some codes known
(:meth:`~purrception.flows.base.FlowMethod.edit`, flows/known.py):

- **Keep masks.** A boolean pixel mask at the tokenizer's resolution (true = keep) becomes a code-grid mask: the
  code at ``(r, c)`` covers the ``F x F`` pixels ``[F r, F r + F) x [F c, F c + F)`` with ``F = image_size / side``
  (the tokenizer's downsampling), and it is kept **only if its whole footprint is kept**; a code with any pixel
  to regenerate is regenerated. Named regions (:func:`region_mask`) are pixel masks too.
- **Variations.** ``strength`` in ``(0, 1]`` runs the last ``n = floor(strength T)`` steps of the ``T``-step grid
  ``t_i = i / T``, starting at grid step ``s = T - n`` (``t_s = 1 - n / T``, i.e. ``strength`` rounded down to
  the grid) from ``z_{t_s} = t_s E[c] + (1 - t_s) z_0`` (DFM: the source tokens with each position re-masked with
  probability ``1 - kappa(t_s)``, :func:`~purrception.flows.dfm.edit_start`). ``strength = 1`` is ordinary
  sampling with the same seed; a strength below ``1 / T`` runs no step and returns the source codes.
- **Seeds.** Completion ``k`` (image-major: image ``i``'s ``j``-th completion is ``k = i * num_per_image + j``)
  uses the noise of ``(seed, first_index + k)``, as :func:`~purrception.generation.generate.generate_codes` does,
  so it depends only on ``(seed, k)`` and never on the batch size.
- **Classes.** Each completion is asked for one class id, or the null class (id ``num_classes``, the label the DiT
  learned for classifier-free guidance) for an unconditional completion.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from purrception.data.images import ConversionLog, convert_channels, image_origin, prepare_image
from purrception.errors import PurrError, positive_int
from purrception.flows.base import FlowMethod, Snap
from purrception.flows.known import KnownCodes
from purrception.generation.generate import seeded_batches
from purrception.models.dit import DiT
from purrception.pixels import images_to_tensor, tensor_to_images
from purrception.sampling.grid import image_grid
from purrception.sampling.settings import SamplerSettings
from purrception.sampling.solvers import StepCallback
from purrception.tokenizers.base import VQTokenizer

__all__ = ["REGIONS", "EditOutput", "region_mask", "code_mask", "mask_from_image", "keep_mask", "prepare_images",
           "first_step_for", "edit_labels", "encode_images", "edit_codes", "edit_images", "edit_grid"]

log = logging.getLogger(__name__)

#: the named regions of :func:`region_mask` (each names what is *kept*; ``not:NAME`` keeps the rest)
REGIONS = ("top", "bottom", "left", "right", "centre")


@dataclass
class EditOutput:
    """What one editing call produced (one entry per completion, image-major).

    Attributes:
        images: one PIL image per completion.
        pixels: the completions as uint8 ``(M, H, W)`` or ``(M, H, W, C)``.
        codes: the completions' codes ``(M, h, w)``.
        labels: the class each completion was asked for ``(M,)``; ``num_classes`` means unconditional.
        source_index: which input image each completion came from ``(M,)``.
        keep: the code-grid mask of each completion ``(M, h, w)`` (true = the source code was kept).
        sources: the input images at the tokenizer's resolution, uint8 ``(N, H, W[, C])``.
        source_codes: their codes ``(N, h, w)``.
        first_step: the grid step the completions started from (0 unless a variation).
    """

    images: list[Image.Image]
    pixels: np.ndarray
    codes: torch.Tensor
    labels: np.ndarray
    source_index: np.ndarray
    keep: np.ndarray
    sources: np.ndarray
    source_codes: torch.Tensor
    first_step: int = 0


def region_mask(region: str, size: int) -> np.ndarray:
    """A named region as a boolean ``(size, size)`` pixel mask of what to keep.

    ``top`` / ``bottom``: rows ``< size // 2`` / ``>= size // 2``; ``left`` / ``right``: the same on columns;
    ``centre`` (or ``center``): rows and columns in ``[size // 4, size - size // 4)``; ``x0,y0,x1,y1``: the pixel
    box ``x0 <= x < x1``, ``y0 <= y < y1`` at the tokenizer's resolution; ``not:REGION``: everything but REGION
    (``not:centre`` regenerates the centre: inpainting; ``centre`` regenerates the border: outpainting).
    """
    text = region.strip().lower()
    if text.startswith("not:"):
        return ~region_mask(text[4:], size)
    keep = np.zeros((size, size), dtype=bool)
    half, quarter = size // 2, size // 4
    if text == "top":
        keep[:half] = True
    elif text == "bottom":
        keep[half:] = True
    elif text == "left":
        keep[:, :half] = True
    elif text == "right":
        keep[:, half:] = True
    elif text in ("centre", "center"):
        keep[quarter:size - quarter, quarter:size - quarter] = True
    elif "," in text:
        try:
            x0, y0, x1, y1 = (int(v) for v in text.split(","))
        except ValueError:
            raise PurrError(f"a box region is x0,y0,x1,y1 in pixels, e.g. 4,4,20,20; got {region!r}") from None
        if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
            raise PurrError(f"box {region!r} must satisfy 0 <= x0 < x1 <= {size} and 0 <= y0 < y1 <= {size} "
                            f"(pixels at the tokenizer's {size}x{size})")
        keep[y0:y1, x0:x1] = True
    else:
        raise PurrError(f"unknown region {region!r}; choose one of {', '.join(REGIONS)}, a pixel box x0,y0,x1,y1, "
                        "or not:REGION for its complement")
    return keep


def code_mask(pixel_keep: np.ndarray, image_size: int, side: int) -> np.ndarray:
    """Boolean pixel masks ``(..., image_size, image_size)`` -> code-grid masks ``(..., side, side)``: a code is
    kept only if all ``F x F`` pixels of its footprint are (``F = image_size / side``; module docstring)."""
    keep = np.asarray(pixel_keep, dtype=bool)
    if keep.shape[-2:] != (image_size, image_size):
        raise PurrError(f"the mask is {keep.shape[-1]}x{keep.shape[-2]} pixels but the tokenizer works at "
                        f"{image_size}x{image_size}; give a mask of that size (true / white = keep)")
    if side <= 0 or image_size % side:
        raise PurrError(f"a {image_size}x{image_size} image does not split into a {side}x{side} code grid")
    f = image_size // side
    return keep.reshape(*keep.shape[:-2], side, f, side, f).all(axis=(-3, -1))


def mask_from_image(image: Image.Image) -> np.ndarray:
    """A mask image -> boolean pixel mask: white (grey level >= 128, transparency counted as white) = keep."""
    return np.asarray(convert_channels(image, 1)) >= 128


def keep_mask(keep: Any, num_images: int, image_size: int, side: int) -> np.ndarray:
    """``keep`` (``None``: nothing; a region name; a mask image; a boolean ``(H, W)`` or ``(N, H, W)`` array)
    -> code-grid masks ``(num_images, side, side)``."""
    if keep is None:
        return np.zeros((num_images, side, side), dtype=bool)
    if isinstance(keep, str):
        pixels = region_mask(keep, image_size)
    elif isinstance(keep, Image.Image):
        pixels = mask_from_image(keep)
    else:
        pixels = np.asarray(keep)
        if pixels.dtype != bool:
            raise PurrError(f"`keep` must be a boolean pixel mask, a region name or a mask image; got an array of "
                            f"{pixels.dtype}")
        if pixels.ndim == 3 and pixels.shape[0] != num_images:
            raise PurrError(f"`keep` holds {pixels.shape[0]} masks for {num_images} images; give one mask, or one per "
                            "image")
        if pixels.ndim not in (2, 3):
            raise PurrError(f"`keep` must be (H, W) or (N, H, W), got shape {pixels.shape}")
    codes = code_mask(pixels, image_size, side)
    return np.broadcast_to(codes, (num_images, side, side)).copy()


def prepare_images(images: Any, size: int, channels: int) -> np.ndarray:
    """Images -> uint8 ``(N, size, size)`` (grey) or ``(N, size, size, 3)`` by the ``purr encode`` preprocessing.

    Args:
        images: a uint8 array ``(N, H, W)`` / ``(N, H, W, C)`` (``C`` 1, 3 or 4), or a sequence of PIL images
            and / or uint8 arrays ``(H, W)`` / ``(H, W, C)``.
        size: the tokenizer's resolution.
        channels: 1 or 3.
    """
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise PurrError(f"`images` must be (N, H, W) or (N, H, W, C), got shape {images.shape}")
        items: Sequence[Any] = list(images)
    else:
        items = list(images)
    if not items:
        raise PurrError("`images` is empty; give at least one image")
    conversions = ConversionLog(size, channels)
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Image.Image):
            array = np.asarray(item)
            if array.dtype != np.uint8:
                raise PurrError(f"image {i} is {array.dtype}; give uint8 pixels (0..255) or PIL images")
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
                raise PurrError(f"image {i} has shape {array.shape}; give (H, W), (H, W, 3) or (H, W, 4) pixels")
            item = Image.fromarray(array)
        conversions.note([image_origin(item)])
        out.append(prepare_image(item, size, channels))
    return np.stack(out)


def first_step_for(strength: float | None, steps: int) -> int:
    """The grid step a variation of ``strength`` starts from: ``steps - floor(strength * steps)`` (module
    docstring); ``None`` (no variation) is 0."""
    if strength is None:
        return 0
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise PurrError(f"`strength` must be a number in (0, 1], got {strength!r}") from None
    if not 0.0 < value <= 1.0:
        raise PurrError(f"`strength` must be in (0, 1] (1 = sample afresh, near 0 = keep the image), got {strength!r}")
    return steps - min(steps, math.floor(value * steps + 1e-9))


def edit_labels(class_labels: Any, num_images: int, num_classes: int) -> np.ndarray:
    """Per-image class ids ``(num_images,)``; ``num_classes`` (the null class) for unconditional.

    ``class_labels``: ``None`` (every image unconditional), one id (every image), or one id or ``None`` per image.
    """
    if class_labels is None:
        return np.full(num_images, num_classes, dtype=np.int64)
    if isinstance(class_labels, (int, np.integer)) and not isinstance(class_labels, bool):
        values: list[Any] = [class_labels] * num_images
    else:
        values = list(np.asarray(class_labels, dtype=object).reshape(-1))
        if len(values) != num_images:
            raise PurrError(f"`class_labels` has {len(values)} entries for {num_images} images; give one id, or one "
                            "id (or None) per image")
    labels = np.empty(num_images, dtype=np.int64)
    for i, value in enumerate(values):
        if value is None:
            labels[i] = num_classes
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value <= num_classes:
            labels[i] = int(value)
        else:
            raise PurrError(f"`class_labels` entry {value!r} is not a class id; this model knows classes "
                            f"0..{num_classes - 1} (None or {num_classes}: unconditional)")
    return labels


@torch.no_grad()
def encode_images(tokenizer: VQTokenizer, pixels: np.ndarray, batch_size: int = 64,
                  device: str = "cpu") -> torch.Tensor:
    """uint8 images at the tokenizer's resolution -> codes ``(N, h, w)`` (paper eq. 9), on the CPU."""
    parts = [tokenizer.encode(images_to_tensor(pixels[i:i + batch_size]).to(device)).long().cpu()
             for i in range(0, len(pixels), batch_size)]
    return torch.cat(parts)


@torch.no_grad()
def edit_codes(method: FlowMethod, model: DiT, codes: torch.Tensor, keep: torch.Tensor, labels: np.ndarray,
               sampler: SamplerSettings, seed: int, snap: Snap, first_step: int = 0, batch_size: int = 64,
               first_index: int = 0, device: str = "cpu", progress: bool = False,
               callback: StepCallback | None = None) -> torch.Tensor:
    """Completions ``(M, h, w)`` of the codes ``(M, h, w)`` kept where ``keep`` ``(M, h, w)``, for ``labels``
    ``(M,)`` (``num_classes`` = unconditional), from grid step ``first_step``; completion ``k`` uses the noise of
    ``(seed, first_index + k)``. ``callback`` (tests, inspection) sees ``(t, z_t)`` of every batch."""
    side = model.config.input_size
    if tuple(codes.shape[1:]) != (side, side) or codes.shape != keep.shape or len(codes) != len(labels):
        raise PurrError(f"codes {tuple(codes.shape)}, keep {tuple(keep.shape)} and {len(labels)} labels do not fit a "
                        f"{side}x{side} model")
    out, start = [], 0
    for noise, y in seeded_batches(labels, seed, (method.latent_dim, side, side), batch_size, first_index, device,
                                   progress):
        stop = start + len(y)
        known = KnownCodes(codes[start:stop].to(device), keep[start:stop].to(device))
        out.append(method.edit(model, noise, y, sampler, snap, known, first_step, callback).cpu())
        start = stop
    return torch.cat(out) if out else torch.zeros((0, side, side), dtype=torch.long)


@torch.no_grad()
def edit_images(method: FlowMethod, model: DiT, tokenizer: VQTokenizer, images: Any, sampler: SamplerSettings,
                keep: Any = None, strength: float | None = None, class_labels: Any = None, num_per_image: int = 1,
                seed: int = 0, batch_size: int = 64, first_index: int = 0, device: str = "cpu",
                progress: bool = False) -> EditOutput:
    """Inpaint, outpaint or vary ``images`` (module docstring).

    Args:
        method, model: the generator.
        tokenizer: its tokenizer (encodes the inputs, decodes the completions).
        images: see :func:`prepare_images`.
        sampler: the sampler's knobs.
        keep: what to keep (:func:`keep_mask`); ``None`` keeps nothing (then ``strength`` is required).
        strength: ``None`` (start from noise) or a variation's strength in ``(0, 1]``.
        class_labels: see :func:`edit_labels`.
        num_per_image: completions per image.
        seed, first_index: completion ``k`` uses the noise of ``(seed, first_index + k)``.
        batch_size: completions per forward pass (does not change them).
        device: where the tokenizer and model run.
        progress: show a progress bar.
    """
    num_per_image = positive_int(num_per_image, "num_per_image")
    size, side = tokenizer.image_size, model.config.input_size
    if tokenizer.latent_shape != (side, side):
        raise PurrError(f"the tokenizer's {tokenizer.latent_shape} code grid does not fit the model's {side}x{side}")
    sources = prepare_images(images, size, tokenizer.image_channels)
    n = len(sources)
    grid_keep = keep_mask(keep, n, size, side)
    first_step = first_step_for(strength, sampler.sample_steps)
    if strength is None:
        empty = np.flatnonzero(~grid_keep.reshape(n, -1).any(axis=1))
        if empty.size:
            f = size // side
            raise PurrError(f"`keep` keeps no whole code of image {int(empty[0])} (a code is kept only if all its "
                            f"{f}x{f} pixels are); choose a larger region, or set `strength` for a variation")
    if grid_keep.all():
        log.warning("the keep mask keeps every code: the completions are the source images")
    per_image = edit_labels(class_labels, n, model.config.num_classes)
    source_codes = encode_images(tokenizer, sources, batch_size, device)
    source_index = np.repeat(np.arange(n), num_per_image)
    labels = per_image[source_index]
    keep_codes = grid_keep[source_index]
    codes = edit_codes(method, model, source_codes[source_index], torch.from_numpy(keep_codes), labels, sampler, seed,
                       tokenizer.snap, first_step, batch_size, first_index, device, progress)
    pixels = np.concatenate([tensor_to_images(tokenizer.decode(codes[i:i + batch_size].to(device)))
                             for i in range(0, len(codes), batch_size)])
    return EditOutput([Image.fromarray(p) for p in pixels], pixels, codes, labels, source_index, keep_codes, sources,
                      source_codes, first_step)


def edit_grid(output: EditOutput) -> np.ndarray:
    """One row per source image: the source, its code-grid mask (white = kept, black = regenerated, at pixel
    scale) and its completions; uint8 like the images."""
    sources, pixels = output.sources, output.pixels
    n, size = len(sources), sources.shape[1]
    per_image = len(pixels) // n
    f = size // output.keep.shape[-1]
    panels = []
    for i in range(n):
        first = i * per_image
        mask = np.kron(output.keep[first].astype(np.uint8) * 255, np.ones((f, f), dtype=np.uint8))
        if sources.ndim == 4:
            mask = np.repeat(mask[..., None], sources.shape[-1], axis=-1)
        panels += [sources[i], mask, *pixels[first:first + per_image]]
    return image_grid(np.stack(panels), rows=n)
