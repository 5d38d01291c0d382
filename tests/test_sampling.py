"""Sampling toolkit: solvers (exact answers, NFE, the endpoint jump), schedules, uncertainty maps, ``purr sample``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

from purrception.cli import build_parser, main
from purrception.cli.common import sampler_from_args
from purrception.errors import PurrError
from purrception.flows import CFM, Purrception
from purrception.flows.base import endpoint_velocity
from purrception.generation.generate import generate_codes
from purrception.generation.uncertainty import (
    candidate_codes,
    entropy_heatmap,
    posterior_entropy,
    snap_times,
    trace_labels,
    trace_uncertainty,
)
from purrception.models.dit import DiT, DiTConfig
from purrception.sampling import solvers as solvers_module
from purrception.sampling.schedules import Schedule, as_spec, parse_schedule
from purrception.sampling.settings import SamplerSettings
from purrception.sampling.solvers import integrate
from purrception.tokenizers.base import nearest_code

K, D, SIDE, CLASSES = 16, 4, 4, 3
FIXED = ["euler", "heun", "midpoint"]


def _has_torchdiffeq() -> bool:
    try:
        import torchdiffeq  # noqa: F401
    except ImportError:
        return False
    return True


needs_torchdiffeq = pytest.mark.skipif(not _has_torchdiffeq(), reason="torchdiffeq is not installed")


class Counted:
    """A velocity (or endpoint) callable that records every time it is evaluated at."""

    def __init__(self, fn):
        self.fn, self.times = fn, []

    def __call__(self, z, t):
        self.times.append(float(t))
        return self.fn(z, t)


# ---------------------------------------------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------------------------------------------


def test_euler_heun_midpoint_on_a_linear_ode_are_exact_polynomials():
    """For dz/dt = a z one step multiplies by the solver's stability polynomial: Euler 1 + ah, Heun and midpoint
    1 + ah + (ah)^2 / 2 (both second order)."""
    a, steps = 0.7, 5
    z0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    h = 1.0 / steps
    expected = {"euler": (1 + a * h) ** steps, "heun": (1 + a * h + (a * h) ** 2 / 2) ** (steps - 1) * (1 + a * h),
                "midpoint": (1 + a * h + (a * h) ** 2 / 2) ** steps}
    for name, factor in expected.items():
        out = integrate(lambda z, t: a * z, z0, steps, name)
        torch.testing.assert_close(out, z0 * factor, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["heun", "midpoint"])
def test_second_order_solvers_converge_at_second_order(name):
    """v = cos(t) z (written with the endpoint mu = z + (1 - t) v, so the last step is a jump): the error against
    the exact exp(sin 1) drops ~4x per step doubling (Euler: 2x)."""
    z0 = torch.ones(1, dtype=torch.float64)
    exact = math.exp(math.sin(1.0))
    v = lambda z, t: math.cos(t) * z  # noqa: E731
    mu = lambda z, t: z + (1 - t) * v(z, t)  # noqa: E731
    err = [abs(float(integrate(v, z0, n, name, endpoint=mu)) - exact) for n in (64, 128)]
    assert 3.7 < err[0] / err[1] < 4.3


@pytest.mark.parametrize("steps", [1, 2, 7])
def test_nfe_and_grid_with_an_endpoint(steps):
    """Exactly `steps` grid steps; the last is the jump z <- mu, and v is never evaluated at t = 1."""
    mu_value = torch.tensor([0.5, -1.5], dtype=torch.float64)
    nfe = {"euler": steps, "heun": 2 * steps - 1, "midpoint": 2 * steps - 1}
    for name in FIXED:
        mu = Counted(lambda z, t: mu_value + 0.1 * (1 - t) * z)
        v = Counted(lambda z, t: endpoint_velocity(mu.fn(z, t), z, t))
        out = integrate(v, torch.zeros(2, dtype=torch.float64), steps, name, endpoint=mu)
        assert len(v.times) + len(mu.times) == nfe[name], name
        assert mu.times == [(steps - 1) / steps]                 # one jump, from the last grid time
        assert all(t < 1.0 for t in v.times), name
        assert out.shape == (2,)
        if name == "euler":
            assert v.times == [i / steps for i in range(steps - 1)]


def test_nfe_without_an_endpoint_and_no_evaluation_at_one():
    steps = 6
    nfe = {"euler": steps, "heun": 2 * steps - 1, "midpoint": 2 * steps}
    for name in FIXED:
        v = Counted(lambda z, t: -z)
        integrate(v, torch.ones(3), steps, name)
        assert len(v.times) == nfe[name], name
        assert max(v.times) < 1.0, name


def test_constant_endpoint_is_reached_exactly():
    """A constant endpoint mu: the exact flow z_t = t mu + (1 - t) z0 ends at mu; every solver lands on mu."""
    mu_value = torch.tensor([2.0, -1.0], dtype=torch.float64)
    for name in FIXED:
        mu = lambda z, t: mu_value  # noqa: E731
        out = integrate(lambda z, t: endpoint_velocity(mu(z, t), z, t), torch.zeros(2, dtype=torch.float64), 4,
                        name, endpoint=mu)
        torch.testing.assert_close(out, mu_value, rtol=0, atol=0)


def test_callback_sees_every_grid_state():
    seen = []
    out = integrate(lambda z, t: z + t, torch.zeros(1, dtype=torch.float64), 4, "euler",
                    callback=lambda t, z: seen.append((t, float(z))))
    z, expected = 0.0, []
    for i in range(4):
        expected.append((i / 4, z))
        z = z + (z + i / 4) / 4
    assert seen == expected and float(out) == z


def test_solver_errors():
    with pytest.raises(PurrError, match="unknown `solver` 'rk99'"):
        integrate(lambda z, t: z, torch.zeros(1), 2, "rk99")
    with pytest.raises(PurrError, match="takes no tolerance"):
        integrate(lambda z, t: z, torch.zeros(1), 2, "euler:1e-3")
    with pytest.raises(PurrError, match="`steps` must be a positive integer, got 0"):
        integrate(lambda z, t: z, torch.zeros(1), 0, "euler")


def test_adaptive_solver_without_torchdiffeq_is_a_clear_error(monkeypatch):
    real = solvers_module.importlib.import_module

    def fake(name, *a):
        if name == "torchdiffeq":
            raise ImportError(name)
        return real(name, *a)

    monkeypatch.setattr(solvers_module.importlib, "import_module", fake)
    with pytest.raises(PurrError, match="pip install torchdiffeq"):
        integrate(lambda z, t: z, torch.zeros(1), 2, "dopri5")


@needs_torchdiffeq
def test_adaptive_solvers_match_the_exact_solution_and_stop_before_one():
    z0 = torch.ones(2, dtype=torch.float64)
    for name, tol in (("dopri5", 1e-8), ("bosh3", 1e-7), ("adaptive_heun", 1e-6)):
        out = integrate(lambda z, t: math.cos(t) * z, z0, 10, f"{name}:{tol}")
        torch.testing.assert_close(out, z0 * math.exp(math.sin(1.0)), rtol=1e-4, atol=0)
        # with an endpoint: integrate to t_{T-1} = 0.9, then jump; nothing is evaluated beyond 0.9
        v = Counted(lambda z, t: -z)
        mu = Counted(lambda z, t: 3 * z)
        out = integrate(v, z0, 10, f"{name}:{tol}", endpoint=mu)
        assert max(v.times) <= 0.9 + 1e-12 and mu.times == [0.9]
        torch.testing.assert_close(out, 3 * z0 * math.exp(-0.9), rtol=1e-4, atol=0)
    with pytest.raises(PurrError, match="tolerance"):
        integrate(lambda z, t: z, z0, 2, "dopri5:abc")
    # callback states come from the dense output at the grid times
    seen = []
    integrate(lambda z, t: -z, z0, 4, "dopri5:1e-9", callback=lambda t, z: seen.append((t, float(z[0]))))
    assert [t for t, _ in seen] == [0.0, 0.25, 0.5, 0.75]
    assert max(abs(z - math.exp(-t)) for t, z in seen) < 1e-6


# ---------------------------------------------------------------------------------------------------------------
# Schedules and the shared sampler flags
# ---------------------------------------------------------------------------------------------------------------


def test_schedules_exact_values_and_round_trip():
    assert parse_schedule("0.8") == 0.8
    lin = parse_schedule("linear:1.2:0.6")
    assert [lin(t) for t in (0.0, 0.5, 1.0)] == pytest.approx([1.2, 0.9, 0.6], abs=1e-15)
    cos = parse_schedule("cosine:1.0:0.5")
    assert cos(0.0) == 1.0 and cos(1.0) == pytest.approx(0.5, abs=1e-15)
    assert cos(0.25) == pytest.approx(1.0 - 0.5 * (1 - math.cos(math.pi / 4)) / 2, abs=1e-15)
    assert str(cos) == "cosine:1:0.5" and parse_schedule(str(cos)) == cos
    assert json.loads(json.dumps(asdict(SamplerSettings(tau=lin))))["tau"] == {"shape": "linear", "start": 1.2,
                                                                                 "end": 0.6}
    assert SamplerSettings(tau=lin, cfg_scale=parse_schedule("linear:1:3")).cfg_at(0.5) == 2.0


def test_schedule_specs_parse_back_exactly_and_reports_record_specs():
    for spec in ("linear:0.123456789:1e-07", "cosine:1:0.5", "linear:-2.5:3"):
        schedule = parse_schedule(spec)
        assert schedule.spec == str(schedule) == spec and parse_schedule(schedule.spec) == schedule
    assert as_spec(parse_schedule("linear:1.3:0.6")) == "linear:1.3:0.6" and as_spec(0.8) == 0.8


@pytest.mark.parametrize("spec", ["wave:1:2", "linear:1", "linear:a:b", "abc", "nan"])
def test_malformed_schedules_are_refused(spec):
    with pytest.raises(PurrError, match="^(`tau`|unknown schedule shape)"):
        parse_schedule(spec, "`tau`")


def test_temperature_schedules_must_stay_positive():
    assert parse_schedule("linear:1:0") == Schedule("linear", 1.0, 0.0)     # parsing: the form only
    with pytest.raises(PurrError, match="`tau` must be a number > 0 at both ends of its schedule, got linear:1:0"):
        SamplerSettings(tau="linear:1:0")
    assert SamplerSettings(cfg_scale="linear:1:-2").cfg_at(1.0) == -2.0
    with pytest.raises(PurrError):
        Schedule("zigzag", 1.0, 2.0)


def test_sample_flags_parse_schedules_and_reject_bad_values(capsys):
    parser = build_parser()
    args = parser.parse_args(["sample", "ck.pt", "--out", "o", "--tau", "cosine:1.2:0.7", "--cfg-scale", "1.5",
                              "--solver", "heun", "--sample-steps", "9"])
    sampler = sampler_from_args(args)
    assert sampler.tau_at(0.0) == 1.2 and sampler.tau_at(1.0) == pytest.approx(0.7)
    assert sampler.cfg_at(0.3) == 1.5 and (sampler.sample_steps, sampler.solver) == (9, "heun")
    for bad, field in ((["--tau", "0"], "tau"), (["--tau", "linear:1:-1"], "tau"),
                       (["--sample-steps", "0"], "sample_steps"), (["--cfg-scale", "linear:x:1"], "cfg_scale")):
        with pytest.raises(PurrError, match=f"^`{field}` must be"):   # the knobs' rules: SamplerSettings'
            sampler_from_args(parser.parse_args(["sample", "ck.pt", "--out", "o", *bad]))
    for bad in (["--uncertainty-times", "0.5,1.5"], ["--position", "1"]):
        with pytest.raises(SystemExit) as err:
            parser.parse_args(["sample", "ck.pt", "--out", "o", *bad])
        assert err.value.code == 2, bad


# ---------------------------------------------------------------------------------------------------------------
# Purrception through the solvers; uncertainty
# ---------------------------------------------------------------------------------------------------------------


def _snap(method):
    """The snap a tokenizer with ``method``'s codebook would use."""
    return lambda z: nearest_code(z, method.codebook)


