"""The chunked K-way head equals the naive one (loss, z-loss, gradients, posterior mean, guided velocity), and the
factorised head is a real, affine, zero-initialised DiT option."""

from __future__ import annotations

import pytest
import torch

from purrception.flows import categorical as cat
from purrception.flows.purrception import Purrception, purrception_velocity
from purrception.models.dit import DiT, DiTConfig
from purrception.models.heads import FactorisedHead, LinearHead, patchify_positions, unpatchify
from purrception.sampling.guidance import guided_features

HIDDEN = 16


def make_model(k: int, patch: int, rank: int, side: int = 4) -> DiT:
    torch.manual_seed(0)
    cfg = DiTConfig(input_size=side, in_channels=3, out_channels=k, patch_size=patch, hidden_size=HIDDEN, depth=1,
                    num_heads=2, num_classes=5, head_rank=rank)
    model = DiT(cfg).double()
    for p in model.parameters():  # away from DiT's zero init, so that every path carries signal
        torch.nn.init.normal_(p, std=0.4)
    return model


def features(model: DiT, batch: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, model.grid ** 2, HIDDEN, generator=g, dtype=torch.float64, requires_grad=True)


def grads(model: DiT, h: torch.Tensor, fn, weights: tuple[float, float]) -> list[torch.Tensor]:
    ce, z_sq = fn()
    return [ce.detach(), z_sq.detach(), *torch.autograd.grad(weights[0] * ce + weights[1] * z_sq,
                                                             [h, *model.head.parameters()])]


@pytest.mark.parametrize("k,patch,rank,chunk_bytes", [(7, 1, 0, 1), (37, 2, 0, 3000), (37, 2, 5, 2000),
                                                      (64, 1, 3, 10_000), (300, 2, 0, 1 << 30)])
@pytest.mark.parametrize("hint,weights", [(None, (1.0, 0.3)), (0.3, (1.0, 0.3)), (0.3, (0.0, 1.0)),
                                          (1e-5, (1.0, 1e-5))])
