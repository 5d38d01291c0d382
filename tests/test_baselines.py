"""The paper's baselines (CFM, CFM-endpoint, DFM) behind the FlowMethod interface: exact answers, then a short
train + sample run of every method through the same library calls."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from purrception.checkpoint import load_checkpoint
from purrception.data.shards import write_token_shards
from purrception.errors import PurrError
from purrception.flows import CFM, DFM, CFMEndpoint, Purrception, get_method
from purrception.flows.base import make_path_sample
from purrception.flows.categorical import chunk_rows, logits_from_features
from purrception.flows.dfm import (
    KAPPA_SCHEDULERS,
    SAMPLE_COPIES_PER_LOGIT,
    discrete_euler,
    draws_from_logits,
    mask_path_sample,
    quantile_draws,
    sample_from_quantile,
)
from purrception.generation.generate import generate_codes
from purrception.io import sha256_of_tensor
from purrception.models.dit import DiT, DiTConfig
from purrception.sampling.guidance import guided_features
from purrception.sampling.settings import SamplerSettings
from purrception.tokenizers.base import TokenizerIdentity, nearest_code
from purrception.training.config import TrainConfig
from purrception.training.loop import train

K, D, SIDE, CLASSES = 16, 4, 4, 3
ALL_METHODS = ["purrception", "cfm", "cfm-endpoint", "dfm"]


def _snap(method):
    """The snap a tokenizer with ``method``'s codebook would use."""
    return lambda z: nearest_code(z, method.codebook)


def _codebook(seed: int = 0) -> torch.Tensor:
    return torch.randn(K, D, generator=torch.Generator().manual_seed(seed))


def _model(method, random_weights: bool = True, seed: int = 1, patch: int = 1, rank: int = 0,
           side: int = SIDE) -> DiT:
    """A tiny DiT with the method's I/O; random weights so that every output depends on every input."""
    model = DiT(DiTConfig(input_size=side, hidden_size=32, depth=1, num_heads=2, num_classes=CLASSES,
                          patch_size=patch, head_rank=rank, **method.backbone_io()))
    if random_weights:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _codes(batch: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, K, (batch, SIDE, SIDE), generator=torch.Generator().manual_seed(seed))


