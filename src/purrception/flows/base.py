"""The interface shared by every method, and the registry that picks one by name.

A method owns the math of one paper objective: how a training pair is built from clean codes, what the loss is,
and how the backbone's output becomes a velocity (or, for DFM, a token update). It owns no I/O, no logging and no
distributed code (docs/ARCHITECTURE.md). Time convention everywhere: ``z0`` noise at ``t = 0``, ``z1`` data at
``t = 1``, ``z_t = t z1 + (1 - t) z0``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, NamedTuple, Union

import torch

from purrception.errors import PurrError
from purrception.flows.known import KnownCodes, integrate_from, start_state
from purrception.models.dit import DiT
from purrception.sampling.schedules import as_spec
from purrception.sampling.settings import SamplerSettings
from purrception.sampling.solvers import EndpointFn, StepCallback, VelocityFn, integrate

__all__ = ["LossOutput", "Snap", "Randomness", "uniform", "normal", "FlowMethod", "METHODS", "register_method",
           "get_method", "drop_labels", "sample_time", "PathSample", "make_path_sample", "endpoint_velocity"]

#: latents ``(B, d, h, w)`` -> codes ``(B, h, w)``: a tokenizer's ``snap``
Snap = Callable[[torch.Tensor], torch.Tensor]

#: Where a training loss draws its noise, times and label dropout from: one generator for the whole batch, one
#: generator per sample (row ``i`` of every draw then comes from generator ``i``, so a sample's randomness does not
#: depend on which batch it is in or where: the training loop's per-sample streams, ``training.data``), or None
#: (torch's global generator).
Randomness = Union[torch.Generator, Sequence[torch.Generator], None]


def _draw(sampler: Callable[..., torch.Tensor], shape: Sequence[int], generator: Randomness,
          device: torch.device | str) -> torch.Tensor:
    if generator is None or isinstance(generator, torch.Generator):
        return sampler(tuple(shape), generator=generator, device=device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} per-sample generators for a batch of {shape[0]}")
    if shape[0] == 0:
        return sampler(tuple(shape), device=device)
    return torch.stack([sampler(tuple(shape[1:]), generator=g, device=device) for g in generator])


def uniform(shape: Sequence[int], generator: Randomness, device: torch.device | str) -> torch.Tensor:
    """``U(0, 1)`` draws of ``shape`` (the first dimension is the batch) from ``generator`` (:data:`Randomness`)."""
    return _draw(torch.rand, shape, generator, device)


def normal(shape: Sequence[int], generator: Randomness, device: torch.device | str) -> torch.Tensor:
    """``N(0, 1)`` draws of ``shape`` (the first dimension is the batch) from ``generator`` (:data:`Randomness`)."""
    return _draw(torch.randn, shape, generator, device)


@dataclass
class LossOutput:
    """A scalar training loss and the named parts worth logging (detached)."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def drop_labels(y: torch.Tensor, prob: float, null_class: int, generator: Randomness = None) -> torch.Tensor:
    """Replace each label by the null class with probability ``prob`` (label dropout, trains CFG)."""
    if prob <= 0:
        return y
    drop = uniform(y.shape, generator, y.device) < prob
    return torch.where(drop, torch.full_like(y, null_class), y)


def sample_time(batch: int, device: torch.device, generator: Randomness = None) -> torch.Tensor:
    """``t ~ U(0, 1)`` per sample (paper App. B)."""
    return uniform((batch,), generator, device)


class PathSample(NamedTuple):
    """One draw from the linear path: noise ``z0``, clean latents ``z1`` (both ``(B, d, h, w)``), ``t`` ``(B,)``
    and ``z_t = t z1 + (1 - t) z0``."""

    z0: torch.Tensor
    z1: torch.Tensor
    t: torch.Tensor
    z_t: torch.Tensor


def make_path_sample(codebook: torch.Tensor, codes: torch.Tensor, generator: Randomness = None) -> PathSample:
    """``z1 = E[c]``, ``z0 ~ N(0, I)``, ``t ~ U(0, 1)``, ``z_t = t z1 + (1 - t) z0``.

    The linear (OT) path of paper Sec. 2.2 (eq. 7's conditional field) and App. B (Fig. 6, training).

    Shared by every continuous-latent method so that they see the same pairs for the same generator state
    (draw order: ``z0`` then ``t``).
    """
    z1 = codebook[codes.long()].permute(0, 3, 1, 2)                           # (B, d, h, w)
    z0 = normal(z1.shape, generator, z1.device)
    t = sample_time(z1.shape[0], z1.device, generator)
    tb = t[:, None, None, None]
    return PathSample(z0, z1, t, tb * z1 + (1 - tb) * z0)