def _codebook(seed: int = 0) -> torch.Tensor:
    return torch.randn(K, D, generator=torch.Generator().manual_seed(seed))


def _model(method, seed: int = 1) -> DiT:
    model = DiT(DiTConfig(input_size=SIDE, hidden_size=32, depth=1, num_heads=2, num_classes=CLASSES,
                          **method.backbone_io()))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def test_purrception_euler_with_the_jump_matches_plain_euler():
    """The endpoint jump is the Euler update z + (1/T) (mu - z) / (1/T) = mu without the division."""
    method = Purrception(_codebook())
    model = _model(method)
    noise = torch.randn(3, D, SIDE, SIDE, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2])
    sampler = SamplerSettings(sample_steps=5, tau=0.7, cfg_scale=1.5)
    with torch.no_grad():
        z = noise
        for i in range(5):
            z = z + method.velocity(model, z, i / 5, y, 0.7, 1.5) / 5
        torch.testing.assert_close(method.generate(model, noise, y, sampler, _snap(method)),
                                   nearest_code(z, method.codebook))
        v, mu = method.fields(model, y, sampler)
        jumped = integrate(v, noise, 5, "euler", endpoint=mu)
    torch.testing.assert_close(jumped, z, rtol=1e-4, atol=2e-4)   # float32 round-off of the division


