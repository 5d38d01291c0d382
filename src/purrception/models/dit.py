"""The DiT backbone (Peebles & Xie 2023) as used by the paper (App. C).

adaLN-Zero blocks, fixed 2-D sin-cos positions (:func:`sincos_pos_embed_2d`, in DiT's orientation unless a config
records the legacy one), a timestep MLP, a label embedding with a learned null class (id ``num_classes``) for
classifier-free guidance, and a zero-initialised final layer.

The backbone is split into :meth:`DiT.features` (everything up to the final modulated layer norm) and an
output head (``hidden -> p*p*out_channels``; ``models.heads``: DiT's full linear layer, or with ``head_rank > 0`` a
factorised K-way head). Methods with a K-way categorical output (Purrception, DFM) read the
features and run their own head so that the ``K`` logits need never be materialised all at once (docs/ARCHITECTURE.md).

Input is either continuous latents ``(B, in_channels, H, W)`` or, for discrete methods, token ids ``(B, H, W)``
embedded by a ``vocab_size`` table (set ``input_vocab_size``). A side ``H`` that is not a multiple of the patch
size ``p`` is zero-padded on the bottom and right to the next multiple, and the padded positions are cropped from
every output (the heads' row view skips them too), so e.g. 7x7 codes run as 4x4 tokens of 2x2 patches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from purrception.models.heads import FactorisedHead, LinearHead, build_head, padded_side, unpatchify

__all__ = ["DiTConfig", "DiT", "DIT_PRESETS", "dit_config_from_preset", "sincos_pos_embed_2d", "POS_EMBED_LAYOUTS",
           "LEGACY_POS_EMBED_LAYOUT"]

#: ``DiTConfig.pos_embed_layout`` values: ``"dit"`` is facebookresearch/DiT's table (the column's encoding in the
#: first half of the channels); ``"row-major"`` is the table of models trained before this library matched it (the
#: row's encoding first). See :func:`sincos_pos_embed_2d`.
POS_EMBED_LAYOUTS = ("dit", "row-major")
#: the layout of every DiT config written without a ``pos_embed_layout`` entry (checkpoint and pipeline version 1)
LEGACY_POS_EMBED_LAYOUT = "row-major"

#: Backbone sizes: DiT paper Table 1 (S/B/L/XL) plus small presets sized for 2 CPU cores.
DIT_PRESETS: dict[str, dict[str, int]] = {
    "T": {"hidden_size": 128, "depth": 4, "num_heads": 4},      # ~1M parameters: CPU demo
    "M": {"hidden_size": 256, "depth": 6, "num_heads": 4},      # ~5M parameters: CPU studies
    "S": {"hidden_size": 384, "depth": 12, "num_heads": 6},
    "B": {"hidden_size": 768, "depth": 12, "num_heads": 12},
    "L": {"hidden_size": 1024, "depth": 24, "num_heads": 16},
    "XL": {"hidden_size": 1152, "depth": 28, "num_heads": 16},
}


@dataclass
class DiTConfig:
    """Architecture of a :class:`DiT`; travels inside every checkpoint."""

    input_size: int = 7            # latent grid side h (= w)
    in_channels: int = 4           # latent dim d (continuous input)
    out_channels: int = 4          # per-position output width of the default head (K for categorical methods)
    patch_size: int = 1
    hidden_size: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10
    input_vocab_size: int = 0      # > 0: input is token ids embedded by a table of this size (DFM)
    head_rank: int = 0             # > 0: factorised head of this width r (models.heads.FactorisedHead)
    pos_embed_layout: str = "dit"  # which 2-D sin-cos table (POS_EMBED_LAYOUTS); not a weight, so it is recorded here

    def __post_init__(self) -> None:
        if self.pos_embed_layout not in POS_EMBED_LAYOUTS:
            raise ValueError(f"pos_embed_layout {self.pos_embed_layout!r} is not one of {', '.join(POS_EMBED_LAYOUTS)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DiTConfig":
        """The inverse of :meth:`to_dict`. A dict without ``pos_embed_layout`` was written before the field existed,
        when every DiT used :data:`LEGACY_POS_EMBED_LAYOUT`, so it gets that layout (not the new default)."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown DiT config fields: {sorted(unknown)}")
        return cls(**{"pos_embed_layout": LEGACY_POS_EMBED_LAYOUT, **d})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dit_config_from_preset(name: str, **overrides: Any) -> DiTConfig:
    """``"DiT-B/2"`` style names (or ``"B/2"``) -> :class:`DiTConfig` with ``overrides`` applied."""
    key = name.removeprefix("DiT-")
    size, _, patch = key.partition("/")
    if size not in DIT_PRESETS or not patch.isdigit():
        raise ValueError(f"unknown DiT preset {name!r}; use DiT-<{'|'.join(DIT_PRESETS)}>/<patch>, e.g. DiT-B/2")
    return DiTConfig(**{"patch_size": int(patch), **DIT_PRESETS[size], **overrides})  # overrides win over the preset


