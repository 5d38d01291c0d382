"""Uncertainty over plausible codes along a Purrception trajectory (paper Sec. 3.2 and 4.2).

The network's output at ``(z_t, t)`` is a categorical posterior ``pi = softmax(l / tau)`` over the ``K`` codes at
every latent position (eq. 15). This module samples as usual and, at chosen times, reads that posterior:

- its per-position entropy ``H(pi) = -sum_k pi_k log pi_k`` (nats; at most ``log K``), a map ``(h, w)`` per time;
- at the final posterior (grid time ``t_{T-1}``, the one the last step jumps with), the top-``k`` codes at one
  position and their probabilities, so that the image can be decoded once per candidate.

Times are snapped to the sampling grid ``t_i = i / T`` (``i = round(t T)``, at most ``T - 1``); the states are the
solver's own, read through :meth:`FlowMethod.generate`'s step callback, so the codes are generate's for the same
noise. :func:`trace_edit` reads it the same way along an editing trajectory (:meth:`FlowMethod.edit`, some codes
kept). Reading the posterior costs one extra network evaluation per recorded time. Only methods with a categorical
posterior along a continuous path (``has_posterior``: Purrception) are accepted; others raise
:class:`~purrception.errors.PurrError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from purrception.errors import PurrError
from purrception.flows.base import FlowMethod, Snap
from purrception.flows.known import KnownCodes
from purrception.generation.generate import check_labels, seeded_batches
from purrception.models.dit import DiT
from purrception.sampling.settings import SamplerSettings

__all__ = ["UncertaintyTrace", "posterior_entropy", "snap_times", "trace_uncertainty", "trace_labels",
           "trace_edit", "trace_edit_labels", "candidate_codes", "entropy_heatmap"]


@dataclass
class UncertaintyTrace:
    """What :func:`trace_uncertainty` read along one batch of trajectories.

    Attributes:
        codes: final codes ``(B, h, w)``.
        times: the grid times the entropies were read at (requested times snapped to the grid).
        entropy: ``(B, len(times), h, w)`` float32, nats.
        topk_codes: ``(B, k)`` code ids at ``position`` under the final posterior, most probable first (``k = 0``:
            empty).
        topk_probs: ``(B, k)`` their probabilities.
        final_time: the grid time of the final posterior, ``t_{T-1}``.
    """

    codes: torch.Tensor
    times: list[float]
    entropy: torch.Tensor
    topk_codes: torch.Tensor
    topk_probs: torch.Tensor
    final_time: float


def posterior_entropy(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits / tau)`` over the last axis (eq. 15), computed stably in float32."""
    scaled = logits.float() / tau
    log_p = torch.log_softmax(scaled, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def snap_times(times: Sequence[float], steps: int) -> list[int]:
    """Grid indices ``min(round(t T), T - 1)`` of ``times`` in ``[0, 1]``."""
    bad = [t for t in times if not 0.0 <= t <= 1.0]
    if bad:
        raise PurrError(f"uncertainty times must lie in [0, 1], got {bad[0]}")
    return [min(int(round(t * steps)), steps - 1) for t in times]


@torch.no_grad()
def trace_uncertainty(method: FlowMethod, model: DiT, noise: torch.Tensor, y: torch.Tensor, sampler: SamplerSettings,
                      snap: Snap, times: Sequence[float], topk: int = 0,
                      position: Optional[tuple[int, int]] = None) -> UncertaintyTrace:
    """Sample codes from ``noise`` and read the posterior's entropy at ``times`` and its top-``k`` at ``position``.

    Args:
        method: a method with ``has_posterior`` (and ``has_endpoint``).
        model: its backbone.
        noise: ``z0`` ``(B, d, h, w)``.
        y: labels ``(B,)``.
        sampler: sample_steps, solver, ``tau(t)``, ``cfg_scale(t)``.
        snap: final latents -> codes, the tokenizer's own ``snap``.
        times: when to read the entropy (snapped to the grid).
        topk: how many candidate codes to report at ``position`` (0: none).
        position: ``(row, col)`` in the latent grid; required when ``topk > 0``.
    """
    if not (method.has_posterior and method.has_endpoint):
        raise PurrError(f"method {method.name!r} has no categorical posterior over codes along its flow; "
                        "uncertainty maps need a purrception checkpoint")
    b, _, h, w = noise.shape
    if topk < 0 or topk > method.codebook_size:
        raise PurrError(f"`topk` must lie in 0..{method.codebook_size} (the codebook size), got {topk}")
    if topk and position is None:
        raise PurrError("`topk` needs a `position` (row, col) in the latent grid")
    if position is not None and not (0 <= position[0] < h and 0 <= position[1] < w):
        raise PurrError(f"`position` ({position[0]}, {position[1]}) is outside the {h}x{w} latent grid")
    reader = _PosteriorReader(method, model, y, sampler, times, (b, h, w), topk, position)
    codes = method.generate(model, noise, y, sampler, snap, callback=reader)
    return reader.trace(codes)


class _PosteriorReader:
    """The step callback that reads the posterior at the snapped ``times`` (and its top-``k`` at ``position`` at
    ``t_{T-1}``); ``kept`` ``(B, h, w)`` marks positions whose posterior is the one-hot of a known code (editing:
    entropy 0 there, flows/known.py)."""

    def __init__(self, method: FlowMethod, model: DiT, y: torch.Tensor, sampler: SamplerSettings,
                 times: Sequence[float], shape: tuple[int, int, int], topk: int = 0,
                 position: Optional[tuple[int, int]] = None, kept: Optional[torch.Tensor] = None):
        self.method, self.model, self.y, self.sampler = method, model, y, sampler
        self.steps = sampler.sample_steps
        self.indices = snap_times(times, self.steps)
        self.slots: dict[int, list[int]] = {}
        for slot, i in enumerate(self.indices):
            self.slots.setdefault(i, []).append(slot)
        b, h, w = shape
        self.entropy = torch.zeros(b, len(self.indices), h, w)
        self.topk, self.position = topk, position
        self.top_codes = torch.zeros(b, topk, dtype=torch.long)
        self.top_probs = torch.zeros(b, topk)
        self.kept = None if kept is None else kept.bool().cpu()

    def __call__(self, t: float, z: torch.Tensor) -> None:
        i = int(round(t * self.steps))
        final = i == self.steps - 1 and self.topk > 0
        if i not in self.slots and not final:
            return
        tau = self.sampler.tau_at(t)
        logits = self.method.posterior_logits(self.model, z, t, self.y, self.sampler.cfg_at(t))     # (B, h, w, K)
        if self.slots.get(i):
            entropy = posterior_entropy(logits, tau).cpu()
            if self.kept is not None:
                entropy = entropy.masked_fill(self.kept, 0.0)
            for slot in self.slots[i]:
                self.entropy[:, slot] = entropy
        if final:
            probs = torch.softmax(logits[:, self.position[0], self.position[1]].float() / tau, dim=-1)   # (B, K)
            p, k = probs.topk(self.topk, dim=-1)
            self.top_probs.copy_(p.cpu())
            self.top_codes.copy_(k.cpu())

    def trace(self, codes: torch.Tensor) -> UncertaintyTrace:
        return UncertaintyTrace(codes.cpu(), [i / self.steps for i in self.indices], self.entropy, self.top_codes,
                                self.top_probs, (self.steps - 1) / self.steps)


def trace_labels(method: FlowMethod, model: DiT, labels: np.ndarray, sampler: SamplerSettings, seed: int,
                 snap: Snap, times: Sequence[float], topk: int = 0, position: Optional[tuple[int, int]] = None,
                 batch_size: int = 64, device: str = "cpu", progress: bool = False,
                 first_index: int = 0) -> UncertaintyTrace:
    """:func:`trace_uncertainty` for ``labels`` in batches, image ``k`` from the noise of ``(seed, first_index + k)``
    — the same noise, and so the same codes, as :func:`~purrception.generation.generate.generate_codes`."""
    if len(labels) == 0:
        raise PurrError("no images to sample; ask for at least one")
    check_labels(labels, model.config.num_classes)
    side = model.config.input_size
    parts = [trace_uncertainty(method, model, noise, y, sampler, snap, times, topk, position)
             for noise, y in seeded_batches(labels, seed, (method.latent_dim, side, side), batch_size, first_index,
                                            device, progress)]
    first = parts[0]
    return UncertaintyTrace(torch.cat([p.codes for p in parts]), first.times,
                            torch.cat([p.entropy for p in parts]), torch.cat([p.topk_codes for p in parts]),
                            torch.cat([p.topk_probs for p in parts]), first.final_time)


@torch.no_grad()
def trace_edit(method: FlowMethod, model: DiT, noise: torch.Tensor, y: torch.Tensor, sampler: SamplerSettings,
               snap: Snap, known: KnownCodes, times: Sequence[float]) -> UncertaintyTrace:
    """:meth:`FlowMethod.edit` from ``noise`` with ``known`` codes kept (inpainting, generation/editing.py), reading
    the posterior's entropy at ``times`` through the same step callback as :func:`trace_uncertainty`.

    At a kept position the sampler's posterior is the one-hot of the source code (its endpoint is clamped to
    ``E[c]``, flows/known.py), so its entropy there is 0; elsewhere it is the network's ``softmax(l / tau)``
    (eq. 15), conditioned on the kept codes through the state: the maps show where the model is inventing.
    """
    if not (method.has_posterior and method.has_endpoint):
        raise PurrError(f"method {method.name!r} has no categorical posterior over codes along its flow; "
                        "uncertainty maps need a purrception checkpoint")
    b, _, h, w = noise.shape
    reader = _PosteriorReader(method, model, y, sampler, times, (b, h, w), kept=known.keep)
    codes = method.edit(model, noise, y, sampler, snap, known, 0, callback=reader)
    return reader.trace(codes)


def trace_edit_labels(method: FlowMethod, model: DiT, codes: torch.Tensor, keep: torch.Tensor, labels: np.ndarray,
                      sampler: SamplerSettings, seed: int, snap: Snap, times: Sequence[float], batch_size: int = 64,
                      first_index: int = 0, device: str = "cpu") -> UncertaintyTrace:
    """:func:`trace_edit` for completions of ``codes`` ``(M, h, w)`` kept where ``keep`` ``(M, h, w)``, for
    ``labels`` ``(M,)`` (``num_classes``: unconditional), completion ``k`` from the noise of ``(seed, first_index +
    k)`` — the same noise, and so the same codes, as :func:`~purrception.generation.editing.edit_codes`."""
    if len(labels) == 0:
        raise PurrError("no completions to trace; ask for at least one")
    side = model.config.input_size
    parts, start = [], 0
    for noise, y in seeded_batches(labels, seed, (method.latent_dim, side, side), batch_size, first_index, device):
        stop = start + len(y)
        known = KnownCodes(codes[start:stop].to(device), keep[start:stop].to(device))
        parts.append(trace_edit(method, model, noise, y, sampler, snap, known, times))
        start = stop
    first = parts[0]
    return UncertaintyTrace(torch.cat([p.codes for p in parts]), first.times, torch.cat([p.entropy for p in parts]),
                            torch.cat([p.topk_codes for p in parts]), torch.cat([p.topk_probs for p in parts]),
                            first.final_time)


def candidate_codes(codes: torch.Tensor, position: tuple[int, int], candidates: torch.Tensor) -> torch.Tensor:
    """``(B, k, h, w)``: ``codes`` ``(B, h, w)`` with ``position`` set to each of ``candidates`` ``(B, k)``."""
    out = codes.unsqueeze(1).repeat(1, candidates.shape[1], 1, 1)
    out[:, :, position[0], position[1]] = candidates
    return out


def entropy_heatmap(entropy: np.ndarray, max_entropy: float, size: tuple[int, int],
                    colormap: str = "magma") -> np.ndarray:
    """An entropy map ``(h, w)`` -> uint8 RGB ``(H, W, 3)``: nearest upsampling, ``0..max_entropy`` on ``colormap``."""
    import matplotlib

    hh, ww = entropy.shape
    rows = (np.arange(size[0]) * hh) // size[0]
    cols = (np.arange(size[1]) * ww) // size[1]
    scaled = np.clip(entropy[rows][:, cols] / max_entropy, 0.0, 1.0)
    return (matplotlib.colormaps[colormap](scaled)[..., :3] * 255).round().astype(np.uint8)
