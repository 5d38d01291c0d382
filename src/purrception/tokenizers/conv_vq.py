"""A trainable convolutional VQ tokenizer for any image folder (and the embedded data's preset).

The encoder / decoder follow taming's VQGAN in miniature: a stem convolution, then one stride-2 stage per factor of
two of the downsampling ``F`` (a strided convolution and a residual block with GroupNorm + SiLU), and a 1x1
projection to the ``d``-dimensional latent; the decoder mirrors it with transposed convolutions. An image of side
``R`` becomes an ``R/F x R/F`` grid of codes (paper eq. 9).

The vector quantiser keeps codes in use at large ``K`` with the two measures of van den Oord et al. (2017, App.
A.1) and LlamaGen: the codebook is learnt by exponential moving averages of the encoder outputs assigned to each
row, rows that (almost) never win are restarted on random encoder outputs, and the lookup is l2-normalised in a low
dimension: encoder outputs and codebook rows live on the sphere of radius ``sqrt(d)`` (cosine-similarity VQ),
which also puts the clean latents ``z1`` on the same scale as the flow's noise ``z0 ~ N(0, I)``. With
``l2_normalize=False`` the lookup is the plain Euclidean one of taming's VQGAN (kept to measure the choice; the
latents' scale is then whatever the encoder learns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from purrception.errors import PurrError
from purrception.tokenizers.base import ReconstructionLoss, TrainableTokenizer, nearest_code
from purrception.tokenizers.registry import TokenizerKind, register_kind

__all__ = ["ConvVQConfig", "ConvVQ", "EMAQuantizer", "DOWNSAMPLE_FACTORS", "MAX_CODEBOOK_SIZE"]

#: supported downsampling factors F (one stride-2 stage per factor of two)
DOWNSAMPLE_FACTORS = (2, 4, 8)
#: the largest codebook the trainable tokenizer accepts (the paper's tokenizers have K = 16384)
MAX_CODEBOOK_SIZE = 16384
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 256


@dataclass
class ConvVQConfig:
    """Architecture of :class:`ConvVQ`; saved beside its weights. The defaults are the embedded digits' preset."""

    image_size: int = 28
    image_channels: int = 1
    downsample: int = 4
    codebook_size: int = 128
    latent_dim: int = 4
    width: int = 16
    ema_decay: float = 0.99
    commitment: float = 0.25
    dead_code_threshold: float = 0.03
    l2_normalize: bool = True

    def check(self) -> None:
        """Refuse settings the architecture cannot take, in one line naming the fix."""
        if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise PurrError(f"resolution must lie in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {self.image_size}")
        if self.downsample not in DOWNSAMPLE_FACTORS:
            raise PurrError(f"downsampling factor must be one of {DOWNSAMPLE_FACTORS}, got {self.downsample}")
        if self.image_size % self.downsample:
            raise PurrError(f"resolution {self.image_size} is not a multiple of the downsampling factor "
                            f"{self.downsample}; pick a resolution divisible by it")
        if self.image_channels not in (1, 3):
            raise PurrError(f"images must have 1 (grey) or 3 (RGB) channels, got {self.image_channels}")
        if not 2 <= self.codebook_size <= MAX_CODEBOOK_SIZE:
            raise PurrError(f"codebook size must lie in [2, {MAX_CODEBOOK_SIZE}], got {self.codebook_size}")
        if self.latent_dim < 1 or self.width < 1:
            raise PurrError("latent dimension and width must be positive")

    @property
    def stage_channels(self) -> list[int]:
        """Channels after the stem and after each downsampling stage: ``width * (1, 2, 4, 4, ...)``."""
        stages = int(math.log2(self.downsample))
        return [self.width * min(2**i, 4) for i in range(stages + 1)]


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class _ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                  _norm(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EMAQuantizer(nn.Module):
    """Nearest-neighbour quantiser with an EMA-learnt codebook, on the sphere of radius ``sqrt(d)`` (``l2_normalize``)
    or in plain Euclidean space."""

    def __init__(self, codebook_size: int, dim: int, decay: float, dead_code_threshold: float,
                 l2_normalize: bool = True):
        super().__init__()
        self.decay = decay
        self.dead_code_threshold = dead_code_threshold
        self.l2_normalize = l2_normalize
        self.radius = math.sqrt(dim)
        init = self._project(torch.randn(codebook_size, dim))
        self.register_buffer("embedding", init)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", init.clone())

    def _project(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return F.normalize(x, dim=dim) * self.radius if self.l2_normalize else x

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Channels-first latents ``(B, d, h, w)`` -> the space the codebook lives in (the sphere, or unchanged)."""
        return self._project(z, dim=1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z`` ``(B, d, h, w)`` -> (straight-through quantised latents, codes ``(B, h, w)``, commitment term)."""
        z = self.project(z)
        codes = nearest_code(z.detach(), self.embedding)
        q = self.embedding[codes].permute(0, 3, 1, 2)
        if self.training:
            self._ema_update(z.detach(), codes)
        commit = F.mse_loss(z, q.detach())
        return z + (q - z).detach(), codes, commit

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        idx = codes.reshape(-1)
        counts = torch.bincount(idx, minlength=self.embedding.shape[0]).type_as(flat)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, flat)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.embedding.copy_(self._project(self.embed_sum / self.cluster_size.clamp_min(1e-5)[:, None]))
        # Dead-code restart: rows that (almost) never win are moved onto random encoder outputs. The draws come
        # from the CPU generator on every device, so that a resumed run repeats them exactly.
        dead = self.cluster_size < self.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(0, flat.shape[0], (n_dead,)).to(flat.device)
            jitter = 0.01 * torch.randn(n_dead, flat.shape[1]).to(flat.device)
            fresh = self._project(flat[pick] + jitter)
            self.embedding[dead] = fresh
            self.embed_sum[dead] = fresh
            self.cluster_size[dead] = 1.0


class ConvVQ(TrainableTokenizer):
    """Trainable VQ autoencoder: ``(C, R, R)`` images in ``[-1, 1]`` <-> ``(R/F, R/F)`` codes."""

    kind = "conv-vq"
    image_size_range = (MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)

    def __init__(self, config: ConvVQConfig):
        super().__init__()
        config.check()
        self.config = config
        self.image_size = config.image_size
        self.image_channels = config.image_channels
        self.downsample = config.downsample
        chans, d = config.stage_channels, config.latent_dim
        encoder: list[nn.Module] = [nn.Conv2d(config.image_channels, chans[0], 3, padding=1), nn.SiLU()]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            encoder += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), _ResBlock(c_out)]
        encoder += [_norm(chans[-1]), nn.SiLU(), nn.Conv2d(chans[-1], d, 1)]
        self.encoder = nn.Sequential(*encoder)
        self.quantizer = EMAQuantizer(config.codebook_size, d, config.ema_decay, config.dead_code_threshold,
                                       config.l2_normalize)
        decoder: list[nn.Module] = [nn.Conv2d(d, chans[-1], 3, padding=1), _ResBlock(chans[-1])]
        for i in range(len(chans) - 1, 0, -1):
            decoder.append(nn.ConvTranspose2d(chans[i], chans[i - 1], 4, stride=2, padding=1))
            decoder.append(_ResBlock(chans[i - 1]) if i > 1 else nn.SiLU())
        decoder.append(nn.Conv2d(chans[0], config.image_channels, 3, padding=1))
        self.decoder = nn.Sequential(*decoder)

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantizer.embedding

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: images -> (reconstruction, codes, commitment term)."""
        q, codes, commit = self.quantizer(self.encoder(images))
        return self.decoder(q), codes, commit

    def training_loss(self, images: torch.Tensor, reconstruction: ReconstructionLoss
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction plus ``beta`` times the commitment term ``||z_e - sg(q)||^2`` (van den Oord et al. 2017,
        eq. 3); the codebook itself is learnt by EMA inside the quantiser's training pass."""
        recon, _, commit = self(images)
        rec = reconstruction(recon, images)
        return rec + self.config.commitment * commit, rec

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return nearest_code(self.quantizer.project(self.encoder(images)), self.codebook)

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).clamp(-1.0, 1.0)


register_kind(TokenizerKind(
    name="conv-vq", model_class=ConvVQ, config_class=ConvVQConfig, legacy_names=("small-vq",), keyed_by_name=False,
    summary="convolutional VQ autoencoder, EMA codebook on the sphere with dead-code restarts (F in 2, 4, 8; "
            "K <= 16384)"), builtin=True)
