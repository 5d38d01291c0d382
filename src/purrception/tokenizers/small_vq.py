"""A small trainable VQ tokenizer for the embedded data (28x28 grey digits -> 7x7 codes).

Conv encoder / decoder with residual blocks and a vector quantiser whose codebook is learnt by exponential
moving averages (van den Oord et al. 2017, App. A.1) with dead-code restarts, so that the codebook stays in use.
Encoder outputs and codebook rows live on the sphere of radius ``sqrt(d)`` (cosine-similarity VQ, as LlamaGen
does with unit rows), which puts the clean latents ``z1`` on the same scale as the flow's noise ``z0 ~ N(0, I)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from purrception.tokenizers.base import VQTokenizer, nearest_code

__all__ = ["SmallVQConfig", "SmallVQ", "EMAQuantizer"]


@dataclass
class SmallVQConfig:
    """Architecture of :class:`SmallVQ`; saved beside its weights."""

    image_size: int = 28
    image_channels: int = 1
    codebook_size: int = 128
    latent_dim: int = 4
    width: int = 16
    ema_decay: float = 0.99
    commitment: float = 0.25
    dead_code_threshold: float = 0.03


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
    """Nearest-neighbour quantiser on the sphere of radius ``sqrt(d)`` with an EMA-learnt codebook."""

    def __init__(self, codebook_size: int, dim: int, decay: float, dead_code_threshold: float):
        super().__init__()
        self.decay = decay
        self.dead_code_threshold = dead_code_threshold
        self.radius = math.sqrt(dim)
        init = self._project(torch.randn(codebook_size, dim))
        self.register_buffer("embedding", init)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", init.clone())

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.radius

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Channels-first latents ``(B, d, h, w)`` -> the sphere the codebook lives on."""
        return F.normalize(z, dim=1) * self.radius

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
        onehot = F.one_hot(codes.reshape(-1), self.embedding.shape[0]).type_as(flat)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.T @ flat, alpha=1 - self.decay)
        self.embedding.copy_(self._project(self.embed_sum / self.cluster_size.clamp_min(1e-5)[:, None]))
        # Dead-code restart: rows that (almost) never win are moved onto random encoder outputs.
        dead = self.cluster_size < self.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
            fresh = self._project(flat[pick] + 0.01 * torch.randn_like(flat[pick]))
            self.embedding[dead] = fresh
            self.embed_sum[dead] = fresh
            self.cluster_size[dead] = 1.0


class SmallVQ(VQTokenizer):
    """Trainable VQ autoencoder, downsampling by 4 (28x28 -> 7x7 codes)."""

    kind = "small-vq"
    downsample = 4

    def __init__(self, config: SmallVQConfig):
        super().__init__()
        self.config = config
        self.image_size = config.image_size
        self.image_channels = config.image_channels
        w, d = config.width, config.latent_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(config.image_channels, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), _ResBlock(2 * w),
            nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1), _ResBlock(4 * w),
            _norm(4 * w), nn.SiLU(), nn.Conv2d(4 * w, d, 1),
        )
        self.quantizer = EMAQuantizer(config.codebook_size, d, config.ema_decay, config.dead_code_threshold)
        self.decoder = nn.Sequential(
            nn.Conv2d(d, 4 * w, 3, padding=1), _ResBlock(4 * w),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1), _ResBlock(2 * w),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w, config.image_channels, 3, padding=1),
        )

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantizer.embedding

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: images -> (reconstruction, codes, commitment term)."""
        q, codes, commit = self.quantizer(self.encoder(images))
        return self.decoder(q), codes, commit

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return nearest_code(self.quantizer.project(self.encoder(images)), self.codebook)

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).clamp(-1.0, 1.0)