def test_posterior_entropy_exact_values():
    assert float(posterior_entropy(torch.zeros(1, K), 1.0)) == pytest.approx(math.log(K), rel=1e-6)
    logits = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)]])
    assert float(posterior_entropy(logits, 1.0)) == pytest.approx(1.5 * math.log(2), rel=1e-6)
    # tau = 0.5 squares and renormalises: p ~ (1/4, 1/16, 1/16) -> (2/3, 1/6, 1/6)
    p = torch.tensor([2 / 3, 1 / 6, 1 / 6])
    assert float(posterior_entropy(logits, 0.5)) == pytest.approx(float(-(p * p.log()).sum()), rel=1e-6)
    assert snap_times([0.0, 0.26, 0.5, 1.0], 4) == [0, 1, 2, 3]
    with pytest.raises(PurrError, match=r"\[0, 1\]"):
        snap_times([1.2], 4)


def test_trace_reads_the_sampler_s_own_posterior():
    method = Purrception(_codebook())
    model = _model(method)
    noise = torch.randn(2, D, SIDE, SIDE, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([1, 2])
    tau = parse_schedule("linear:1.3:0.6")
    sampler = SamplerSettings(sample_steps=4, tau=tau, cfg_scale=1.4, solver="heun")
    trace = trace_uncertainty(method, model, noise, y, sampler, _snap(method), [0.0, 0.5], topk=3, position=(1, 2))
    torch.testing.assert_close(trace.codes, method.generate(model, noise, y, sampler, _snap(method)))
    with torch.no_grad():
        at0 = posterior_entropy(method.posterior_logits(model, noise, 0.0, y, 1.4), tau(0.0))
    torch.testing.assert_close(trace.entropy[:, 0], at0)
    assert trace.times == [0.0, 0.5] and trace.final_time == 0.75
    assert torch.all(trace.entropy <= math.log(K) + 1e-5) and torch.all(trace.entropy >= 0)
    # the final posterior's top-k: sorted, distinct, and equal to a direct read at the grid state t = 0.75
    states = {}
    v, mu = method.fields(model, y, sampler)
    with torch.no_grad():
        integrate(v, noise, 4, "heun", endpoint=mu, callback=lambda t, z: states.__setitem__(t, z))
        probs = torch.softmax(method.posterior_logits(model, states[0.75], 0.75, y, 1.4)[:, 1, 2] / tau(0.75), -1)
    p, k = probs.topk(3)
    torch.testing.assert_close(trace.topk_probs, p)
    assert torch.equal(trace.topk_codes, k)


def test_trace_labels_matches_generate_codes_batch_independently():
    method = Purrception(_codebook())
    model = _model(method)
    labels = np.array([0, 1, 2, 0, 1])
    sampler = SamplerSettings(sample_steps=3)
    a = trace_labels(method, model, labels, sampler, seed=7, snap=_snap(method), times=[0.5], batch_size=2)
    b = trace_labels(method, model, labels, sampler, seed=7, snap=_snap(method), times=[0.5], batch_size=5)
    torch.testing.assert_close(a.entropy, b.entropy, rtol=1e-3, atol=1e-4)   # batch-size float round-off
    assert torch.equal(a.codes, generate_codes(method, model, labels, sampler, 7, _snap(method), batch_size=3))


def test_uncertainty_needs_a_posterior_and_valid_arguments():
    cfm = CFM(_codebook())
    noise = torch.randn(1, D, SIDE, SIDE)
    with pytest.raises(PurrError, match="no categorical posterior"):
        trace_uncertainty(cfm, _model(cfm), noise, torch.tensor([0]), SamplerSettings(sample_steps=2), _snap(cfm),
                          [0.5])
    method = Purrception(_codebook())
    model = _model(method)
    with pytest.raises(PurrError, match="outside"):
        trace_uncertainty(method, model, noise, torch.tensor([0]), SamplerSettings(sample_steps=2), _snap(method),
                          [], 2, (SIDE, 0))
    with pytest.raises(PurrError, match="needs a `position`"):
        trace_uncertainty(method, model, noise, torch.tensor([0]), SamplerSettings(sample_steps=2), _snap(method),
                          [], 2)


def test_candidate_codes_and_heatmap():
    codes = torch.arange(2 * 9).view(2, 3, 3)
    out = candidate_codes(codes, (1, 2), torch.tensor([[100, 101], [200, 201]]))
    assert out.shape == (2, 2, 3, 3)
    assert out[1, 0, 1, 2] == 200 and out[0, 1, 1, 2] == 101
    mask = torch.ones(3, 3, dtype=torch.bool)
    mask[1, 2] = False
    assert torch.equal(out[:, :, mask], codes[:, None, mask].expand(2, 2, 8))
    import matplotlib

    heat = entropy_heatmap(np.array([[0.0, 2.0], [1.0, 4.0]]), 2.0, (4, 6))
    cmap = matplotlib.colormaps["magma"]
    assert heat.shape == (4, 6, 3) and heat.dtype == np.uint8
    assert tuple(heat[0, 0]) == tuple((np.array(cmap(0.0)[:3]) * 255).round().astype(np.uint8))
    assert tuple(heat[3, 5]) == tuple(heat[0, 5]) == tuple((np.array(cmap(1.0)[:3]) * 255).round().astype(np.uint8))


# ---------------------------------------------------------------------------------------------------------------
# purr sample
# ---------------------------------------------------------------------------------------------------------------


def _run(argv):
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_purr_sample_end_to_end(tiny_checkpoint, tmp_path):
    out = tmp_path / "a"
    base = [str(tiny_checkpoint), "--classes", "1,3", "--num", "3", "--sample-steps", "3", "--seed", "5",
            "--batch-size", "2"]
    assert main(["sample", *base, "--out", str(out), "--tau", "linear:1.2:0.8", "--solver", "midpoint",
                 "--uncertainty-times", "0.2,0.9", "--topk", "2", "--position", "3,3"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{i:05d}_class{c}{suffix}.png" for i, c in enumerate([1, 1, 3])
                            for suffix in ("", "_top2", "_uncertainty")] + ["grid.png", "samples.npz",
                                                                            "uncertainty.npz"])
    unc = np.load(out / "uncertainty.npz")
    assert unc["entropy"].shape == (3, 2, 7, 7) and list(unc["times"]) == pytest.approx([1 / 3, 2 / 3])
    assert unc["topk_codes"].shape == (3, 2) and np.all(np.diff(unc["topk_probs"], axis=1) <= 0)
    # same seed, no uncertainty: identical images (the traced trajectory is the sampler's own)
    again = tmp_path / "b"
    assert main(["sample", *base, "--out", str(again), "--tau", "linear:1.2:0.8", "--solver", "midpoint"]) == 0
    np.testing.assert_array_equal(np.load(out / "samples.npz")["images"], np.load(again / "samples.npz")["images"])
    with pytest.raises(PurrError, match="not empty"):
        _run(["sample", *base, "--out", str(out)])
    with pytest.raises(PurrError, match="out of range"):
        _run(["sample", str(tiny_checkpoint), "--classes", "99", "--out", str(tmp_path / "c")])
    with pytest.raises(PurrError, match="go together"):
        _run(["sample", *base, "--out", str(tmp_path / "d"), "--topk", "2"])
