"""The taming / latent-diffusion VQGAN (encoder, quantiser, decoder) in the LDM state-dict key layout.

Both tokenizers of the paper (Sec. 4, App. E) share this architecture: SD ``vq-f8`` (K=16384, d=4) and LlamaGen
``vq-ds8-c2i`` (K=16384, d=8); a 256x256 RGB image becomes a 32x32 grid of codes (downsampling f=8).
They differ only in the latent width, the codebook width and the quantiser's distance:

* ``sd-vq-f8``: nearest codebook row in squared L2 on the raw rows.
* ``llamagen-vq-ds8-c2i``: the latent and the rows are L2-normalised first; the decoder receives the
  *normalised* row. The codebook the flow sees (``E`` in eqs. 12-13 of the paper) is therefore the matrix of
  unit-norm rows, and :meth:`VQGANTokenizer.snap` normalises a continuous latent before the nearest search.
  (The authors' sampler mixes the raw rows in the velocity while its targets are the normalised rows; we use
  the normalised rows everywhere.)

The module names below reproduce the LDM layout (``encoder.down.i.block.j``, ``decoder.up.i``, ``mid.block_1``...)
so that a Lightning ``vq-f8.ckpt`` loads with ``strict=True``; LlamaGen files are renamed into this layout by
:mod:`purrception.tokenizers.pretrained`, whose registry entries also hold each kind's :class:`VQGANConfig`.
Written from the published description of the architecture (the two projects' papers and checkpoint layouts), not
copied from either project.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from purrception.tokenizers.base import VQTokenizer, nearest_code

__all__ = ["VQGANConfig", "VQGANTokenizer", "Encoder", "Decoder"]


@dataclass(frozen=True)
class VQGANConfig:
    """Architecture of an LDM-style VQGAN (defaults: the f=8 models of the paper).

    Attributes:
        ch: base channel count.
        ch_mult: channel multiplier per resolution level (``len - 1`` downsamplings).
        num_res_blocks: residual blocks per encoder level (the decoder uses one more per level).
        attn_resolutions: feature-map sides at which attention blocks are inserted.
        resolution: image side the tokenizer is made for.
        in_channels / out_ch: image channels in and out.
        z_channels: width of the encoder output / decoder input.
        embed_dim: codebook width ``d`` (after ``quant_conv``).
        n_embed: codebook size ``K``.
        l2_normalize: normalise latents and codebook rows before the nearest-row search (LlamaGen).
        usage_buffer: length of LlamaGen's ``quantize.codebook_used`` training statistic (0: absent). Kept only
            so that the file loads strictly; never used.
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 4
    embed_dim: int = 4
    n_embed: int = 16384
    l2_normalize: bool = False
    usage_buffer: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VQGANConfig":
        d = dict(d)
        d["ch_mult"] = tuple(d["ch_mult"])
        d["attn_resolutions"] = tuple(d["attn_resolutions"])
        return cls(**d)