def _out(model: DiT, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Plain forward through the default head, channels first ``(B, C, H, W)``."""
    return model(x, t, y).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------------------------
# Shared path
# ---------------------------------------------------------------------------------------------------------------


def test_make_path_sample_is_the_linear_path_with_z0_drawn_first():
    cb, codes = _codebook(), _codes(5)
    path = make_path_sample(cb, codes, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    z0 = torch.randn((5, D, SIDE, SIDE), generator=gen)
    t = torch.rand(5, generator=gen)
    z1 = cb[codes].permute(0, 3, 1, 2)
    assert torch.equal(path.z0, z0) and torch.equal(path.t, t) and torch.equal(path.z1, z1)
    torch.testing.assert_close(path.z_t, t[:, None, None, None] * z1 + (1 - t[:, None, None, None]) * z0)


# ---------------------------------------------------------------------------------------------------------------
# CFM and CFM-endpoint
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [CFM, CFMEndpoint])
def test_regression_loss_of_zero_init_dit_is_mse_of_the_target(cls):
    """DiT's zero final layer outputs 0, so the loss is the mean square of the target: ``z1 - z0`` or ``z1``."""
    cb, codes = _codebook(), _codes(6)
    method = cls(cb, label_dropout=0.0)
    out = method.loss(_model(method, random_weights=False), codes, torch.zeros(6, dtype=torch.long),
                      torch.Generator().manual_seed(3))
    z0 = torch.randn((6, D, SIDE, SIDE), generator=torch.Generator().manual_seed(3))
    z1 = cb[codes].permute(0, 3, 1, 2)
    target = z1 - z0 if cls is CFM else z1
    torch.testing.assert_close(out.loss, target.pow(2).mean())


@pytest.mark.parametrize("cls", [CFM, CFMEndpoint])
def test_regression_loss_matches_hand_computation_with_label_dropout(cls):
    cb, codes = _codebook(), _codes(8)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    method = cls(cb, label_dropout=0.5)
    model = _model(method)
    got = method.loss(model, codes, y, torch.Generator().manual_seed(11)).loss
    gen = torch.Generator().manual_seed(11)
    z0 = torch.randn((8, D, SIDE, SIDE), generator=gen)
    t = torch.rand(8, generator=gen)
    y_used = torch.where(torch.rand(8, generator=gen) < 0.5, torch.full_like(y, CLASSES), y)
    assert (y_used == CLASSES).any() and (y_used != CLASSES).any()  # both branches of the dropout exercised
    z1 = cb[codes].permute(0, 3, 1, 2)
    z_t = t[:, None, None, None] * z1 + (1 - t[:, None, None, None]) * z0
    target = z1 - z0 if cls is CFM else z1
    torch.testing.assert_close(got, (_out(model, z_t, t, y_used) - target).pow(2).mean())


def test_velocity_formulas():
    cb = _codebook()
    z = torch.randn(3, D, SIDE, SIDE, generator=torch.Generator().manual_seed(4))
    y, t = torch.tensor([0, 1, 2]), 0.3
    cfm, endpoint = CFM(cb), CFMEndpoint(cb)
    model = _model(cfm)  # same I/O widths for both
    out = _out(model, z, torch.full((3,), t), y)
    torch.testing.assert_close(cfm.velocity(model, z, t, y, 1.0, 1.0), out)
    torch.testing.assert_close(endpoint.velocity(model, z, t, y, 1.0, 1.0), (out - z) / (1 - t))


@pytest.mark.parametrize("cls", [CFM, CFMEndpoint])
def test_one_euler_step_then_nearest_code(cls):
    """T = 1: ``z_1 = z0 + v(z0, 0)``, snapped; for the endpoint model that is the snapped prediction itself."""
    cb = _codebook()
    method = cls(cb)
    model = _model(method)
    noise = torch.randn(4, D, SIDE, SIDE, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 1, 2, 1])
    codes = method.generate(model, noise, y, SamplerSettings(sample_steps=1), _snap(method))
    out = _out(model, noise, torch.zeros(4), y)
    expected = nearest_code(noise + out if cls is CFM else out, cb)
    assert torch.equal(codes, expected)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_cfm_endpoint_last_step_jumps_to_the_prediction(solver):
    """An endpoint predictor hands solvers ``mu``: the last step is ``z <- z1_hat``, never ``v`` at ``t = 1``."""
    cb = _codebook()
    method = CFMEndpoint(cb)
    model = _model(method)
    noise = torch.randn(4, D, SIDE, SIDE, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 1, 2, 1])
    codes = method.generate(model, noise, y, SamplerSettings(sample_steps=1, solver=solver), _snap(method))
    assert torch.equal(codes, nearest_code(_out(model, noise, torch.zeros(4), y), cb))


@pytest.mark.parametrize("name", ["cfm", "cfm-endpoint"])
def test_temperature_is_refused_by_regression_methods(name):
    method = get_method(name)(_codebook())
    noise = torch.randn(2, D, SIDE, SIDE)
    with pytest.raises(PurrError, match=f"`tau` has no meaning for {name} \\(it has no logits\\), got 0.9"):
        method.generate(_model(method), noise, torch.tensor([0, 1]), SamplerSettings(sample_steps=2, tau=0.9),
                        _snap(method))


# ---------------------------------------------------------------------------------------------------------------
# CFG: features mixed, head once == outputs mixed, for every method
# ---------------------------------------------------------------------------------------------------------------


def _guided_output(method, model, x, t, y, scale):
    """What each method feeds its sampler, guided: velocity (continuous methods) or logits (DFM)."""
    if isinstance(method, DFM):
        return method.logits(model, x, t, y, scale)
    return method.velocity(model, x, t, y, 1.0, scale)


