"""DFM: masked discrete flow matching over codebook indices (Gat et al. 2024, "Discrete Flow Matching").

The fully discrete baseline of the paper (Sec. 4.1, Fig. 3). State: token ids ``x_t`` in ``{0..K-1} u {M}`` with
the mask ``M = K``; the backbone reads ids through a ``K + 1`` entry embedding table and outputs ``K`` logits per
position (the probability denoiser ``p_{1|t}(x_1^i | x_t)``).

- Source and path (Gat et al. Sec. 2, the mixture path with a masked source):
  ``p_t(x^i | x_0, x_1) = (1 - kappa(t)) delta_M(x^i) + kappa(t) delta_{x_1^i}(x^i)``, independently per position;
  ``kappa`` is a scheduler from :data:`KAPPA_SCHEDULERS` (``kappa(0) = 0``, ``kappa(1) = 1``).
- Loss (Gat et al.'s cross-entropy training of the probability denoiser): ``-log p_{1|t}(x_1^i | x_t)``.
  **Masked positions only**, averaged over the masked positions of the batch: at a revealed position
  ``x_t^i = x_1^i`` and the sampler never reads the prediction there, so its CE carries no signal (the
  standard masked-DFM / MaskGIT choice; it is also where the generalized-KL loss of the mixture path is nonzero).
  Optional z-loss on the same positions, ``z_loss_weight * mean(logsumexp^2)`` (as paper App. D).
- Sampler (Gat et al.'s Euler step for the mixture path with conditional velocity
  ``u_t^i = kappa'(t) / (1 - kappa(t)) [delta_{x_1^i} - delta_{x_t^i}]``): from ``t`` to ``t + h`` a still-masked
  position is revealed with probability ``(kappa(t+h) - kappa(t)) / (1 - kappa(t))``, to a draw from
  ``softmax(logits / tau)``; revealed positions never change; the last step reveals every remaining mask.

Per-image randomness: the sampler draws nothing from a shared generator. Position ``i`` gets two uniforms from
the image's own noise, ``u = Phi(noise[0, i])`` and ``w = Phi(noise[1, i])`` (``Phi`` the normal CDF), is revealed
at the first step whose ``kappa(t + h) >= u``, and takes the code at quantile ``w`` of that step's categorical.
Since ``P(kappa(t) < u <= kappa(t+h) | u > kappa(t)) = (kappa(t+h) - kappa(t)) / (1 - kappa(t))``, this is the
step rule above in law, and image ``k`` depends only on ``(seed, k)`` like every other method
(:func:`purrception.generation.generate.generate_codes`).

The K-way head (docs/ARCHITECTURE.md, "Where the speed is"): at ``K = 16384`` all ``B x H x W x K`` float32 logits
of a batch are gigabytes, so neither training nor sampling materialises them; both go through the head's row view
(``models.heads``) and keep only the rows that matter:

- Training: :func:`purrception.flows.categorical.masked_cross_entropy_and_zloss`, the chunked linear +
  cross-entropy of Purrception restricted to the rows that feed a masked position (with the full head and patch
  size ``p > 1`` a row is a token covering ``p*p`` positions; its unmasked sub-positions get weight 0). Values and
  gradients equal the materialised loss (:func:`purrception.flows.categorical.naive_masked_cross_entropy_and_zloss`).
- Sampling: :func:`quantile_draws` computes logits only for the rows with a position revealed at this step, over
  chunks of rows within a memory budget (:func:`purrception.flows.categorical.chunk_rows`), each row's ``K`` logits
  in one chunk, so each draw is the same inverse-CDF draw of ``softmax(logits / tau)`` as on materialised logits
  (:func:`draws_from_logits`, the reference).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from purrception.errors import PurrError
from purrception.flows.base import (
    FlowMethod,
    LossOutput,
    Randomness,
    Snap,
    drop_labels,
    register_method,
    sample_time,
    uniform,
)
from purrception.flows.categorical import chunk_rows, logits_from_features, masked_cross_entropy_and_zloss, matmul_dtype
from purrception.flows.known import KnownCodes
from purrception.models.dit import DiT
from purrception.sampling.guidance import guided_features
from purrception.sampling.settings import SamplerSettings
from purrception.sampling.solvers import StepCallback

__all__ = ["KAPPA_SCHEDULERS", "SAMPLE_COPIES_PER_LOGIT", "get_scheduler", "mask_path_sample", "sample_from_quantile",
           "draws_from_logits", "quantile_draws", "discrete_euler", "edit_start", "DFM"]

Scheduler = Callable[[torch.Tensor], torch.Tensor]
#: ``(x_t (B, h, w) ids, t, reveal (B, h, w) bool, w (B, h, w) quantiles, tau) -> codes (B, h, w)``; only the
#: entries where ``reveal`` is true are read.
DrawFn = Callable[[torch.Tensor, float, torch.Tensor, torch.Tensor, float], torch.Tensor]

#: Logit-sized tensors a sampling chunk holds at its peak (softmax in and out, then probabilities and their CDF):
#: :func:`quantile_draws` sizes its chunks so that this many copies of a chunk's logits fit the budget.
SAMPLE_COPIES_PER_LOGIT = 2

#: ``kappa(t)``: probability that a position is revealed (holds its data token) at time ``t``.
KAPPA_SCHEDULERS: dict[str, Scheduler] = {
    "linear": lambda t: t,
    "cosine": lambda t: 1 - torch.cos(0.5 * math.pi * t),
}


def get_scheduler(name: str) -> Scheduler:
    if name not in KAPPA_SCHEDULERS:
        raise PurrError(f"unknown DFM scheduler {name!r}; choose one of: {', '.join(KAPPA_SCHEDULERS)}")
    return KAPPA_SCHEDULERS[name]


def mask_path_sample(codes: torch.Tensor, t: torch.Tensor, kappa: Scheduler, mask_id: int,
                     generator: Randomness = None) -> torch.Tensor:
    """``x_t`` ``(B, h, w)``: each position keeps its code with probability ``kappa(t_b)``, else is ``mask_id``."""
    keep = uniform(codes.shape, generator, codes.device) < kappa(t)[:, None, None]
    return torch.where(keep, codes.long(), torch.full_like(codes, mask_id, dtype=torch.long))


def sample_from_quantile(probs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: the index at quantile ``w`` ``(...)`` in ``[0, 1]`` of ``probs`` ``(..., K)``.

    ``w`` is capped at ``1 - 1e-6`` of the total mass so float rounding can never select a zero-probability tail.
    """
    cdf = probs.float().cumsum(-1)
    target = w.float().clamp(0.0, 1.0 - 1e-6) * cdf[..., -1]
    idx = torch.searchsorted(cdf.contiguous(), target[..., None].contiguous(), right=True)[..., 0]
    return idx.clamp_(max=probs.shape[-1] - 1)