# ---- blocks ------------------------------------------------------------------------------------------------
def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """norm1 -> swish -> conv1 -> norm2 -> swish -> conv2, plus a (1x1 ``nin_shortcut`` if widths differ) skip."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))  # dropout is 0 in both checkpoints
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, 1x1 ``q k v proj_out`` convolutions, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        # (B, C, H, W) -> (B, 1, HW, C): one head over all positions, scale C^-1/2 (SDPA's default)
        q, k, v = (proj(h).reshape(b, 1, c, hh * ww).transpose(2, 3) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        out = out.transpose(2, 3).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a stride-2 3x3 convolution without padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (res blocks), ``attn`` (maybe empty), then ``downsample``/``upsample``."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image ``(B, in_channels, H, W)`` -> features ``(B, z_channels, H/f, W/f)``, ``f = 2**(len(ch_mult)-1)``."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        in_mult = (1,) + tuple(cfg.ch_mult)
        res = cfg.resolution
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for i in range(n):
            block_in, block_out = cfg.ch * in_mult[i], cfg.ch * cfg.ch_mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            level = _Level(blocks, attns)
            if i != n - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(block_in)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            h = level.run_blocks(h)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Features ``(B, z_channels, h, w)`` -> image ``(B, out_ch, h*f, w*f)`` (no tanh; callers clamp).

    ``up`` is indexed like the encoder's levels (``up[0]`` is the full-resolution stage), so it runs in reverse.
    """

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in)
        levels: list[_Level] = []
        for i in reversed(range(n)):
            block_out = cfg.ch * cfg.ch_mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            level = _Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            h = self.up[i].run_blocks(h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class _Quantizer(nn.Module):
    """Holds the codebook ``quantize.embedding.weight`` (K, d) (and LlamaGen's unused usage statistic)."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.n_embed, cfg.embed_dim)
        if cfg.usage_buffer:
            self.register_buffer("codebook_used", torch.zeros(cfg.usage_buffer))


# ---- the tokenizer -------------------------------------------------------------------------------------------
class VQGANTokenizer(VQTokenizer):
    """An LDM-layout VQGAN behind the :class:`~purrception.tokenizers.base.VQTokenizer` interface.

    ``encode``: ``c = argmin_k ||q(x) - E_k||`` with ``q = quant_conv . encoder`` (paper eq. 9; both sides
    L2-normalised for LlamaGen). ``decode_latents``: ``decoder(post_quant_conv(z))`` clamped to ``[-1, 1]``.

    Args:
        config: the architecture.
        kind: the tokenizer kind recorded in shards and checkpoints (``"sd-vq-f8"``, ``"llamagen-vq-ds8-c2i"``).
    """

    def __init__(self, config: VQGANConfig, kind: str):
        super().__init__()
        self.config = config
        self.kind = kind
        self.image_size = config.resolution
        self.image_channels = config.in_channels
        self.downsample = 2 ** (len(config.ch_mult) - 1)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = _Quantizer(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        # LlamaGen's unit-norm rows, computed once on the CPU in float64 and moved with the module: the same bits
        # on every device, so the codebook hash in shards and checkpoints does not depend on where it was taken.
        self.register_buffer("unit_codebook", torch.empty(0), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, keys: module.refresh_codebook())
        self.refresh_codebook()

    def refresh_codebook(self) -> None:
        """Recompute the cached unit-norm codebook (LlamaGen) after the embedding weights changed."""
        if self.config.l2_normalize:
            weight = self.quantize.embedding.weight.detach()
            if weight.is_meta:  # shape-only model: nothing to compute
                self.unit_codebook = torch.empty_like(weight)
                return
            unit = F.normalize(weight.to("cpu", torch.float64), p=2, dim=1).to(weight.dtype)
            self.unit_codebook = unit.to(weight.device)

    @property
    def codebook(self) -> torch.Tensor:
        """``E`` (K, d): raw rows for vq-f8, unit-norm rows for LlamaGen (what the decoder actually receives)."""
        if self.config.l2_normalize:
            return self.unit_codebook
        return self.quantize.embedding.weight

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def pre_quant_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in ``[-1, 1]`` -> continuous latents ``(B, d, H/8, W/8)`` before quantisation."""
        return self.quant_conv(self.encoder(images))

    def snap(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code of ``z`` ``(B, d, h, w)``; for LlamaGen ``z`` is L2-normalised first (its quantiser's rule)."""
        if self.config.l2_normalize:
            z = F.normalize(z, p=2, dim=1)
        return nearest_code(z, self.codebook)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in ``[-1, 1]`` -> codes ``(B, H/8, W/8)`` int64 (paper eq. 9)."""
        return self.snap(self.pre_quant_latents(images))

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, d, h, w)`` -> images ``(B, 3, 8h, 8w)`` in ``[-1, 1]``."""
        return self.decoder(self.post_quant_conv(z)).clamp(-1.0, 1.0)
