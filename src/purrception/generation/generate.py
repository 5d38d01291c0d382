"""From a checkpoint to pixels: batched, seeded generation of codes and their decoding.

Each image ``i`` gets its own noise from ``(seed, i)``, so a given seed gives the same image ``i`` whatever the
batch size or the number of processes generating.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from purrception.errors import PurrError
from purrception.flows.base import FlowMethod, Snap
from purrception.models.dit import DiT
from purrception.pixels import tensor_to_images
from purrception.sampling.settings import SamplerSettings
from purrception.threads import shared_governor
from purrception.tokenizers.base import VQTokenizer

__all__ = ["noise_for", "seeded_batches", "generate_codes", "generate_images", "balanced_labels", "repeat_labels",
           "check_labels", "check_images_fit", "available_memory"]

log = logging.getLogger(__name__)


def noise_for(indices: Iterable[int], seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise ``(len(indices), *shape)``; row ``j`` depends only on ``(seed, indices[j])``."""
    if seed < 0:
        raise PurrError(f"a sampling `seed` must be >= 0, got {seed}")
    rows = []
    for i in indices:
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, int(i)]).generate_state(1)[0]))
        rows.append(torch.randn(shape, generator=gen))
    return torch.stack(rows)


def balanced_labels(num_images: int, num_classes: int) -> np.ndarray:
    """``0, 1, ..., C-1, 0, 1, ...``: class-balanced labels for ``num_images`` samples."""
    return np.arange(num_images, dtype=np.int64) % num_classes


def repeat_labels(classes: Sequence[int], num_images: int) -> np.ndarray:
    """Each of ``classes`` repeated in turn to fill ``num_images``: ``[3, 7]``, 5 -> ``3, 3, 3, 7, 7``."""
    classes = np.asarray(list(classes), dtype=np.int64)
    if classes.size == 0:
        raise PurrError("no classes given; give class ids like 0,3,7")
    return np.resize(np.repeat(classes, -(-num_images // classes.size)), num_images)


def available_memory() -> int | None:
    """Bytes of memory this machine can still give a process (``MemAvailable`` of ``/proc/meminfo``, else the
    free physical pages), or None where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_images_fit(num_images: int, bytes_per_image: int, param: str = "num_images") -> None:
    """Refuse, before anything is allocated, a request for more images than memory holds at once.

    Generated images are held in memory together (codes, pixels and labels: ``bytes_per_image`` each) until they
    are returned, so ``num_images * bytes_per_image`` must fit in :func:`available_memory`.

    Raises:
        PurrError: naming ``param``, the memory needed and the memory available.
    """
    need = int(num_images) * int(bytes_per_image)
    free = available_memory()
    if free is not None and need > free:
        raise PurrError(f"`{param}` asks for {int(num_images):,} images, which need {need / 2**30:,.1f} GiB of memory "
                        f"at once, more than the {free / 2**30:,.1f} GiB available; ask for fewer images per call")


def check_labels(labels: np.ndarray, num_classes: int) -> None:
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise PurrError(f"class id {int(bad[0])} is out of range; this model knows classes 0..{num_classes - 1}")


def seeded_batches(labels: np.ndarray, seed: int, shape: tuple[int, ...], batch_size: int, first_index: int = 0,
                   device: str = "cpu", progress: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(noise, y)`` batches for ``labels``: image ``k`` gets the noise of ``(seed, first_index + k)``.

    The CPU thread count follows the free cores between batches (:class:`~purrception.threads.ThreadGovernor`)."""
    threads = shared_governor(device)
    for start in tqdm(range(0, len(labels), batch_size), desc="sample", disable=not progress, dynamic_ncols=True):
        stop = min(start + batch_size, len(labels))
        threads.check()
        noise = noise_for(range(first_index + start, first_index + stop), seed, shape).to(device)
        yield noise, torch.as_tensor(labels[start:stop], device=device)


@torch.no_grad()
def generate_codes(method: FlowMethod, model: DiT, labels: np.ndarray, sampler: SamplerSettings, seed: int,
                   snap: Snap, batch_size: int = 64, first_index: int = 0, device: str = "cpu",
                   progress: bool = False) -> torch.Tensor:
    """Codes ``(N, h, w)`` for ``labels`` (N,); image ``k`` uses noise index ``first_index + k``.

    ``snap`` turns the flow's final latents into codes: the tokenizer's own ``snap``.
    """
    check_labels(labels, model.config.num_classes)
    side = model.config.input_size
    out = [method.generate(model, noise, y, sampler, snap).cpu()
           for noise, y in seeded_batches(labels, seed, (method.latent_dim, side, side), batch_size, first_index,
                                          device, progress)]
    return torch.cat(out) if out else torch.zeros((0, side, side), dtype=torch.long)


@torch.no_grad()
def generate_images(method: FlowMethod, model: DiT, tokenizer: VQTokenizer, labels: np.ndarray,
                    sampler: SamplerSettings, seed: int, batch_size: int = 64, first_index: int = 0,
                    device: str = "cpu", progress: bool = False) -> np.ndarray:
    """uint8 images (``(N, H, W)`` grey or ``(N, H, W, C)``) generated for ``labels`` and decoded."""
    codes = generate_codes(method, model, labels, sampler, seed, tokenizer.snap, batch_size, first_index, device,
                           progress)
    images = [tensor_to_images(tokenizer.decode(codes[i : i + batch_size].to(device)))
              for i in range(0, len(codes), batch_size)]
    return np.concatenate(images) if images else np.zeros((0,), dtype=np.uint8)