def test_chunked_loss_and_gradients_equal_naive(k, patch, rank, chunk_bytes, hint, weights):
    """ce, z_sq and the gradients of ``a ce + b z_sq`` w.r.t. features and every head weight; (0.3, (0, 1)) makes
    the hinted forward sweep fall back to recomputation (backward asks for the z-loss gradient alone)."""
    model = make_model(k, patch, rank)
    h = features(model)
    codes = torch.randint(0, k, (3, 4, 4), generator=torch.Generator().manual_seed(2))
    want = grads(model, h, lambda: cat.naive_cross_entropy_and_zloss(model, h, codes), weights)
    got = grads(model, h, lambda: cat.cross_entropy_and_zloss(model, h, codes, hint, chunk_bytes), weights)
    assert len(got) == 2 + 1 + len(list(model.head.parameters()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _beyond_cheap_shifts(model: DiT, h: torch.Tensor, case: str) -> torch.Tensor:
    """Features (or biases) that take the chunked head beyond the range where it shifts each row by its target logit
    (training) or not at all (sampling): huge logits in the last rows only (the sweep switches mid-way) or in every
    row (from the first chunk on), or log-partitions far below zero."""
    with torch.no_grad():
        if case == "late":
            h = torch.cat([h[:-1], h[-1:] * 400.0])
        elif case == "all":
            h = h * 400.0
        else:  # a spread of 100 also keeps posterior_mean from folding the bias into the values
            bias = model.head.classifier_bias
            bias.copy_(-1000.0 - 100.0 * torch.rand(bias.shape, generator=torch.Generator().manual_seed(7),
                                                    dtype=bias.dtype))
    return h.detach().requires_grad_()


@pytest.mark.parametrize("case", ["late", "all", "negative"])
@pytest.mark.parametrize("rank", [0, 5])
def test_chunked_head_equals_naive_beyond_the_range_of_the_cheap_shifts(case, rank):
    model = make_model(37, 2, rank)
    h = _beyond_cheap_shifts(model, features(model), case)
    codes = torch.randint(0, 37, (3, 4, 4), generator=torch.Generator().manual_seed(2))
    lse = torch.logsumexp(cat.logits_from_features(model, h), dim=-1)
    assert lse.abs().max() > 400  # past float64's cheap-shift range (cross-entropies or log-partitions ~354+)
    want = grads(model, h, lambda: cat.naive_cross_entropy_and_zloss(model, h, codes), (1.0, 0.3))
    got = grads(model, h, lambda: cat.cross_entropy_and_zloss(model, h, codes, 0.3, 2000), (1.0, 0.3))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    book = torch.randn(37, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(cat.posterior_mean(model, h.detach(), book, 0.5, 2000),
                               cat.naive_posterior_mean(model, h.detach(), book, 0.5), rtol=1e-10, atol=1e-12)


def _masks(kind: str) -> torch.Tensor:
    """Positions ``(3, 4, 4)`` a masked loss averages over: random (tokens of a 2x2 patch mix selected and
    unselected sub-positions), a single position, or all."""
    if kind == "random":
        return torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(5)) < 0.4
    mask = torch.zeros(3, 4, 4, dtype=torch.bool) if kind == "one" else torch.ones(3, 4, 4, dtype=torch.bool)
    mask[1, 2, 3] = True
    return mask


@pytest.mark.parametrize("k,patch,rank,chunk_bytes", [(7, 1, 0, 1), (37, 2, 0, 3000), (37, 2, 5, 2000),
                                                      (300, 2, 0, 1 << 30)])
@pytest.mark.parametrize("hint,weights", [(None, (1.0, 0.3)), (0.3, (1.0, 0.3)), (0.3, (0.0, 1.0))])
@pytest.mark.parametrize("kind", ["random", "one", "all"])
def test_masked_loss_and_gradients_equal_naive(k, patch, rank, chunk_bytes, hint, weights, kind):
    """CE and z_sq over the selected positions only (DFM's loss) == the same on materialised logits, with the
    gradients of ``a ce + b z_sq``; at patch 2 with the full head, rows (tokens) are partly selected."""
    model = make_model(k, patch, rank)
    h = features(model)
    codes = torch.randint(0, k, (3, 4, 4), generator=torch.Generator().manual_seed(2))
    mask = _masks(kind)
    want = grads(model, h, lambda: cat.naive_masked_cross_entropy_and_zloss(model, h, codes, mask), weights)
    got = grads(model, h, lambda: cat.masked_cross_entropy_and_zloss(model, h, codes, mask, hint, chunk_bytes),
                weights)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_weighted_rows_equal_the_mean_over_the_selected_entries():
    """An exact answer: identity classifier, two groups; weight 0 drops an entry from both means."""
    x = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, -1.0]], dtype=torch.float64)
    weight = torch.cat([torch.eye(3), 2 * torch.eye(3)]).double()           # group 1's logits are 2 x
    targets = torch.tensor([[2, 0], [1, 1]])
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    ce, z_sq = cat.linear_cross_entropy_and_zloss(x, weight, None, targets, groups=2, chunk_bytes=1,
                                                  entry_weights=a)
    lse0, lse1 = torch.logsumexp(x, -1), torch.logsumexp(2 * x, -1)
    entries = [(lse0[0], 2.0), (lse0[1], 0.0), (lse1[1], 0.0)]              # (lse, target logit) with weight 1
    assert ce.item() == pytest.approx(sum(float(lse) - t for lse, t in entries) / 3, abs=1e-14)
    assert z_sq.item() == pytest.approx(sum(float(lse) ** 2 for lse, _ in entries) / 3, abs=1e-14)