def endpoint_velocity(mu: torch.Tensor, z_t: torch.Tensor, t: float) -> torch.Tensor:
    """``v = (mu - z_t) / (1 - t)`` (paper eqs. 7 and 13) for an endpoint prediction ``mu``; needs ``t < 1``."""
    return (mu - z_t) / (1.0 - t)


class FlowMethod(abc.ABC):
    """One training objective and its sampler over a frozen codebook ``E`` (``K x d``).

    Args:
        codebook: the tokenizer's codebook as the flow sees it, ``(K, d)``.
        label_dropout: probability of replacing a label by the null class during training.
        **options: method-specific options (see each subclass); saved in checkpoints.
    """

    name: ClassVar[str]
    #: does the backbone read token ids (True) or continuous latents (False)?
    discrete_input: ClassVar[bool] = False
    #: does sampling read logits, so that a temperature tau (eq. 15) means something?
    has_temperature: ClassVar[bool] = True

    def __init__(self, codebook: torch.Tensor, label_dropout: float = 0.1):
        self.codebook = codebook
        self.label_dropout = label_dropout

    @property
    def codebook_size(self) -> int:
        return int(self.codebook.shape[0])

    @property
    def latent_dim(self) -> int:
        return int(self.codebook.shape[1])

    def to(self, device: torch.device | str) -> "FlowMethod":
        self.codebook = self.codebook.to(device)
        return self

    def options(self) -> dict[str, Any]:
        """Constructor options, for the checkpoint (override to add method-specific ones)."""
        return {"label_dropout": self.label_dropout}

    @abc.abstractmethod
    def backbone_io(self) -> dict[str, int]:
        """DiT fields this method fixes: ``in_channels``, ``out_channels`` and ``input_vocab_size``."""

    @abc.abstractmethod
    def loss(self, model: DiT, codes: torch.Tensor, y: torch.Tensor, generator: Randomness = None) -> LossOutput:
        """Training loss for clean codes ``(B, h, w)`` and labels ``(B,)``, its randomness drawn from ``generator``
        (:data:`Randomness`)."""

    # Optional hooks for solvers and uncertainty maps (sampling/solvers.py, generation/uncertainty.py).

    #: does the velocity come from an endpoint prediction, ``v = (mu(z, t) - z) / (1 - t)`` (:meth:`endpoint`)?
    has_endpoint: ClassVar[bool] = False
    #: is ``mu`` the mean of a categorical posterior over codes (:meth:`posterior_logits`)?
    has_posterior: ClassVar[bool] = False

    def velocity(self, model: DiT, z: torch.Tensor, t: float, y: torch.Tensor, tau: float,
                 cfg_scale: float) -> torch.Tensor:
        """The guided velocity ``v(z, t)`` ``(B, d, h, w)`` of a continuous method; endpoint predictors get
        ``(mu - z) / (1 - t)`` (eq. 7) from :meth:`endpoint`."""
        if self.has_endpoint:
            return endpoint_velocity(self.endpoint(model, z, t, y, tau, cfg_scale), z, t)
        raise PurrError(f"method {self.name!r} has no continuous velocity")

    def endpoint(self, model: DiT, z: torch.Tensor, t: float, y: torch.Tensor, tau: float,
                 cfg_scale: float) -> torch.Tensor:
        """The predicted endpoint ``mu(z, t)`` ``(B, d, h, w)`` behind the velocity (eq. 7); see ``has_endpoint``."""
        raise PurrError(f"method {self.name!r} does not predict an endpoint")

    def posterior_logits(self, model: DiT, z: torch.Tensor, t: float, y: torch.Tensor,
                         cfg_scale: float) -> torch.Tensor:
        """Guided logits ``(B, h, w, K)`` of the posterior over codes at ``(z, t)``; see ``has_posterior``."""
        raise PurrError(f"method {self.name!r} has no categorical posterior over codes along its flow; "
                        "uncertainty maps need a purrception checkpoint")

    def fields(self, model: DiT, y: torch.Tensor, sampler: SamplerSettings) -> tuple[VelocityFn, EndpointFn | None]:
        """``(v, mu)`` as plain callables of ``(z, t)`` for :func:`~purrception.sampling.solvers.integrate`, with
        ``tau`` and ``cfg_scale`` read from ``sampler`` at ``t``; ``mu`` is ``None`` unless ``has_endpoint``."""
        if not self.has_endpoint:
            return (lambda z, t: self.velocity(model, z, t, y, sampler.tau_at(t), sampler.cfg_at(t))), None

        def mu(z: torch.Tensor, t: float) -> torch.Tensor:
            return self.endpoint(model, z, t, y, sampler.tau_at(t), sampler.cfg_at(t))

        return (lambda z, t: endpoint_velocity(mu(z, t), z, t)), mu

    def check_sampler(self, sampler: SamplerSettings) -> None:
        """Refuse settings this method cannot sample with: a temperature other than 1 when the method has no logits
        (``has_temperature``). The range of each knob is :class:`SamplerSettings`' own check; this is the method's.

        Raises:
            PurrError: naming the field.
        """
        if not self.has_temperature and sampler.tau != 1.0:
            raise PurrError(f"`tau` has no meaning for {self.name} (it has no logits), got {as_spec(sampler.tau)}; "
                            "leave `tau` at 1")

    @torch.no_grad()
    def generate(self, model: DiT, noise: torch.Tensor, y: torch.Tensor, sampler: SamplerSettings, snap: Snap,
                 callback: StepCallback | None = None) -> torch.Tensor:
        """Codes ``(B, h, w)`` from ``noise``: :meth:`check_sampler`, then :meth:`sample`. Every generation path
        (``generation.generate``, ``generation.uncertainty``, the training loop's grids) comes through here.

        Args:
            model: the backbone.
            noise: ``z0`` ``(B, d, h, w)``.
            y: labels ``(B,)``.
            sampler: sample_steps, solver, ``tau(t)``, ``cfg_scale(t)``.
            snap: latents ``(B, d, h, w)`` -> codes ``(B, h, w)``: the tokenizer's own
                :meth:`~purrception.tokenizers.base.VQTokenizer.snap`.
            callback: called with ``(t_i, z_{t_i})`` at every grid time before ``t = 1`` (uncertainty maps).
        """
        self.check_sampler(sampler)
        return self.sample(model, noise, y, sampler, snap, callback)

    def sample(self, model: DiT, noise: torch.Tensor, y: torch.Tensor, sampler: SamplerSettings, snap: Snap,
               callback: StepCallback | None = None) -> torch.Tensor:
        """The sampler behind :meth:`generate` (settings already checked): integrate ``dz/dt = v`` from ``z0 =
        noise`` to ``t = 1`` (paper App. B; an endpoint predictor's last step is ``z <- mu``), then ``snap``
        ``z_1`` to codes."""
        v, mu = self.fields(model, y, sampler)
        return snap(integrate(v, noise, sampler.sample_steps, sampler.solver, endpoint=mu, callback=callback))

    # Editing hooks (flows/known.py, generation/editing.py).

    def known_fields(self, model: DiT, y: torch.Tensor, sampler: SamplerSettings, target: torch.Tensor,
                     keep: torch.Tensor, noise: torch.Tensor) -> tuple[VelocityFn, EndpointFn | None]:
        """:meth:`fields` with the positions where ``keep`` ``(B, 1, h, w)`` carried along their conditional path
        ``z_t = t E[c] + (1 - t) z0`` to ``target = E[c]`` ``(B, d, h, w)`` from ``noise = z0`` (flows/known.py).
        Each method implements it in its own module."""
        raise PurrError(f"method {self.name!r} does not support editing (inpainting or variations)")

    @torch.no_grad()
    def edit(self, model: DiT, noise: torch.Tensor, y: torch.Tensor, sampler: SamplerSettings, snap: Snap,
             known: KnownCodes, first_step: int = 0, callback: StepCallback | None = None) -> torch.Tensor:
        """Codes ``(B, h, w)`` generated with ``known.codes`` kept where ``known.keep``, from grid step
        ``first_step`` of ``sampler.sample_steps`` (flows/known.py); kept codes are returned exactly. ``first_step =
        0`` with nothing kept is :meth:`generate`; ``first_step = sample_steps`` returns the source codes."""
        known.check(noise)
        self.check_sampler(sampler)
        if first_step == sampler.sample_steps:
            return known.codes.long().clone()
        target = known.latents(self.codebook)
        v, mu = self.known_fields(model, y, sampler, target, known.keep[:, None], noise)
        z = integrate_from(v, mu, start_state(noise, target, first_step, sampler.sample_steps), sampler.sample_steps,
                           first_step, sampler.solver, callback)
        return torch.where(known.keep, known.codes.long(), snap(z))


METHODS: dict[str, type[FlowMethod]] = {}


def register_method(cls: type[FlowMethod]) -> type[FlowMethod]:
    """Class decorator: make a method selectable by its ``name``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[FlowMethod]:
    if name not in METHODS:
        raise PurrError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]
