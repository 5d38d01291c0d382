"""Exact answers for the Purrception method (paper eqs. 13-15, App. D)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from purrception.flows.categorical import cross_entropy_and_zloss, logits_from_features, posterior_mean
from purrception.flows.purrception import Purrception, purrception_velocity
from purrception.models.dit import DiT, DiTConfig
from purrception.sampling.guidance import guided_features


def _model(K: int = 6, d: int = 3, patch: int = 1, side: int = 4, seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    model = DiT(DiTConfig(input_size=side, in_channels=d, out_channels=K, patch_size=patch, hidden_size=32,
                          depth=1, num_heads=2, num_classes=3))
    # DiT zero-initialises its output layers; give them values so that the tests see real logits.
    for p in list(model.head.parameters()) + list(model.final_norm.parameters()):
        torch.nn.init.normal_(p, std=0.5)
    for block in model.blocks:
        for p in block.adaLN_modulation.parameters():
            torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def test_velocity_matches_hand_computed_posterior_mean():
    codebook = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    logits = torch.tensor([0.5, -0.3, 1.2])
    tau, t = 0.7, 0.25
    z = torch.tensor([0.2, -0.4])
    weights = [torch.exp(logit / tau).item() for logit in logits]
    total = sum(weights)
    mu = [sum(w / total * codebook[k, j].item() for k, w in enumerate(weights)) for j in range(2)]
    expected = torch.tensor([(mu[j] - z[j].item()) / (1 - t) for j in range(2)])
    pi = torch.softmax(logits / tau, dim=0)
    got = purrception_velocity(pi @ codebook, z, t)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_one_hot_posterior_gives_straight_line_to_code():
    model = _model()
    h = torch.randn(2, 16, 32)
    codebook = torch.randn(6, 3)
    with torch.no_grad():
        logits = logits_from_features(model, h)
        mu = posterior_mean(model, h, codebook, tau=1e-4)
    argmax = logits.argmax(-1)                                  # (B, H, W)
    expected = codebook[argmax].permute(0, 3, 1, 2)
    torch.testing.assert_close(mu, expected, rtol=1e-5, atol=1e-5)
    z, t = torch.randn_like(mu), 0.6
    torch.testing.assert_close(purrception_velocity(mu, z, t), (expected - z) / (1 - t), rtol=1e-5, atol=1e-5)


def test_loss_equals_cross_entropy_plus_z_term():
    for patch, side in [(1, 4), (2, 4)]:
        model = _model(patch=patch, side=side)
        codes = torch.randint(0, 6, (2, side, side))
        h = torch.randn(2, (side // patch) ** 2, 32)
        ce, z_sq = cross_entropy_and_zloss(model, h, codes)
        logits = logits_from_features(model, h)
        # by hand: logits by position from the raw head output
        raw = model.head(h).reshape(2, side // patch, side // patch, patch, patch, 6)
        by_hand = raw.permute(0, 1, 3, 2, 4, 5).reshape(2, side, side, 6)
        torch.testing.assert_close(logits, by_hand)
        expected_ce = F.cross_entropy(by_hand.reshape(-1, 6), codes.reshape(-1))
        lse = torch.log(torch.exp(by_hand).sum(-1))
        torch.testing.assert_close(ce, expected_ce)
        torch.testing.assert_close(z_sq, (lse**2).mean())


def test_method_loss_uses_z_loss_weight():
    model = _model()
    codebook = torch.randn(6, 3)
    codes = torch.randint(0, 6, (3, 4, 4))
    y = torch.tensor([0, 1, 2])
    out_a = Purrception(codebook, z_loss_weight=0.0).loss(model, codes, y, torch.Generator().manual_seed(1))
    out_b = Purrception(codebook, z_loss_weight=0.5).loss(model, codes, y, torch.Generator().manual_seed(1))
    assert abs(out_a.metrics["ce"] - out_b.metrics["ce"]) < 1e-6
    torch.testing.assert_close(out_b.loss, out_a.loss + 0.5 * out_b.metrics["z_loss"], rtol=1e-6, atol=1e-5)


def test_cfg_scale_one_is_the_conditional_model_and_cfg_is_exact_on_logits():
    model = _model()
    x, y = torch.randn(2, 3, 4, 4), torch.tensor([0, 2])
    with torch.no_grad():
        cond = model.features(x, torch.full((2,), 0.3), y)
        torch.testing.assert_close(guided_features(model, x, 0.3, y, 1.0), cond)
        uncond = model.features(x, torch.full((2,), 0.3), torch.full((2,), model.null_class))
        s = 1.7
        guided_logits = logits_from_features(model, guided_features(model, x, 0.3, y, s))
        l_c, l_u = logits_from_features(model, cond), logits_from_features(model, uncond)
        torch.testing.assert_close(guided_logits, l_u + s * (l_c - l_u), rtol=1e-5, atol=1e-5)


def test_last_euler_step_lands_on_posterior_mean():
    """At t = (T-1)/T, z + v/T = mu exactly: the integration never divides by zero."""
    mu, z, T = torch.randn(5), torch.randn(5), 10
    t = (T - 1) / T
    torch.testing.assert_close(z + purrception_velocity(mu, z, t) / T, mu, rtol=1e-5, atol=1e-5)