@pytest.mark.parametrize("case", ["late", "all", "negative"])
def test_masked_loss_equals_naive_beyond_the_range_of_the_cheap_shifts(case):
    model = make_model(37, 2, 0)
    h = _beyond_cheap_shifts(model, features(model), case)
    codes = torch.randint(0, 37, (3, 4, 4), generator=torch.Generator().manual_seed(2))
    mask = _masks("random")
    want = grads(model, h, lambda: cat.naive_masked_cross_entropy_and_zloss(model, h, codes, mask), (1.0, 0.3))
    got = grads(model, h, lambda: cat.masked_cross_entropy_and_zloss(model, h, codes, mask, 0.3, 2000), (1.0, 0.3))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_small_budget_really_chunks():
    m = 48
    rows = cat.chunk_rows(m, 2 * 37, torch.device("cpu"), 3000)
    assert 1 < rows < m and rows * 2 * 37 * 4 <= 3000 < (rows + 1) * 2 * 37 * 4
    assert cat.chunk_rows(m, 2 * 37, torch.device("cpu"), 3000, torch.bfloat16) == 3000 // (2 * 37 * 6)
    assert cat.chunk_rows(m, 10, torch.device("cpu"), 1) == 1
    assert cat.chunk_rows(m, 10, torch.device("cpu"), 1 << 30) == m


def test_cpu_chunks_stay_cache_sized_but_keep_enough_rows_for_the_gemm():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cache_rows = cat.CACHE_CHUNK_BYTES["cpu"] // (16384 * 4)
    assert cat.chunk_rows(10_000, 16384, cpu, 1 << 30) == max(cat.GEMM_FULL_RATE_ROWS, cache_rows)
    assert cat.chunk_rows(10_000, 4 * 16384, cpu, 1 << 30) == cat.GEMM_FULL_RATE_ROWS  # cache size alone: fewer
    assert cat.chunk_rows(10_000, 128, cpu, 1 << 30) == 10_000                       # small K: one chunk
    assert cat.chunk_rows(10_000, 16384, cuda, 1 << 30) == 10_000                    # GPUs: the budget alone
    assert cat.chunk_rows(10_000, 16384, cpu, 16384 * 4 * 3) == 3                    # the budget still bounds


def test_loss_equals_cross_entropy_on_hand_logits():
    """An exact answer: identity classifier, so the logits are the rows themselves."""
    x = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, -1.0]], dtype=torch.float64)
    ce, z_sq = cat.linear_cross_entropy_and_zloss(x, torch.eye(3, dtype=torch.float64), None,
                                                  torch.tensor([[2], [1]]), chunk_bytes=1)
    lse = torch.log(torch.exp(x).sum(-1))
    assert ce.item() == pytest.approx(((lse[0] - 2.0) + (lse[1] - 0.0)).item() / 2, abs=1e-14)
    assert z_sq.item() == pytest.approx(lse.pow(2).mean().item(), abs=1e-14)


