"""Output heads of the DiT: the full-rank linear head (DiT's final layer) and a factorised K-way head.

Both are affine in the final features ``h`` (so CFG on features stays exact, see ``sampling.guidance``) and share
one interface:

- ``forward(h)``: ``(B, N, hidden)`` -> token-layout outputs ``(B, N, p*p*C)`` (DiT's final layer; ``DiT.unpatchify``
  turns them into ``(B, H, W, C)``).
- A *row view* used by the chunked K-way ops in ``flows.categorical``: the head is ``G`` classifiers applied to
  ``M`` rows of width ``r``,

      logits[m, g, :] = rows(h)[m] @ classifier_weight[g*C:(g+1)*C].T + classifier_bias[g*C:(g+1)*C],

  ``row_targets(codes)`` puts per-position targets into the same ``(M, G)`` layout and ``from_rows`` maps a
  per-row-and-group result ``(M, G, D)`` back to positions ``(B, H, W, D)``.

A latent side ``H`` that is not a multiple of ``p`` is padded on the bottom and right to the next multiple
(:class:`~purrception.models.dit.DiT` pads its input the same way). :class:`LinearHead`'s ``row_targets`` pads
per-position values with zeros (``False`` for masks), so a padded position is never selected, and ``from_rows``
crops them away again; :class:`FactorisedHead`'s rows are positions, so its ``rows`` leaves the padded ones out.

For :class:`LinearHead` (the paper's head, App. C) a row is a token (``M = B N``, ``r = hidden``) and ``G = p*p``:
each sub-position of a patch has its own ``C x hidden`` matrix. For :class:`FactorisedHead` a row is a latent
position (``M = B H W``, ``r = rank``) and ``G = 1``: each token is first projected to its ``p*p`` sub-positions at
width ``r``, then one shared ``r -> C`` classifier runs. With ``C = K`` this cuts the head's weights and FLOPs from
``p^2 K hidden`` to about ``p^2 r hidden + r K`` per token, i.e. by about ``hidden / r``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["unpatchify", "patchify_positions", "padded_side", "pad_grid", "LinearHead", "FactorisedHead", "build_head"]


def padded_side(side: int, patch: int) -> int:
    """The smallest multiple of ``patch`` that is at least ``side``: the grid side the DiT's tokens cover."""
    return -(-side // patch) * patch


def pad_grid(x: torch.Tensor, side: int) -> torch.Tensor:
    """Per-position values ``(B, H, W, *rest)`` zero-padded (``False`` for masks) on the bottom and right to
    ``side x side``; unchanged when already that size."""
    extra = side - x.shape[1]
    if extra == 0:
        return x
    out = x.new_zeros((x.shape[0], side, side, *x.shape[3:]))
    out[:, :x.shape[1], :x.shape[2]] = x
    return out


def unpatchify(out: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """Token outputs ``(B, N, p*p*C)`` on a ``g x g`` token grid -> positions ``(B, g*p, g*p, C)`` (channels last)."""
    b, n = out.shape[:2]
    g = int(round(n ** 0.5))
    out = out.reshape(b, g, g, patch, patch, channels).permute(0, 1, 3, 2, 4, 5)  # (B, g, p, g, p, C)
    return out.reshape(b, g * patch, g * patch, channels)


def patchify_positions(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Inverse of :func:`unpatchify` for per-position values: ``(B, H, W, *rest)`` -> ``(B, N, p*p, *rest)``."""
    b, hh, ww = x.shape[:3]
    rest = x.shape[3:]
    g_h, g_w = hh // patch, ww // patch
    x = x.reshape(b, g_h, patch, g_w, patch, *rest).transpose(2, 3)               # (B, g, g, p, p, *rest)
    return x.reshape(b, g_h * g_w, patch * patch, *rest)


class LinearHead(nn.Linear):
    """DiT's final linear layer ``hidden -> p*p*C`` (the paper's K-way head when ``C = K``).

    A subclass of :class:`torch.nn.Linear`, so checkpoints keep the keys ``head.weight`` / ``head.bias``.
    Row view: rows are tokens, ``G = p*p`` groups (one ``C x hidden`` matrix per sub-position).
    """

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, side: int):
        super().__init__(hidden_size, patch_size * patch_size * out_channels)
        self.patch_size = patch_size
        self.out_channels = out_channels
        self.groups = patch_size * patch_size
        self.side = side
        self.padding = padded_side(side, patch_size) - side

    @property
    def classifier_weight(self) -> torch.Tensor:
        """``(G*C, hidden)``: group ``g`` (sub-position ``g = i*p + j``) owns rows ``g*C:(g+1)*C``."""
        return self.weight

    @property
    def classifier_bias(self) -> torch.Tensor:
        return self.bias

    def rows(self, h: torch.Tensor) -> torch.Tensor:
        """Features ``(B, N, hidden)`` -> rows ``(B*N, hidden)``."""
        return h.reshape(-1, h.shape[-1])

    def row_targets(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, H, W)`` -> ``(B*N, p*p)`` in the row/group layout (padded positions hold 0 / ``False``)."""
        padded = pad_grid(codes, self.side + self.padding)
        return patchify_positions(padded, self.patch_size).reshape(-1, self.groups)

    def from_rows(self, out: torch.Tensor, batch: int) -> torch.Tensor:
        """``(M, G, D)`` -> ``(B, H, W, D)`` (padded positions dropped)."""
        d = out.shape[-1]
        return unpatchify(out.reshape(batch, -1, self.groups * d), self.patch_size, d)[:, :self.side, :self.side]

    def zero_init_output(self) -> None:
        """DiT's zero-initialised final layer: all outputs start at 0."""
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class FactorisedHead(nn.Module):
    """Low-rank K-way head: ``hidden -> p*p*r`` projection, then one shared ``r -> C`` classifier.

    Still affine in the features (no nonlinearity), so CFG on features is exact. The paper's head is the
    full-rank case (:class:`LinearHead`). Row view: rows are latent positions, ``G = 1``.

    Args:
        hidden_size: backbone width.
        patch_size: ``p``.
        out_channels: ``C`` (``K`` for categorical methods).
        rank: ``r``, the width shared by all sub-positions.
        side: the latent grid's side ``H`` (padded to a multiple of ``p`` as the module docstring says).
    """

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, rank: int, side: int):
        super().__init__()
        self.patch_size = patch_size
        self.out_channels = out_channels
        self.rank = rank
        self.groups = 1
        self.side = side
        self.padding = padded_side(side, patch_size) - side
        self.proj = nn.Linear(hidden_size, patch_size * patch_size * rank)
        self.classifier = nn.Linear(rank, out_channels)

    @property
    def classifier_weight(self) -> torch.Tensor:
        return self.classifier.weight

    @property
    def classifier_bias(self) -> torch.Tensor:
        return self.classifier.bias

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``(B, N, hidden)`` -> ``(B, N, p*p*C)`` (token layout, like :class:`LinearHead`)."""
        b, n = h.shape[:2]
        sub = self.proj(h).reshape(b, n, self.patch_size * self.patch_size, self.rank)  # (B, N, p*p, r)
        return self.classifier(sub).reshape(b, n, -1)

    def rows(self, h: torch.Tensor) -> torch.Tensor:
        """Features ``(B, N, hidden)`` -> per-position features ``(B*H*W, r)`` (padded positions dropped)."""
        positions = unpatchify(self.proj(h), self.patch_size, self.rank)[:, :self.side, :self.side]
        return positions.reshape(-1, self.rank)

    def row_targets(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, H, W)`` -> ``(B*H*W, 1)``."""
        return codes.reshape(-1, 1)

    def from_rows(self, out: torch.Tensor, batch: int) -> torch.Tensor:
        """``(M, 1, D)`` -> ``(B, H, W, D)``."""
        return out.reshape(batch, self.side, self.side, out.shape[-1])

    def zero_init_output(self) -> None:
        """Zero the classifier only: outputs start at 0 as in DiT, and the projection still receives gradient
        (zeroing both factors would leave both gradients zero forever)."""
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)


def build_head(hidden_size: int, patch_size: int, out_channels: int, side: int,
               rank: int = 0) -> LinearHead | FactorisedHead:
    """The full linear head (``rank == 0``) or a :class:`FactorisedHead` of width ``rank``, for a latent grid of
    ``side x side`` positions."""
    if rank < 0:
        raise ValueError(f"head_rank must be >= 0 (0 = full linear head), got {rank}")
    if rank == 0:
        return LinearHead(hidden_size, patch_size, out_channels, side)
    return FactorisedHead(hidden_size, patch_size, out_channels, rank, side)