def draws_from_logits(logits_fn: Callable[[torch.Tensor, float], torch.Tensor]) -> DrawFn:
    """The draw of :func:`discrete_euler` from materialised logits: ``logits_fn(x_t, t) -> (B, h, w, K)``, then the
    quantile-``w`` draw of ``softmax(logits / tau)`` at every position (the reference for :func:`quantile_draws`)."""
    def draw(x: torch.Tensor, t: float, reveal: torch.Tensor, w: torch.Tensor, tau: float) -> torch.Tensor:
        return sample_from_quantile(torch.softmax(logits_fn(x, t).float() / tau, dim=-1), w)
    return draw


def quantile_draws(model: DiT, h: torch.Tensor, reveal: torch.Tensor, w: torch.Tensor, tau: float,
                   chunk_bytes: int | None = None) -> torch.Tensor:
    """Codes ``(B, H, W)``: at each position where ``reveal`` is true, the code at quantile ``w`` of
    ``softmax(logits / tau)`` for the head's logits at final features ``h`` ``(B, N, hidden)``; 0 elsewhere.

    The same draws as :func:`draws_from_logits` on ``logits_from_features(model, h)``, without materialising those
    logits: only the head's rows that feed a revealed position are evaluated (a row is a token of ``p*p``
    positions for the full head, a position for the factorised head), in chunks of rows sized by
    :func:`purrception.flows.categorical.chunk_rows` so that :data:`SAMPLE_COPIES_PER_LOGIT` copies of a chunk's
    logits fit ``chunk_bytes`` (default by device). Each chunk's logits are the head's own affine map on those rows
    (the product and dtype of the materialised path, under autocast too), then softmax and inverse CDF in float32
    exactly as :func:`sample_from_quantile`; where a row (token) is only partly revealed, only its revealed
    sub-positions are kept for the softmax.
    """
    head = model.head
    groups, k = head.groups, head.out_channels
    chosen = head.row_targets(reveal)                                            # (M, G) bool
    keep = chosen.any(dim=1).nonzero().squeeze(1)                               # rows feeding a revealed position
    x = head.rows(h).index_select(0, keep)                                      # (R, r)
    entries = chosen.index_select(0, keep)                                      # (R, G)
    quantiles = head.row_targets(w).index_select(0, keep)                       # (R, G)
    partial = groups > 1 and not bool(entries.all())                            # some kept rows not fully revealed
    drawn = torch.zeros(entries.shape, dtype=torch.long, device=h.device)
    rows = chunk_rows(x.shape[0], SAMPLE_COPIES_PER_LOGIT * groups * k, x.device, chunk_bytes, matmul_dtype(x))
    for start in range(0, x.shape[0], rows):
        sel = entries[start:start + rows]                                       # (c, G)
        logits = F.linear(x[start:start + rows], head.classifier_weight, head.classifier_bias)     # (c, G*K)
        logits = logits.view(-1, k)                                             # (c*G, K)
        if partial:
            logits = logits[sel.reshape(-1)]                                    # (e, K), revealed entries only
        logits = logits.float().div_(tau)                                       # a fresh tensor: divide in place
        probs = torch.softmax(logits, dim=-1)
        del logits
        drawn[start:start + rows][sel] = sample_from_quantile(probs, quantiles[start:start + rows][sel])
    codes = torch.zeros(chosen.shape, dtype=torch.long, device=h.device).index_copy_(0, keep, drawn)  # (M, G)
    return head.from_rows(codes.unsqueeze(-1), h.shape[0])[..., 0]