def _expected_guided_output(method, model, x, t, y, scale):
    """The same quantity from two separate plain forwards, mixing the head outputs: ``o_u + s (o_c - o_u)``."""
    tt = torch.full((x.shape[0],), t)
    o_c, o_u = model(x, tt, y), model(x, tt, torch.full_like(y, CLASSES))      # (B, H, W, C)
    mixed = o_u + scale * (o_c - o_u)
    if isinstance(method, DFM):
        return mixed
    if isinstance(method, Purrception):
        mu = (torch.softmax(mixed, dim=-1) @ method.codebook).permute(0, 3, 1, 2)
        return (mu - x) / (1 - t)
    return method.velocity_from_output(mixed.permute(0, 3, 1, 2), x, t)


@pytest.mark.parametrize("name", ALL_METHODS)
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_cfg_on_features_equals_cfg_on_outputs(name, scale):
    method = get_method(name)(_codebook())
    model = _model(method)
    gen = torch.Generator().manual_seed(6)
    x = (torch.randint(0, K + 1, (3, SIDE, SIDE), generator=gen) if method.discrete_input
         else torch.randn(3, D, SIDE, SIDE, generator=gen))
    y = torch.tensor([2, 0, 1])
    torch.testing.assert_close(_guided_output(method, model, x, 0.4, y, scale),
                               _expected_guided_output(method, model, x, 0.4, y, scale), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_an_odd_grid_read_in_2x2_patches_trains_guides_and_samples(name):
    """5x5 codes as 3x3 tokens of 2x2 patches (the grid padded by one row and column): the loss reaches every
    parameter, CFG on features still equals CFG on outputs, and sampling returns 5x5 codes."""
    side = 5
    method = get_method(name)(_codebook())
    model = _model(method, patch=2, side=side).train()
    codes = torch.randint(0, K, (4, side, side), generator=torch.Generator().manual_seed(2))
    out = method.loss(model, codes, torch.tensor([0, 1, 2, 0]), torch.Generator().manual_seed(3))
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(p.grad is not None for p in model.parameters())
    model.eval()
    gen = torch.Generator().manual_seed(6)
    x = (torch.randint(0, K + 1, (3, side, side), generator=gen) if method.discrete_input
         else torch.randn(3, D, side, side, generator=gen))
    y = torch.tensor([2, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(_guided_output(method, model, x, 0.4, y, 2.5),
                                   _expected_guided_output(method, model, x, 0.4, y, 2.5), rtol=1e-4, atol=1e-3)
        got = generate_codes(method, model, np.array([0, 1, 2]), SamplerSettings(sample_steps=3, cfg_scale=1.5), 0,
                             _snap(method))
    assert got.shape == (3, side, side) and int(got.min()) >= 0 and int(got.max()) < K


# ---------------------------------------------------------------------------------------------------------------
# DFM
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", sorted(KAPPA_SCHEDULERS))
def test_dfm_path_reveals_kappa_t_of_the_tokens(scheduler):
    kappa = KAPPA_SCHEDULERS[scheduler]
    assert float(kappa(torch.tensor(0.0))) == 0.0 and abs(float(kappa(torch.tensor(1.0))) - 1.0) < 1e-12
    times = torch.tensor([0.1, 0.5, 0.9])
    n = 1000                                                               # images per time, 16 tokens each
    codes = _codes(3 * n, seed=8)
    t = times.repeat_interleave(n)
    x_t = mask_path_sample(codes, t, kappa, K, torch.Generator().manual_seed(9))
    revealed = x_t != K
    assert torch.equal(x_t[revealed], codes[revealed])                     # revealed tokens are the data
    for i, ti in enumerate(times):
        frac = revealed[i * n : (i + 1) * n].float().mean().item()
        p = float(kappa(ti))
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / (n * SIDE * SIDE)), (float(ti), frac, p)


def test_dfm_loss_is_cross_entropy_on_masked_positions_only():
    cb, codes = _codebook(), _codes(8)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    method = DFM(cb, label_dropout=0.25, scheduler="cosine", z_loss_weight=0.01, embed_dim=8)
    model = _model(method)
    got = method.loss(model, codes, y, torch.Generator().manual_seed(12))
    gen = torch.Generator().manual_seed(12)
    t = torch.rand(8, generator=gen)
    keep = torch.rand((8, SIDE, SIDE), generator=gen) < (1 - torch.cos(0.5 * math.pi * t))[:, None, None]
    y_used = torch.where(torch.rand(8, generator=gen) < 0.25, torch.full_like(y, CLASSES), y)
    x_t = torch.where(keep, codes, torch.full_like(codes, K))
    masked = ~keep
    assert masked.any() and keep.any()
    logits = model(x_t, t, y_used)[masked]                                  # (M, K)
    expected = F.cross_entropy(logits, codes[masked]) + 0.01 * torch.logsumexp(logits, -1).pow(2).mean()
    torch.testing.assert_close(got.loss, expected)
    assert got.metrics["masked_frac"] == pytest.approx(masked.float().mean().item())


#: (patch size, factorised head width): one row per position (p = 1; the factorised head) and one row per token of
#: p*p positions (the full head at p = 2, where the loss weights a token's unmasked sub-positions 0).
HEADS = [(1, 0), (2, 0), (2, 3)]


@pytest.mark.parametrize("patch,rank", HEADS)
@pytest.mark.parametrize("z_loss_weight", [0.0, 0.01])
def test_dfm_loss_and_gradients_equal_the_materialised_masked_loss(patch, rank, z_loss_weight):
    """The chunked head's loss and every parameter's gradient == CE (+ z-loss) on the materialised logits of the
    masked positions, replaying the loss's draws from the same generator. In float64: the timestep embedding's
    sin-cos features are float32 by design, so they are cast up before its MLP."""
    cb, codes = _codebook(), _codes(8)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    method = DFM(cb, label_dropout=0.25, z_loss_weight=z_loss_weight, embed_dim=8)
    model = _model(method, patch=patch, rank=rank).double()
    model.t_embedder.mlp.register_forward_pre_hook(lambda module, args: (args[0].double(),))
    got = method.loss(model, codes, y, torch.Generator().manual_seed(12))
    got_grads = torch.autograd.grad(got.loss, list(model.parameters()))
    gen = torch.Generator().manual_seed(12)
    t = torch.rand(8, generator=gen)
    x_t = mask_path_sample(codes, t, KAPPA_SCHEDULERS["linear"], K, gen)
    y_used = torch.where(torch.rand(8, generator=gen) < 0.25, torch.full_like(y, CLASSES), y)
    masked = x_t == K
    if patch > 1:  # some tokens mix masked and revealed sub-positions, so the weighted rows are exercised
        per_token = masked.reshape(8, SIDE // patch, patch, SIDE // patch, patch).sum((2, 4))
        assert ((per_token > 0) & (per_token < patch * patch)).any()
    logits = logits_from_features(model, model.features(x_t, t, y_used))[masked]
    expected = F.cross_entropy(logits, codes[masked]) + z_loss_weight * torch.logsumexp(logits, -1).pow(2).mean()
    want_grads = torch.autograd.grad(expected, list(model.parameters()))
    torch.testing.assert_close(got.loss, expected, rtol=1e-10, atol=1e-12)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_dfm_loss_with_nothing_masked_is_zero_and_reaches_every_parameter():
    cb = _codebook()
    method = DFM(cb, label_dropout=0.0, embed_dim=8)
    method.kappa = lambda t: torch.ones_like(t)                             # every position revealed
    model = _model(method)
    out = method.loss(model, _codes(2), torch.tensor([0, 1]), torch.Generator().manual_seed(3))
    assert out.loss.item() == 0.0 and out.metrics["masked_frac"] == 0.0
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("patch,rank,side", [(p, r, SIDE) for p, r in HEADS] + [(2, 0, 5), (2, 3, 5)])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_dfm_chunked_sampler_gives_the_materialised_samplers_codes(patch, rank, side, cfg_scale):
    """Same noise, same codes: the chunked draws (a budget of a few rows per chunk) and ``DFM.generate`` against
    the Euler sampler on materialised guided logits (``softmax(l / tau)`` over all B x H x W x K); also on a
    5x5 grid padded to 2x2 patches."""
    method = DFM(_codebook(), embed_dim=8)
    model = _model(method, patch=patch, rank=rank, side=side)
    noise = torch.randn(5, D, side, side, generator=torch.Generator().manual_seed(21))
    y = torch.tensor([0, 1, 2, 1, 0])
    sampler = SamplerSettings(sample_steps=4, cfg_scale=cfg_scale, tau=0.8)
    budget = 3 * SAMPLE_COPIES_PER_LOGIT * model.head.groups * K * 4          # 3 rows of float32 logits
    rows = model.head.rows(torch.zeros(5, model.grid ** 2, 32)).shape[0]
    assert chunk_rows(rows, SAMPLE_COPIES_PER_LOGIT * model.head.groups * K, torch.device("cpu"), budget) == 3
    seen: list = []

    def chunked(x, t, reveal, w, tau):
        seen.append(int(reveal.sum()))
        return quantile_draws(model, guided_features(model, x, t, y, sampler.cfg_at(t)), reveal, w, tau, budget)

    with torch.no_grad():
        materialised = draws_from_logits(lambda x, t: method.logits(model, x, t, y, sampler.cfg_at(t)))
        want = discrete_euler(materialised, noise, sampler.sample_steps, method.kappa, K, sampler.tau_at)
        got = discrete_euler(chunked, noise, sampler.sample_steps, method.kappa, K, sampler.tau_at)
    assert len(seen) > 1 and max(seen) > 3 * model.head.groups               # several steps, several chunks
    assert torch.equal(got, want) and (want != K).all()
    assert torch.equal(method.generate(model, noise, y, sampler, _snap(method)), want)


@pytest.mark.parametrize("frac", [0.3, 1.0])
def test_quantile_draws_reads_only_revealed_positions(frac):
    """Draws at the revealed positions equal the materialised inverse-CDF draws; every other position is 0. At
    patch 2 a fraction of 0.3 leaves tokens partly revealed; 1.0 reveals whole tokens only."""
    method = DFM(_codebook(), embed_dim=8)
    model = _model(method, patch=2)
    gen = torch.Generator().manual_seed(22)
    h = torch.randn(3, model.grid ** 2, 32, generator=gen)
    reveal = torch.rand(3, SIDE, SIDE, generator=gen) < frac
    w = torch.rand(3, SIDE, SIDE, generator=gen, dtype=torch.float64)
    got = quantile_draws(model, h, reveal, w, 0.5, chunk_bytes=1)
    with torch.no_grad():
        want = sample_from_quantile(torch.softmax(logits_from_features(model, h) / 0.5, dim=-1), w)
    assert torch.equal(got[reveal], want[reveal]) and (got[~reveal] == 0).all()


def test_sample_from_quantile_is_the_inverse_cdf():
    probs = torch.tensor([0.25, 0.0, 0.5, 0.25]).expand(6, 4)
    w = torch.tensor([0.0, 0.2, 0.26, 0.74, 0.76, 1.0])
    assert sample_from_quantile(probs, w).tolist() == [0, 0, 2, 2, 3, 3]


def _perfect_denoiser(target: torch.Tensor, seen: list):
    def logits_fn(x, t):
        seen.append((t, x.clone()))
        logits = torch.full((*x.shape, K), -math.inf)
        return logits.scatter(-1, target[..., None], 0.0)                  # all mass on the target codes
    return logits_fn


@pytest.mark.parametrize("scheduler", sorted(KAPPA_SCHEDULERS))
def test_dfm_sampler_with_perfect_denoiser_returns_targets_on_the_kappa_schedule(scheduler):
    kappa = KAPPA_SCHEDULERS[scheduler]
    n, steps = 600, 4
    target = _codes(n, seed=13)
    noise = torch.randn(n, D, SIDE, SIDE, generator=torch.Generator().manual_seed(14))
    seen: list = []
    out = discrete_euler(draws_from_logits(_perfect_denoiser(target, seen)), noise, steps, kappa, K, lambda t: 0.7)
    assert torch.equal(out, target)
    assert [s[0] for s in seen] == [i / steps for i in range(steps)]
    for t, x in seen:
        revealed = x != K
        assert torch.equal(x[revealed], target[revealed])                  # revealed tokens never change
        p = float(kappa(torch.tensor(t, dtype=torch.float64)))               # P(revealed before step at t)
        frac = revealed.float().mean().item()
        assert abs(frac - p) <= 5 * math.sqrt(max(p * (1 - p), 1e-12) / target.numel()) + 1e-12, (t, frac, p)


def test_dfm_sampler_draws_from_softmax_over_tau():
    """One step reveals everything with a draw from ``softmax(l / tau)``: check the empirical frequencies."""
    base = torch.log(torch.tensor([0.5, 0.3, 0.2] + [1e-30] * (K - 3)))
    tau = 2.0
    n = 4000
    noise = torch.randn(n, D, SIDE, SIDE, generator=torch.Generator().manual_seed(15))
    out = discrete_euler(draws_from_logits(lambda x, t: base.expand(*x.shape, K)), noise, 1,
                         KAPPA_SCHEDULERS["linear"], K, lambda t: tau)
    freq = torch.bincount(out.flatten(), minlength=K).double() / out.numel()
    expected = torch.softmax(base.double() / tau, 0)
    m = out.numel()
    assert torch.all((freq - expected).abs() <= 5 * torch.sqrt(expected * (1 - expected) / m) + 1e-9)


def test_dfm_refuses_another_solver():
    method = DFM(_codebook(), embed_dim=8)
    with pytest.raises(PurrError, match="solver"):
        method.generate(_model(method), torch.randn(2, D, SIDE, SIDE), torch.tensor([0, 1]),
                        SamplerSettings(sample_steps=2, solver="heun"), _snap(method))


# ---------------------------------------------------------------------------------------------------------------
# Every method through the same training loop and generator
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    cb = _codebook().numpy()
    codes = _codes(32, seed=16).numpy()
    labels = np.arange(32) % CLASSES
    identity = TokenizerIdentity("test-random", K, D, sha256_of_tensor(torch.from_numpy(cb)))
    return write_token_shards(folder, codes, labels, cb, identity, CLASSES, {}, {})


@pytest.mark.parametrize("name", ALL_METHODS)
def test_train_and_sample_every_method_through_the_same_calls(name, tiny_shards, tmp_path):
    config = TrainConfig(method=name, model="DiT-T/1", model_overrides={"hidden_size": 32, "depth": 1, "num_heads": 2},
                         steps=5, batch_size=8, lr=1e-3, log_every=1, ckpt_every=5, ema_decay=0.5)
    result = train(config, tiny_shards, tmp_path / "run", progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)

    ckpt = load_checkpoint(result.checkpoint)
    method = ckpt.build_method()
    assert ckpt.method_name == name and type(method) is get_method(name)
    model = ckpt.build_model()
    assert sum(float(p.detach().abs().sum()) for p in model.head.parameters()) > 0  # zero-init head trained
    labels = np.array([0, 1, 2, 0, 1, 2])
    sampler = SamplerSettings(sample_steps=3, cfg_scale=1.5)
    codes = generate_codes(method, model, labels, sampler, seed=3, snap=_snap(method), batch_size=6)
    assert codes.shape == (6, SIDE, SIDE) and codes.min() >= 0 and codes.max() < K
    # image k depends only on (seed, k), not on how the batch was cut, for every method
    assert torch.equal(codes, generate_codes(method, model, labels, sampler, seed=3, snap=_snap(method), batch_size=4))
