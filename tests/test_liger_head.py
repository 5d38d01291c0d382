"""The optional Liger-Kernel training loss equals the naive one (loss and every gradient), full and factorised heads.

Liger's kernels are Triton; without a GPU they run in Triton's interpreter (``TRITON_INTERPRET=1``), which must be
set before Triton is imported, so the check runs in a fresh interpreter. Skipped where liger-kernel is not installed
(it is in the ``test`` extra on Linux).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from purrception.errors import PurrError
from purrception.flows.purrception import Purrception

CHECK = r"""
import torch
from purrception.flows import categorical as cat
from purrception.flows.liger_head import liger_cross_entropy_and_zloss
from purrception.models.dit import DiT, DiTConfig

for k, patch, rank, weight in [(37, 2, 0, 0.3), (50, 1, 0, 1e-5), (37, 2, 5, 0.3), (40, 2, 0, 0.0)]:
    torch.manual_seed(0)
    model = DiT(DiTConfig(input_size=4, in_channels=3, out_channels=k, patch_size=patch, hidden_size=16, depth=1,
                          num_heads=2, num_classes=5, head_rank=rank))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.4)
    h = torch.randn(3, model.grid ** 2, 16, requires_grad=True)
    codes = torch.randint(0, k, (3, 4, 4))
    params = [h, *model.head.parameters()]
    ce, z_sq = cat.naive_cross_entropy_and_zloss(model, h, codes)
    want = torch.autograd.grad(ce + weight * z_sq, params)
    loss, got_ce, got_z = liger_cross_entropy_and_zloss(model, h, codes, weight)
    got = torch.autograd.grad(loss, params)
    torch.testing.assert_close(loss, ce + weight * z_sq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_ce, ce.detach(), rtol=1e-5, atol=1e-5)
    if weight > 0:
        torch.testing.assert_close(got_z, z_sq.detach(), rtol=1e-4, atol=1e-4)
    else:
        assert got_z is None
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
print("liger matches naive")
"""


def test_liger_loss_and_gradients_equal_naive():
    pytest.importorskip("liger_kernel")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "liger matches naive" in proc.stdout


def test_liger_kernel_is_refused_clearly_where_it_cannot_run(monkeypatch):
    method = Purrception(torch.randn(8, 3), head_kernel="liger")  # constructing never fails: checkpoints stay loadable
    assert method.options()["head_kernel"] == "liger"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from purrception.models.dit import DiT, DiTConfig

    model = DiT(DiTConfig(input_size=4, in_channels=3, out_channels=8, patch_size=2, hidden_size=16, depth=1,
                          num_heads=2, num_classes=5))
    with pytest.raises(PurrError, match="head_kernel='liger'"):
        method.loss(model, torch.randint(0, 8, (2, 4, 4)), torch.zeros(2, dtype=torch.long))
    with pytest.raises(PurrError, match="unknown `head_kernel` 'fast'"):
        Purrception(torch.randn(8, 3), head_kernel="fast")


def test_liger_kernel_is_refused_on_a_grid_padded_to_the_patch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # past the device check: the padding is what refuses it
    from purrception.models.dit import DiT, DiTConfig

    method = Purrception(torch.randn(8, 3), head_kernel="liger")
    model = DiT(DiTConfig(input_size=5, in_channels=3, out_channels=8, patch_size=2, hidden_size=16, depth=1,
                          num_heads=2, num_classes=5))
    with pytest.raises(PurrError, match=r"\(5 is not a multiple of 2\); use head_kernel='chunked'"):
        method.loss(model, torch.randint(0, 8, (2, 5, 5)), torch.zeros(2, dtype=torch.long))