def discrete_euler(draw: DrawFn, noise: torch.Tensor, steps: int, kappa: Scheduler, mask_id: int,
                   tau_at: Callable[[float], float], callback: StepCallback | None = None,
                   start: torch.Tensor | None = None, first_step: int = 0) -> torch.Tensor:
    """Masked-DFM Euler sampler (module docstring): tokens ``(B, h, w)`` from the all-mask source.

    Args:
        draw: ``(x_t, t, reveal, w, tau) -> codes (B, h, w)``: the code at quantile ``w`` of ``softmax(logits / tau)``
            of the probability denoiser at ``(x_t, t)``, read only where ``reveal``; :func:`draws_from_logits` makes
            one from materialised logits, :func:`quantile_draws` is the chunked one.
        noise: ``(B, >=2, h, w)`` standard normal; channels 0 and 1 give the reveal and the draw quantiles.
        steps: number of steps ``T`` on the grid ``t_s = s / T``.
        kappa: the scheduler the model was trained with.
        mask_id: the mask token id (``K``).
        tau_at: temperature at ``t`` (``softmax(logits / tau)``).
        callback: called with ``(t_s, x_{t_s})`` before every step.
        start: the ids ``(B, h, w)`` at step ``first_step`` (default: all ``mask_id``); tokens in it are never
            changed (editing: :meth:`DFM.edit`).
        first_step: the grid step to start from (0: ``t = 0``).
    """
    if steps <= 0:
        raise PurrError(f"`steps` must be a positive integer, got {steps}")
    if noise.shape[1] < 2:
        raise PurrError(f"DFM sampling reads 2 noise channels per position, got {noise.shape[1]}; use a tokenizer "
                        "with latent dim >= 2")
    u_reveal = torch.special.ndtr(noise[:, 0].double())                   # (B, h, w)
    w_draw = torch.special.ndtr(noise[:, 1].double())                     # (B, h, w)
    k = kappa(torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)).tolist()
    x = torch.full(u_reveal.shape, mask_id, dtype=torch.long, device=noise.device) if start is None else start.long()
    for s in range(first_step, steps):
        if callback is not None:
            callback(s / steps, x)
        masked = x == mask_id
        reveal = masked if s == steps - 1 else masked & (u_reveal <= k[s + 1])
        if not bool(reveal.any()):
            continue  # no position changes this step, so the denoiser's output would be unused
        t = s / steps
        x = torch.where(reveal, draw(x, t, reveal, w_draw, tau_at(t)), x)
    return x


