"""The FID Inception-v3 of torch-fidelity, rebuilt without torchvision (paper App. C's FID protocol).

The paper computes FID with torch-fidelity, whose feature extractor is the 2015-12-05 TensorFlow Inception-v3 graph
converted to PyTorch (file ``pt_inception-2015-12-05-6726825d.pth``; ``6726825d`` is the prefix of its SHA-256).
This module builds a network whose state dict has exactly that file's keys and shapes (``<block>.<conv>.conv.weight``
and ``<block>.<conv>.bn.{weight,bias,running_mean,running_var}`` for 94 convolutions, plus ``fc.weight``/``fc.bias``
with 1008 outputs), and reproduces torch-fidelity's preprocessing:

1. uint8 RGB images of any size are resized to 299x299 with TensorFlow-1.x bilinear interpolation
   (``align_corners=False``: output pixel ``i`` reads input coordinate ``i * in / out``, no half-pixel offset);
2. scaled as ``(x - 128) / 128``;
3. the 2048-d global-average-pooled features feed FID and precision/recall, and the bias-free 1008-way logits
   (torch-fidelity's ``logits_unbiased``) feed the Inception Score.

The TF graph's quirks are kept: average pools in the mixed blocks ignore padding, and the last block pools with a
3x3 *max* pool. Batch norms use ``eps = 0.001`` and are frozen (running statistics only).

Weights are never downloaded: pass the local file (``--inception PATH``). It is read with ``weights_only=True`` and
loaded strictly.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from purrception.errors import PurrError
from purrception.hashing import sha256_file
from purrception.io import safe_torch_load

__all__ = ["FIDInceptionV3", "load_fid_inception", "resize_bilinear_tf1", "images_to_uint8_rgb",
           "INCEPTION_SIZE", "INCEPTION_SHA256_PREFIX", "FEATURE_DIM", "LOGITS_DIM"]

log = logging.getLogger(__name__)

INCEPTION_SIZE = 299
#: torch-fidelity's weight file name carries this prefix of its SHA-256 (torch.hub convention)
INCEPTION_SHA256_PREFIX = "6726825d"
FEATURE_DIM = 2048
LOGITS_DIM = 1008
_BN_EPS = 1e-3


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow-1.x ``resize_bilinear(align_corners=False)`` of ``x`` ``(N, C, H, W)`` float to ``size x size``.

    Output index ``i`` samples input coordinate ``s = i * in / out``; with ``lo = floor(s)``,
    ``hi = min(lo + 1, in - 1)`` the value is ``x[lo] + (x[hi] - x[lo]) * (s - lo)``, first along width, then height.
    """

    def axis(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(size, dtype=torch.float32, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = src.long()
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, (src - lo.float()).to(x.dtype)

    lo_x, hi_x, dx = axis(x.shape[3])
    lo_y, hi_y, dy = axis(x.shape[2])
    left, right = x[:, :, :, lo_x], x[:, :, :, hi_x]
    cols = left + (right - left) * dx.view(1, 1, 1, size)            # (N, C, H, size)
    top, bottom = cols[:, :, lo_y, :], cols[:, :, hi_y, :]
    return top + (bottom - top) * dy.view(1, 1, size, 1)              # (N, C, size, size)


def images_to_uint8_rgb(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB -> ``(N, 3, H, W)`` uint8 (grey is replicated, as PIL's
    ``convert("RGB")`` does)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise PurrError(f"Inception features need uint8 images, got {images.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.ndim == 3:
        return x[:, None].expand(-1, 3, -1, -1).contiguous()
    if x.ndim == 4 and x.shape[3] == 3:
        return x.permute(0, 3, 1, 2).contiguous()
    raise PurrError(f"Inception features need (N, H, W) or (N, H, W, 3) images, got shape {tuple(images.shape)}")


class _FrozenBatchNorm(nn.Module):
    """Inference-only batch norm: ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, _BN_EPS)


class _ConvBN(nn.Module):
    """Bias-free convolution, frozen batch norm, ReLU (keys ``conv.weight`` and ``bn.*``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = _FrozenBatchNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


Pool = Callable[[torch.Tensor], torch.Tensor]
_avg3_no_pad = functools.partial(F.avg_pool2d, kernel_size=3, stride=1, padding=1, count_include_pad=False)
_max3_same = functools.partial(F.max_pool2d, kernel_size=3, stride=1, padding=1)
_max3_stride2 = functools.partial(F.max_pool2d, kernel_size=3, stride=2)

# A branch: (pool applied first or None, chain of conv names, names of parallel convs whose outputs are concatenated).
Branch = tuple[Pool | None, Sequence[str], Sequence[str]]


class _Mixed(nn.Module):
    """An Inception block described as data: named convolutions and the branches that chain them.

    The outputs of the branches are concatenated along channels, in the order given.
    """

    def __init__(self, convs: dict[str, tuple], branches: Sequence[Branch]):
        super().__init__()
        for name, spec in convs.items():
            self.add_module(name, _ConvBN(*spec))
        self.branches = list(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for pool, chain, fork in self.branches:
            h = pool(x) if pool is not None else x
            for name in chain:
                h = getattr(self, name)(h)
            if fork:
                h = torch.cat([getattr(self, name)(h) for name in fork], dim=1)
            outputs.append(h)
        return torch.cat(outputs, dim=1)


def _block_a(c_in: int, pool_features: int) -> _Mixed:
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 -> 224 + pool_features channels."""
    return _Mixed(
        {"branch1x1": (c_in, 64, 1),
         "branch5x5_1": (c_in, 48, 1), "branch5x5_2": (48, 64, 5, 1, 2),
         "branch3x3dbl_1": (c_in, 64, 1), "branch3x3dbl_2": (64, 96, 3, 1, 1), "branch3x3dbl_3": (96, 96, 3, 1, 1),
         "branch_pool": (c_in, pool_features, 1)},
        [(None, ["branch1x1"], []), (None, ["branch5x5_1", "branch5x5_2"], []),
         (None, ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"], []), (_avg3_no_pad, ["branch_pool"], [])])


def _block_b(c_in: int) -> _Mixed:
    """35 -> 17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 -> 480 + c_in channels."""
    return _Mixed(
        {"branch3x3": (c_in, 384, 3, 2),
         "branch3x3dbl_1": (c_in, 64, 1), "branch3x3dbl_2": (64, 96, 3, 1, 1), "branch3x3dbl_3": (96, 96, 3, 2)},
        [(None, ["branch3x3"], []), (None, ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"], []),
         (_max3_stride2, [], [])])


def _block_c(c_in: int, c7: int) -> _Mixed:
    """17x17 block with factorised 7x7 convolutions -> 768 channels."""
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
    return _Mixed(
        {"branch1x1": (c_in, 192, 1),
         "branch7x7_1": (c_in, c7, 1), "branch7x7_2": (c7, c7, row[0], 1, row[1]),
         "branch7x7_3": (c7, 192, col[0], 1, col[1]),
         "branch7x7dbl_1": (c_in, c7, 1), "branch7x7dbl_2": (c7, c7, col[0], 1, col[1]),
         "branch7x7dbl_3": (c7, c7, row[0], 1, row[1]), "branch7x7dbl_4": (c7, c7, col[0], 1, col[1]),
         "branch7x7dbl_5": (c7, 192, row[0], 1, row[1]),
         "branch_pool": (c_in, 192, 1)},
        [(None, ["branch1x1"], []), (None, ["branch7x7_1", "branch7x7_2", "branch7x7_3"], []),
         (None, [f"branch7x7dbl_{i}" for i in range(1, 6)], []), (_avg3_no_pad, ["branch_pool"], [])])


def _block_d(c_in: int) -> _Mixed:
    """17 -> 8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 -> 512 + c_in channels."""
    return _Mixed(
        {"branch3x3_1": (c_in, 192, 1), "branch3x3_2": (192, 320, 3, 2),
         "branch7x7x3_1": (c_in, 192, 1), "branch7x7x3_2": (192, 192, (1, 7), 1, (0, 3)),
         "branch7x7x3_3": (192, 192, (7, 1), 1, (3, 0)), "branch7x7x3_4": (192, 192, 3, 2)},
        [(None, ["branch3x3_1", "branch3x3_2"], []), (None, [f"branch7x7x3_{i}" for i in range(1, 5)], []),
         (_max3_stride2, [], [])])


def _block_e(c_in: int, pool: Pool) -> _Mixed:
    """8x8 block with split 1x3 / 3x1 heads -> 2048 channels."""
    return _Mixed(
        {"branch1x1": (c_in, 320, 1),
         "branch3x3_1": (c_in, 384, 1), "branch3x3_2a": (384, 384, (1, 3), 1, (0, 1)),
         "branch3x3_2b": (384, 384, (3, 1), 1, (1, 0)),
         "branch3x3dbl_1": (c_in, 448, 1), "branch3x3dbl_2": (448, 384, 3, 1, 1),
         "branch3x3dbl_3a": (384, 384, (1, 3), 1, (0, 1)), "branch3x3dbl_3b": (384, 384, (3, 1), 1, (1, 0)),
         "branch_pool": (c_in, 192, 1)},
        [(None, ["branch1x1"], []), (None, ["branch3x3_1"], ["branch3x3_2a", "branch3x3_2b"]),
         (None, ["branch3x3dbl_1", "branch3x3dbl_2"], ["branch3x3dbl_3a", "branch3x3dbl_3b"]),
         (pool, ["branch_pool"], [])])


class FIDInceptionV3(nn.Module):
    """Inception-v3 with torch-fidelity's state-dict layout; ``forward`` maps uint8 images to
    ``(pool features (N, 2048), unbiased logits (N, 1008))``. Built with random weights: load real ones with
    :func:`load_fid_inception`."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _block_a(192, 32)
        self.Mixed_5c = _block_a(256, 64)
        self.Mixed_5d = _block_a(288, 64)
        self.Mixed_6a = _block_b(288)
        self.Mixed_6b = _block_c(768, 128)
        self.Mixed_6c = _block_c(768, 160)
        self.Mixed_6d = _block_c(768, 160)
        self.Mixed_6e = _block_c(768, 192)
        self.Mixed_7a = _block_d(768)
        self.Mixed_7b = _block_e(1280, _avg3_no_pad)
        self.Mixed_7c = _block_e(2048, _max3_same)
        self.fc = nn.Linear(FEATURE_DIM, LOGITS_DIM)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``(N, 3, H, W)`` -> ``(features (N, 2048), logits_unbiased (N, 1008))``, float32."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise PurrError(f"FIDInceptionV3 takes uint8 (N, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
        x = resize_bilinear_tf1(images.float(), INCEPTION_SIZE)           # (N, 3, 299, 299)
        x = (x - 128.0) / 128.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)                      # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                     # (N, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)                      # (N, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))                # (N, 288, 35, 35)
        x = self.Mixed_6a(x)                                              # (N, 768, 17, 17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (N, 768, 17, 17)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))                # (N, 2048, 8, 8)
        features = x.mean(dim=(2, 3))                                     # (N, 2048)
        logits = features @ self.fc.weight.T                              # (N, 1008), no bias (for IS)
        return features, logits


def load_fid_inception(path: str | Path) -> tuple[FIDInceptionV3, str]:
    """Load torch-fidelity's ``pt_inception-2015-12-05-6726825d.pth`` strictly and safely.

    Returns:
        The network in eval mode and the file's SHA-256. A file whose hash does not start with ``6726825d`` is
        still used when its keys and shapes fit, with a warning: its FIDs are not comparable to published ones.

    Raises:
        PurrError: missing or unreadable file, or keys / shapes that are not the FID Inception's.
    """
    path = Path(path)
    state = safe_torch_load(path, "Inception weights")
    model = FIDInceptionV3()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PurrError(f"{path} is not a state dict of tensors; pass torch-fidelity's "
                        f"pt_inception-2015-12-05-{INCEPTION_SHA256_PREFIX}.pth")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        problems = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if v]
        raise PurrError(f"{path} is not the FID Inception-v3 ({'; '.join(problems)}); pass torch-fidelity's "
                        f"pt_inception-2015-12-05-{INCEPTION_SHA256_PREFIX}.pth")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    digest = sha256_file(path)
    if not digest.startswith(INCEPTION_SHA256_PREFIX):
        log.warning("Inception weights %s have SHA-256 %s..., not torch-fidelity's %s...: FIDs will not be "
                    "comparable to published numbers", path, digest[:8], INCEPTION_SHA256_PREFIX)
    return model.eval(), digest