@pytest.mark.parametrize("k,patch,rank", [(37, 1, 0), (37, 2, 0), (64, 2, 6)])
@pytest.mark.parametrize("tau", [0.25, 1.0, 3.0])
@pytest.mark.parametrize("chunk_bytes", [1, 5000, None])
def test_posterior_mean_equals_naive(k, patch, rank, tau, chunk_bytes):
    model = make_model(k, patch, rank)
    h = features(model).detach()
    book = torch.randn(k, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got = cat.posterior_mean(model, h, book, tau, chunk_bytes)
    assert got.shape == (3, 3, 4, 4)
    torch.testing.assert_close(got, cat.naive_posterior_mean(model, h, book, tau), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rank", [0, 6])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("spread", [5.0, 59.0, 300.0])
def test_posterior_mean_with_wide_biases_equals_naive(rank, dtype, spread):
    """The bias is folded into the read's values when ``bias / tau`` spans at most FOLDED_BIAS_MAX_SPREAD nats and
    added to the logits otherwise; both equal the materialised softmax, in float32 too."""
    tau = 0.5
    model = make_model(64, 2, rank).to(dtype)
    bias = model.head.classifier_bias
    with torch.no_grad():
        ramp = torch.linspace(-spread * tau, 0.0, bias.numel() // model.head.groups, dtype=dtype)
        bias.copy_(ramp[torch.randperm(ramp.numel(), generator=torch.Generator().manual_seed(6))]
                   .repeat(model.head.groups))
    _, column = cat._fold_bias_into_values(torch.ones(4, 64, dtype=dtype), bias, tau, model.head.groups, dtype, dtype)
    assert (column is None) == (spread <= cat.FOLDED_BIAS_MAX_SPREAD)
    h = features(model).detach().to(dtype)
    book = torch.randn(64, 3, dtype=dtype, generator=torch.Generator().manual_seed(3))
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    want = cat.naive_posterior_mean(model, h, book, tau)
    torch.testing.assert_close(cat.posterior_mean(model, h, book, tau, 5000), want, **tol)


@pytest.mark.parametrize("rank", [0, 6])
@pytest.mark.parametrize("cfg_scale", [1.0, 1.5, 4.0])
def test_guided_velocity_equals_cfg_on_naive_logits(rank, cfg_scale):
    """Purrception's velocity (chunked read, CFG on features) == softmax(l_u + s (l_c - l_u)) E, materialised."""
    model = make_model(37, 2, rank).float().eval()   # the timestep embedding is float32
    book = torch.randn(37, 3, generator=torch.Generator().manual_seed(4))
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([1, 3])
    t, tau = 0.4, 0.7
    with torch.no_grad():
        got = Purrception(book).velocity(model, z, t, y, tau, cfg_scale)
        tt = torch.full((2,), t)
        l_c = cat.logits_from_features(model, model.features(z, tt, y))
        l_u = cat.logits_from_features(model, model.features(z, tt, torch.full_like(y, model.null_class)))
        mu = (torch.softmax((l_u + cfg_scale * (l_c - l_u)) / tau, dim=-1) @ book).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, purrception_velocity(mu, z, t), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(cat.posterior_mean(model, guided_features(model, z, t, y, cfg_scale), book, tau),
                                   mu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("side,patch,rank", [(5, 2, 0), (5, 2, 4), (7, 3, 0), (3, 2, 0)])
def test_a_side_that_is_not_a_multiple_of_the_patch_is_padded_and_equals_naive(side, patch, rank):
    """Losses, their gradients and the posterior mean on a padded grid == the same on materialised logits of the
    real positions only (the naive references crop through ``DiT.unpatchify``)."""
    model = make_model(37, patch, rank, side=side)
    assert model.grid == -(-side // patch) and model.head.padding == model.grid * patch - side > 0
    h = features(model)
    codes = torch.randint(0, 37, (3, side, side), generator=torch.Generator().manual_seed(2))
    for hint in (None, 0.3):
        want = grads(model, h, lambda: cat.naive_cross_entropy_and_zloss(model, h, codes), (1.0, 0.3))
        got = grads(model, h, lambda: cat.cross_entropy_and_zloss(model, h, codes, hint, 2000), (1.0, 0.3))
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    mask = torch.rand(3, side, side, generator=torch.Generator().manual_seed(5)) < 0.4
    want = grads(model, h, lambda: cat.naive_masked_cross_entropy_and_zloss(model, h, codes, mask), (1.0, 0.3))
    got = grads(model, h, lambda: cat.masked_cross_entropy_and_zloss(model, h, codes, mask, 0.3, 2000), (1.0, 0.3))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    book = torch.randn(37, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mean = cat.posterior_mean(model, h.detach(), book, 0.7, 2000)
    assert mean.shape == (3, 3, side, side)
    torch.testing.assert_close(mean, cat.naive_posterior_mean(model, h.detach(), book, 0.7), rtol=1e-10, atol=1e-12)
    z = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():  # the timestep embedding is float32
        out = model.float()(z, torch.full((2,), 0.5), torch.tensor([0, 4]))
    assert out.shape == (2, side, side, 37)


def test_unpatchify_inverts_patchify():
    x = torch.arange(2 * 6 * 6 * 3).reshape(2, 6, 6, 3)
    tokens = patchify_positions(x, 2)                                   # (B, N, p*p, C)
    assert tokens.shape == (2, 9, 4, 3)
    assert torch.equal(unpatchify(tokens.reshape(2, 9, 12), 2, 3), x)
    assert torch.equal(tokens[0, 1, 2], x[0, 1, 2])                     # token (0,1), sub-position (1,0)


def test_full_head_keeps_checkpoint_keys_and_forward():
    model = make_model(11, 2, 0)
    assert isinstance(model.head, LinearHead)
    assert {k for k in model.state_dict() if k.startswith("head.")} == {"head.weight", "head.bias"}
    assert model.head.weight.shape == (4 * 11, HIDDEN)


def test_factorised_head_sizes_init_and_training_signal():
    k, rank, p = 50, 6, 2
    cfg = DiTConfig(input_size=4, in_channels=3, out_channels=k, patch_size=p, hidden_size=HIDDEN, depth=1,
                    num_heads=2, num_classes=5, head_rank=rank)
    model = DiT(cfg)
    head = model.head
    assert isinstance(head, FactorisedHead)
    assert sum(q.numel() for q in head.parameters()) == HIDDEN * p * p * rank + p * p * rank + rank * k + k
    x, t, y = torch.randn(2, 3, 4, 4), torch.rand(2), torch.tensor([0, 4])
    out = model(x, t, y)
    assert out.shape == (2, 4, 4, k) and torch.count_nonzero(out) == 0   # DiT's zero-initialised output
    assert torch.count_nonzero(head.proj.weight) > 0                     # ... without a dead projection
    ce, z_sq = cat.cross_entropy_and_zloss(model, model.features(x, t, y), torch.randint(0, k, (2, 4, 4)), 1e-5)
    assert ce.item() == pytest.approx(torch.log(torch.tensor(float(k))).item(), rel=1e-6)
    (ce + 1e-5 * z_sq).backward()
    assert torch.count_nonzero(head.classifier.weight.grad) > 0
    # forward (token layout) and the row view describe the same affine map
    model_d = make_model(k, p, rank)
    h = features(model_d).detach()
    rows = head_rows_logits(model_d, h)
    torch.testing.assert_close(rows, cat.logits_from_features(model_d, h), rtol=1e-12, atol=1e-12)


def head_rows_logits(model: DiT, h: torch.Tensor) -> torch.Tensor:
    head = model.head
    out = head.rows(h) @ head.classifier_weight.T + head.classifier_bias
    return head.from_rows(out.view(out.shape[0], head.groups, -1), h.shape[0])


def test_negative_rank_is_rejected():
    with pytest.raises(ValueError, match="head_rank"):
        DiT(DiTConfig(head_rank=-1))


def test_bf16_autocast_matches_naive_loosely():
    """Under CPU bf16 autocast both heads do the matmul in bf16 and the softmax in float32."""
    torch.manual_seed(0)
    cfg = DiTConfig(input_size=4, in_channels=3, out_channels=40, patch_size=2, hidden_size=HIDDEN, depth=1,
                    num_heads=2, num_classes=5)
    model = DiT(cfg)
    torch.nn.init.normal_(model.head.weight, std=0.3)
    h = torch.randn(3, 4, HIDDEN, requires_grad=True)
    codes = torch.randint(0, 40, (3, 4, 4))
    mask = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(5)) < 0.4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = grads(model, h, lambda: cat.naive_cross_entropy_and_zloss(model, h, codes), (1.0, 0.1))
        got = grads(model, h, lambda: cat.cross_entropy_and_zloss(model, h, codes, 0.1, 2000), (1.0, 0.1))
        want += grads(model, h, lambda: cat.naive_masked_cross_entropy_and_zloss(model, h, codes, mask), (1.0, 0.1))
        got += grads(model, h, lambda: cat.masked_cross_entropy_and_zloss(model, h, codes, mask, 0.1, 2000),
                     (1.0, 0.1))
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)