def edit_start(known: KnownCodes, noise: torch.Tensor, steps: int, first_step: int, kappa: Scheduler,
               mask_id: int) -> torch.Tensor:
    """The ids at step ``first_step`` for :meth:`DFM.edit`: kept tokens everywhere ``known.keep``; elsewhere the
    source token where the image's reveal uniform ``u = Phi(noise[:, 0])`` is ``<= kappa(t_s)``, ``t_s = first_step
    / steps``, and the mask otherwise.

    Those are exactly the positions that :func:`discrete_euler` reveals before step ``first_step`` when it starts
    from the all-mask source, so the state is a draw of the mixture path ``p_t(x | x_1 = codes)`` at ``t_s``: a
    variation re-masks each position with probability ``1 - kappa(t_s)`` (``= (steps - first_step) / steps`` for
    the linear scheduler), seeded by the image's own noise, and the rest is sampled as ordinary sampling would
    continue. ``first_step = 0`` re-masks every unkept position.
    """
    codes = known.codes.long()
    x = torch.full_like(codes, mask_id)
    if first_step > 0:
        k = kappa(torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)).tolist()   # as discrete_euler's grid
        revealed = torch.special.ndtr(noise[:, 0].double()) <= k[first_step]
        x = torch.where(revealed, codes, x)
    return torch.where(known.keep, codes, x)


