"""The one interface every VQ tokenizer implements.

A tokenizer maps images in ``[-1, 1]`` of shape ``(B, C, H, W)`` to integer codes ``c`` of shape ``(B, h, w)``
(paper eq. 9) and back. The flow methods only ever need the codebook ``E`` (``K x d``) and
:meth:`VQTokenizer.snap`; decoding is needed only to turn generated codes into pixels.

Latents ``z`` are channels-first ``(B, d, h, w)``; the clean latent of the paper is ``z1 = E[c]``
(moved to channels-first), i.e. the quantised vector *before* any post-quantisation convolution.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from purrception.hashing import sha256_tensor

__all__ = ["TokenizerIdentity", "VQTokenizer", "TrainableTokenizer", "ReconstructionLoss"]


@dataclass(frozen=True)
class TokenizerIdentity:
    """What a token shard or a checkpoint records to prove which tokenizer made its codes."""

    kind: str
    codebook_size: int
    latent_dim: int
    codebook_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "codebook_size": self.codebook_size,
            "latent_dim": self.latent_dim,
            "codebook_sha256": self.codebook_sha256,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TokenizerIdentity":
        return cls(str(d["kind"]), int(d["codebook_size"]), int(d["latent_dim"]), str(d["codebook_sha256"]))

    def describe(self) -> str:
        return f"{self.kind} (K={self.codebook_size}, d={self.latent_dim}, codebook {self.codebook_sha256})"


class VQTokenizer(nn.Module, abc.ABC):
    """Frozen VQ tokenizer: ``encode`` -> codes, ``codebook``, ``decode`` codes or latents.

    Subclasses set :attr:`kind`, :attr:`image_size`, :attr:`image_channels` and :attr:`downsample`
    and implement the abstract methods.
    """

    kind: str = "abstract"
    image_size: int
    image_channels: int
    downsample: int

    @property
    @abc.abstractmethod
    def codebook(self) -> torch.Tensor:
        """The codebook ``E`` as the flow sees it, shape ``(K, d)`` (for LlamaGen: unit-norm rows)."""

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in ``[-1, 1]`` -> codes ``(B, h, w)`` int64 (paper eq. 9)."""

    @abc.abstractmethod
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, d, h, w)`` (codebook rows or any continuous point) -> images in ``[-1, 1]``."""

    @abc.abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the architecture (JSON-serialisable)."""

    # ---- shared behaviour -------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return int(self.codebook.shape[0])

    @property
    def latent_dim(self) -> int:
        return int(self.codebook.shape[1])

    @property
    def latent_shape(self) -> tuple[int, int]:
        """``(h, w)`` of the code grid for one image."""
        side = self.image_size // self.downsample
        return (side, side)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, h, w)`` -> latents ``z1 = E[c]`` of shape ``(B, d, h, w)``."""
        return self.codebook[codes.long()].permute(0, 3, 1, 2).contiguous()

    def snap(self, z: torch.Tensor) -> torch.Tensor:
        """Continuous latents ``(B, d, h, w)`` -> nearest codes ``(B, h, w)`` (squared L2 to ``codebook``)."""
        return nearest_code(z, self.codebook)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, h, w)`` -> images in ``[-1, 1]``."""
        return self.decode_latents(self.lookup(codes))

    def identity(self) -> TokenizerIdentity:
        return TokenizerIdentity(self.kind, self.codebook_size, self.latent_dim, sha256_tensor(self.codebook))


#: a reconstruction loss on pixels in ``[-1, 1]``: ``(reconstruction, images) -> scalar``
ReconstructionLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrainableTokenizer(VQTokenizer):
    """A VQ tokenizer that :func:`purrception.tokenizers.train.train_tokenizer` can fit, and that is saved as a folder.

    What a trainable kind provides (see :mod:`purrception.tokenizers.registry`):

    * a config dataclass whose every field has a default, with at least ``image_size``, ``image_channels`` and
      ``downsample`` (the folder trainer sets the first two from the images and reads the third to pick a
      resolution), and a ``check()`` method that raises :class:`~purrception.errors.PurrError` on settings the
      architecture cannot take;
    * this class's subclass, built as ``model_class(config)`` (the trainer seeds torch first, so the same seed gives
      the same initial weights), with ``kind`` set to the registered name and ``config`` kept on the instance;
    * :meth:`training_loss`: one batch's loss. Updates that are not gradient steps (e.g. an EMA codebook) happen
      inside it while the module is in training mode. The generic trainer adds Adam, the learning-rate schedule,
      resumable state and the metrics.
    """

    #: the image sides the architecture accepts, inclusive (the folder trainer clamps an inferred side into it)
    image_size_range: ClassVar[tuple[int, int]] = (16, 256)
    config: Any

    @abc.abstractmethod
    def training_loss(self, images: torch.Tensor, reconstruction: ReconstructionLoss
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training batch.

        Args:
            images: ``(B, C, H, W)`` in ``[-1, 1]``.
            reconstruction: the chosen reconstruction loss on pixels.

        Returns:
            ``(loss, reconstruction term)``: the loss to minimise and the reconstruction part of it (for progress).
        """

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Index of the nearest codebook row for every position of ``z`` ``(B, d, h, w)`` -> ``(B, h, w)``.

    Computed in chunks of codebook rows so that ``B*h*w x K`` distances never exist at once for large K.
    """
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
    cb = codebook.float()
    best_val = torch.full((flat.shape[0],), float("inf"), device=z.device)
    best_idx = torch.zeros(flat.shape[0], dtype=torch.long, device=z.device)
    for start in range(0, cb.shape[0], chunk):
        rows = cb[start : start + chunk]
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2 ; ||z||^2 is constant per row, so drop it.
        dist = rows.pow(2).sum(1)[None, :] - 2.0 * flat @ rows.T
        val, idx = dist.min(dim=1)
        better = val < best_val
        best_val = torch.where(better, val, best_val)
        best_idx = torch.where(better, idx + start, best_idx)
    return best_idx.view(b, h, w)