# ------------------------------------------------------------------------------------------------------------
# Small blocks
# ------------------------------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: ``x * (1 + scale) + shift`` with per-sample ``(B, C)`` shift and scale."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Scalar ``t`` in [0, 1] -> vector, via sinusoidal features (of ``1000 t``) and a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class LabelEmbedder(nn.Module):
    """Class ids -> vectors; id ``num_classes`` is the learned null class used for CFG."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.table(y)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, C/heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (DiT Sec. 3.2)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_hidden, hidden_size))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalNorm(nn.Module):
    """The final adaLN layer norm of DiT, without its linear projection (that is the head)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return modulate(self.norm(x), shift, scale)


def sincos_pos_embed_2d(dim: int, grid: int, layout: str = "dit") -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding ``(grid*grid, dim)`` (MAE / DiT), tokens in row-major order.

    Token ``n = i * grid + j`` (row ``i``, column ``j``) gets ``[e(a), e(b)]`` where ``e(x)`` is the 1-D table
    ``[sin(x w_k), cos(x w_k)]`` with ``w_k = 10000^(-k / (dim/4))``, ``k < dim/4``. With ``layout="dit"``
    ``(a, b) = (j, i)``: the column first, as facebookresearch/DiT's ``get_2d_sincos_pos_embed`` (from MAE, whose
    ``np.meshgrid(grid_w, grid_h)`` puts the column coordinate in ``grid[0]``), so DiT / SiT trunks read their own
    table. With ``layout="row-major"`` ``(a, b) = (i, j)``: the table of models trained before this library matched
    DiT. The two are the same table with rows and columns swapped.
    """
    assert dim % 4 == 0, "hidden size must be divisible by 4 for 2-D sin-cos positions"
    if layout not in POS_EMBED_LAYOUTS:
        raise ValueError(f"pos_embed_layout {layout!r} is not one of {', '.join(POS_EMBED_LAYOUTS)}")
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))

    def embed(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    first, second = (cols, rows) if layout == "dit" else (rows, cols)
    return torch.cat([embed(first), embed(second)], dim=1).float()


# ------------------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------------------


class DiT(nn.Module):
    """Diffusion transformer over a latent grid; see module docstring."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        c, p = config, config.patch_size
        if c.hidden_size % c.num_heads:
            raise ValueError(f"hidden size {c.hidden_size} is not divisible by {c.num_heads} heads")
        self.grid = padded_side(c.input_size, p) // p  # tokens per side; an odd remainder is padded (models.heads)
        if c.input_vocab_size > 0:
            self.token_embed = nn.Embedding(c.input_vocab_size, c.in_channels)
        self.patch_embed = nn.Conv2d(c.in_channels, c.hidden_size, kernel_size=p, stride=p)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(c.hidden_size, self.grid, c.pos_embed_layout)[None],
                             persistent=False)
        self.t_embedder = TimestepEmbedder(c.hidden_size)
        self.y_embedder = LabelEmbedder(c.num_classes, c.hidden_size)
        self.blocks = nn.ModuleList([DiTBlock(c.hidden_size, c.num_heads, c.mlp_ratio) for _ in range(c.depth)])
        self.final_norm = FinalNorm(c.hidden_size)
        self.head: LinearHead | FactorisedHead = build_head(c.hidden_size, p, c.out_channels, c.input_size,
                                                            c.head_rank)
        self.initialize_weights()

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def initialize_weights(self) -> None:
        """ViT-style init, zero adaLN modulations and a zero final layer (paper App. C)."""

        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic_init)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_norm.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_norm.adaLN_modulation[-1].bias)
        self.head.zero_init_output()

    def features(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, d, H, W)`` (or token ids ``(B, H, W)``), times ``(B,)``, labels ``(B,)``
        -> modulated final features ``(B, N, hidden)`` with ``N = ceil(H/p) * ceil(W/p)`` tokens."""
        if self.config.input_vocab_size > 0:
            x = self.token_embed(x).permute(0, 3, 1, 2)                  # (B, d_in, H, W)
        extra = self.grid * self.config.patch_size - x.shape[-1]
        if extra:  # a side that is not a multiple of p: zeros on the bottom and right, cropped from the outputs
            x = F.pad(x, (0, extra, 0, extra))
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, hidden)
        c = self.t_embedder(t) + self.y_embedder(y)                       # (B, hidden)
        for block in self.blocks:
            h = block(h, c)
        return self.final_norm(h, c)                                       # (B, N, hidden)

    def unpatchify(self, out: torch.Tensor, channels: int) -> torch.Tensor:
        """Per-token outputs ``(B, N, p*p*C)`` -> per-position outputs ``(B, H, W, C)`` (channels last; padded
        positions dropped)."""
        side = self.config.input_size
        return unpatchify(out, self.config.patch_size, channels)[:, :side, :side]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Full output through the default linear head: ``(B, H, W, out_channels)``."""
        return self.unpatchify(self.head(self.features(x, t, y)), self.config.out_channels)