@register_method
class DFM(FlowMethod):
    """Masked discrete flow matching (Gat et al. 2024) on codebook indices; see the module docstring.

    Args:
        codebook: ``E``, ``(K, d)`` (only ``K`` and, for sampling noise, ``d >= 2`` are used).
        label_dropout: probability of the null class during training (trains CFG).
        scheduler: name of ``kappa`` in :data:`KAPPA_SCHEDULERS`.
        z_loss_weight: weight of ``mean(logsumexp(logits)^2)`` over masked positions; 0 = off.
        embed_dim: width of the ``K + 1`` entry token embedding that feeds the backbone's patch embedding.
    """

    name = "dfm"
    discrete_input = True

    def __init__(self, codebook: torch.Tensor, label_dropout: float = 0.1, scheduler: str = "linear",
                 z_loss_weight: float = 0.0, embed_dim: int = 64):
        super().__init__(codebook, label_dropout)
        self.kappa = get_scheduler(scheduler)
        self.scheduler = scheduler
        self.z_loss_weight = z_loss_weight
        if int(embed_dim) <= 0:
            raise PurrError(f"DFM embed_dim must be a positive integer, got {embed_dim}")
        self.embed_dim = int(embed_dim)

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    def options(self) -> dict[str, Any]:
        return {**super().options(), "scheduler": self.scheduler, "z_loss_weight": self.z_loss_weight,
                "embed_dim": self.embed_dim}

    def backbone_io(self) -> dict[str, int]:
        return {"in_channels": self.embed_dim, "out_channels": self.codebook_size,
                "input_vocab_size": self.codebook_size + 1}

    def loss(self, model: DiT, codes: torch.Tensor, y: torch.Tensor, generator: Randomness = None) -> LossOutput:
        """CE of the denoiser on the masked positions of ``x_t ~ p_t(. | x_1 = codes)`` (+ optional z-loss)."""
        t = sample_time(codes.shape[0], codes.device, generator)
        x_t = mask_path_sample(codes, t, self.kappa, self.mask_id, generator)
        y = drop_labels(y, self.label_dropout, model.null_class, generator)
        h = model.features(x_t, t, y)                                       # (B, N, hidden)
        masked = x_t == self.mask_id
        if not bool(masked.any()):  # every position revealed: nothing to predict in this batch
            zero = (h.sum() + sum(p.sum() for p in model.head.parameters())) * 0.0  # keeps every parameter in the graph
            return LossOutput(zero, {"ce": 0.0, "z_loss": 0.0, "masked_frac": 0.0})
        ce, z_sq = masked_cross_entropy_and_zloss(model, h, codes, masked, self.z_loss_weight)
        loss = ce + self.z_loss_weight * z_sq
        return LossOutput(loss, {"ce": ce.item(), "z_loss": z_sq.item(), "masked_frac": masked.float().mean().item()})

    def logits(self, model: DiT, x: torch.Tensor, t: float, y: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """Guided denoiser logits ``(B, h, w, K)`` at ids ``x``: CFG mixes the features, the K-way head runs once.

        Materialised: for tests and inspection; :meth:`generate` draws through :func:`quantile_draws` instead.
        """
        return logits_from_features(model, guided_features(model, x, t, y, cfg_scale))

    def check_sampler(self, sampler: SamplerSettings) -> None:
        """As every method's, and only ``solver="euler"``: this is the discrete Euler sampler of the mixture path."""
        super().check_sampler(sampler)
        if sampler.solver != "euler":
            raise PurrError(f"`solver` {sampler.solver!r} does not apply to dfm (it has its own discrete Euler "
                            "sampler); use `solver=euler`")

    def sample(self, model: DiT, noise: torch.Tensor, y: torch.Tensor, sampler: SamplerSettings, snap: Snap,
               callback: StepCallback | None = None) -> torch.Tensor:
        """Codes ``(B, h, w)`` from the all-mask source; ``noise`` supplies the per-image randomness.

        The state is token ids throughout, so ``snap`` is never needed; ``callback`` sees ``(t_s, x_{t_s})``, the
        ids (mask ``K``) at every step.
        """
        def draw(x: torch.Tensor, t: float, reveal: torch.Tensor, w: torch.Tensor, tau: float) -> torch.Tensor:
            return quantile_draws(model, guided_features(model, x, t, y, sampler.cfg_at(t)), reveal, w, tau)
        return discrete_euler(draw, noise, sampler.sample_steps, self.kappa, self.mask_id, sampler.tau_at, callback)

    @torch.no_grad()
    def edit(self, model: DiT, noise: torch.Tensor, y: torch.Tensor, sampler: SamplerSettings, snap: Snap,
             known: KnownCodes, first_step: int = 0, callback: StepCallback | None = None) -> torch.Tensor:
        """Codes ``(B, h, w)`` with ``known.codes`` kept where ``known.keep``: kept tokens are revealed from the start
        (never masked, so never redrawn) and only the others are revealed by the sampler; from ``first_step`` > 0
        the unkept positions start from :func:`edit_start`. ``first_step = 0`` with nothing kept is
        :meth:`generate`; ``first_step = steps`` returns the source codes."""
        known.check(noise)
        self.check_sampler(sampler)
        if first_step == sampler.sample_steps:
            return known.codes.long().clone()
        if not 0 <= first_step < sampler.sample_steps:
            raise PurrError(f"`first_step` must be in 0 .. `sample_steps` - 1 = {sampler.sample_steps - 1}, got "
                            f"{first_step}")
        start = edit_start(known, noise, sampler.sample_steps, first_step, self.kappa, self.mask_id)

        def draw(x: torch.Tensor, t: float, reveal: torch.Tensor, w: torch.Tensor, tau: float) -> torch.Tensor:
            return quantile_draws(model, guided_features(model, x, t, y, sampler.cfg_at(t)), reveal, w, tau)
        return discrete_euler(draw, noise, sampler.sample_steps, self.kappa, self.mask_id, sampler.tau_at, callback,
                              start=start, first_step=first_step)
