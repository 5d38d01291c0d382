"""Editing with known codes (inpainting, outpainting, variations) for every method: exact answers on random tiny
models, then the pipeline and ``purr edit`` on trained tiny checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from purrception import PurrceptionPipeline, PurrError
from purrception.cli import main
from purrception.data.embedded import load_embedded_mnist
from purrception.flows import get_method
from purrception.flows.dfm import KAPPA_SCHEDULERS
from purrception.flows.known import KnownCodes
from purrception.generation.editing import (
    code_mask,
    edit_codes,
    edit_labels,
    first_step_for,
    keep_mask,
    region_mask,
)
from purrception.generation.generate import generate_codes, noise_for
from purrception.generation.uncertainty import posterior_entropy, trace_edit, trace_edit_labels, trace_uncertainty
from purrception.models.dit import DiT, DiTConfig
from purrception.sampling.settings import SamplerSettings
from purrception.tokenizers.base import nearest_code

K, D, SIDE, CLASSES = 16, 4, 4, 3
ALL_METHODS = ["purrception", "cfm", "cfm-endpoint", "dfm"]
CONTINUOUS = ["purrception", "cfm", "cfm-endpoint"]
SOLVERS = ["euler", "heun", "midpoint"]


def _method(name: str, **options):
    codebook = torch.randn(K, D, generator=torch.Generator().manual_seed(0))
    return get_method(name)(codebook, **({"embed_dim": 8} if name == "dfm" else {}), **options)


def _model(method) -> DiT:
    """A tiny DiT with random weights, so that every output depends on every input."""
    model = DiT(DiTConfig(input_size=SIDE, hidden_size=32, depth=1, num_heads=2, num_classes=CLASSES,
                          **method.backbone_io()))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _snap(method):
    return lambda z: nearest_code(z, method.codebook)


def _sampler(method, solver: str = "euler", steps: int = 5) -> SamplerSettings:
    return SamplerSettings(sample_steps=steps, solver=solver, tau=0.8 if method.has_temperature else 1.0, cfg_scale=1.5)


def _codes(batch: int = 3, seed: int = 4) -> torch.Tensor:
    return torch.randint(0, K, (batch, SIDE, SIDE), generator=torch.Generator().manual_seed(seed))


def _keep(batch: int = 3, seed: int = 5) -> torch.Tensor:
    return torch.rand(batch, SIDE, SIDE, generator=torch.Generator().manual_seed(seed)) < 0.5


def _solvers(name: str) -> list[str]:
    return SOLVERS if name != "dfm" else ["euler"]


CASES = [(name, solver) for name in ALL_METHODS for solver in _solvers(name)]


# ---------------------------------------------------------------------------------------------------------------
# The method hook, every method and solver
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,solver", CASES)
def test_everything_kept_returns_the_input_codes(name, solver):
    method = _method(name)
    model, codes = _model(method), _codes()
    noise, y = torch.randn(3, D, SIDE, SIDE, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2])
    out = method.edit(model, noise, y, _sampler(method, solver), _snap(method),
                      KnownCodes(codes, torch.ones_like(codes, dtype=torch.bool)))
    assert torch.equal(out, codes)


@pytest.mark.parametrize("name,solver", CASES)
def test_nothing_kept_is_ordinary_sampling_with_the_same_noise(name, solver):
    method = _method(name)
    model, codes = _model(method), _codes()
    noise, y = torch.randn(3, D, SIDE, SIDE, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2])
    sampler = _sampler(method, solver)
    out = method.edit(model, noise, y, sampler, _snap(method), KnownCodes(codes, torch.zeros_like(codes, dtype=bool)))
    assert torch.equal(out, method.generate(model, noise, y, sampler, _snap(method)))
    assert not torch.equal(out, codes)


@pytest.mark.parametrize("solver", SOLVERS)
def test_trace_edit_reads_the_editing_posterior(solver):
    """Nothing kept: trace_uncertainty's reading exactly; kept codes: entropy 0 there, the network's posterior at the
    same state elsewhere, and the codes edit makes."""
    method = _method("purrception")
    model, codes, keep = _model(method), _codes(), _keep()
    noise, y = torch.randn(3, D, SIDE, SIDE, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2])
    sampler = SamplerSettings(sample_steps=5, tau=0.7, solver=solver)
    times = (0.0, 0.4, 0.8)
    plain = trace_uncertainty(method, model, noise, y, sampler, _snap(method), times)
    free = trace_edit(method, model, noise, y, sampler, _snap(method), KnownCodes(codes, torch.zeros_like(keep)), times)
    assert torch.equal(free.codes, plain.codes) and torch.equal(free.entropy, plain.entropy)
    assert free.times == plain.times == [0.0, 0.4, 0.8]

    states = {}
    known = KnownCodes(codes, keep)
    edited = method.edit(model, noise, y, sampler, _snap(method), known,
                         callback=lambda t, z: states.setdefault(round(t * 5), z.clone()))
    traced = trace_edit(method, model, noise, y, sampler, _snap(method), known, times)
    assert torch.equal(traced.codes, edited)
    for slot, i in enumerate((0, 2, 4)):
        expected = posterior_entropy(method.posterior_logits(model, states[i], i / 5, y, 1.0), 0.7)
        assert (traced.entropy[:, slot][keep] == 0).all()
        torch.testing.assert_close(traced.entropy[:, slot][~keep], expected[~keep])
    assert (traced.entropy[:, 0][~keep] > 0).all()
    alone = trace_edit_labels(method, model, codes, keep, np.array([0, 1, 2]), sampler, 9, _snap(method), times,
                              batch_size=2)
    assert torch.equal(alone.codes, edit_codes(method, model, codes, keep, np.array([0, 1, 2]), sampler, 9,
                                               _snap(method), batch_size=3))


@pytest.mark.parametrize("name,solver", [c for c in CASES if c[0] != "dfm"])
@pytest.mark.parametrize("first_step", [0, 2])
def test_kept_positions_follow_their_conditional_path_at_every_step(name, solver, first_step):
    """z_t = t E[c] + (1 - t) z0 at the kept positions at every grid time the solver passes (from t_s on)."""
    method, steps = _method(name), 5
    model, codes, keep = _model(method), _codes(), _keep()
    noise, y = torch.randn(3, D, SIDE, SIDE, generator=torch.Generator().manual_seed(3)), torch.tensor([2, 0, 1])
    target = method.codebook[codes].permute(0, 3, 1, 2)
    seen: list[tuple[float, torch.Tensor]] = []
    out = method.edit(model, noise, y, _sampler(method, solver, steps), _snap(method), KnownCodes(codes, keep),
                      first_step, callback=lambda t, z: seen.append((t, z.clone())))
    assert [round(t * steps, 9) for t, _ in seen] == list(range(first_step, steps))
    mask = keep[:, None].expand_as(noise)
    for t, z in seen:
        path = t * target + (1 - t) * noise
        assert torch.allclose(z[mask], path[mask], atol=1e-5, rtol=0), t
        if t == first_step / steps:  # a later start begins on the path everywhere
            assert torch.allclose(z, path, atol=1e-6, rtol=0)
    assert not torch.allclose(seen[-1][1][~mask], (seen[-1][0] * target + (1 - seen[-1][0]) * noise)[~mask])
    assert torch.equal(out[keep], codes[keep])
    assert not torch.equal(out[~keep], codes[~keep])


@pytest.mark.parametrize("scheduler", list(KAPPA_SCHEDULERS))
@pytest.mark.parametrize("first_step", [0, 3])
def test_dfm_kept_tokens_are_present_from_the_start_and_never_change(scheduler, first_step):
    method, steps = _method("dfm", scheduler=scheduler), 6
    model, codes, keep = _model(method), _codes(), _keep()
    noise, y = torch.randn(3, D, SIDE, SIDE, generator=torch.Generator().manual_seed(3)), torch.tensor([2, 0, 1])
    seen: list[tuple[float, torch.Tensor]] = []
    out = method.edit(model, noise, y, _sampler(method, steps=steps), _snap(method), KnownCodes(codes, keep),
                      first_step, callback=lambda t, x: seen.append((t, x.clone())))
    assert [t for t, _ in seen] == [s / steps for s in range(first_step, steps)]
    for _, x in seen:
        assert torch.equal(x[keep], codes[keep])
    start = seen[0][1]
    # at a later start the unkept positions hold the source token iff u = Phi(noise[:, 0]) <= kappa(t_s)
    kappa = KAPPA_SCHEDULERS[scheduler](torch.tensor(first_step / steps, dtype=torch.float64))
    revealed = torch.special.ndtr(noise[:, 0].double()) <= kappa
    assert torch.equal(start[~keep], torch.where(revealed, codes, torch.full_like(codes, K))[~keep])
    assert torch.equal(out[keep], codes[keep]) and int((out == K).sum()) == 0
    assert not torch.equal(out[~keep], codes[~keep])


@pytest.mark.parametrize("name", ALL_METHODS)
def test_strength_one_is_ordinary_sampling_and_strength_near_zero_returns_the_input(name):
    method = _method(name)
    model, codes, sampler = _model(method), _codes(5), _sampler(method, "heun" if name != "dfm" else "euler")
    labels = np.array([0, 1, 2, 1, 0])
    nothing = torch.zeros_like(codes, dtype=torch.bool)
    full = edit_codes(method, model, codes, nothing, labels, sampler, 7, _snap(method),
                      first_step_for(1.0, sampler.sample_steps), batch_size=2)
    assert torch.equal(full, generate_codes(method, model, labels, sampler, 7, _snap(method), batch_size=5))
    near_zero = edit_codes(method, model, codes, nothing, labels, sampler, 7, _snap(method),
                           first_step_for(1e-6, sampler.sample_steps), batch_size=2)
    assert torch.equal(near_zero, codes)
    # in between: a real change that depends only on (seed, k), not on the batch size
    half = edit_codes(method, model, codes, nothing, labels, sampler, 7, _snap(method), 2, batch_size=2)
    assert not torch.equal(half, codes)
    assert torch.equal(half, edit_codes(method, model, codes, nothing, labels, sampler, 7, _snap(method), 2,
                                        batch_size=5))


def test_a_variation_starts_from_the_noised_codes_of_its_own_noise():
    method = _method("purrception")
    model, codes, sampler = _model(method), _codes(2), _sampler(method, steps=4)
    seen: list[tuple[float, torch.Tensor]] = []
    edit_codes(method, model, codes, torch.zeros_like(codes, dtype=torch.bool), np.array([0, 1]), sampler, 3,
               _snap(method), first_step=3, callback=lambda t, z: seen.append((t, z.clone())))
    noise = noise_for([0, 1], 3, (D, SIDE, SIDE))
    assert [t for t, _ in seen] == [0.75]
    assert torch.allclose(seen[0][1], 0.75 * method.codebook[codes].permute(0, 3, 1, 2) + 0.25 * noise, atol=1e-6)


def test_known_codes_must_fit_the_noise():
    method = _method("cfm")
    with pytest.raises(PurrError, match="do not fit noise"):
        method.edit(_model(method), torch.randn(2, D, SIDE, SIDE), torch.tensor([0, 1]), _sampler(method),
                    _snap(method), KnownCodes(_codes(3), _keep(3)))
    with pytest.raises(PurrError, match="boolean"):
        KnownCodes(_codes(3), _keep(3).long())


# ---------------------------------------------------------------------------------------------------------------
# Masks, strengths, labels
# ---------------------------------------------------------------------------------------------------------------


def test_regions_are_the_documented_pixel_sets():
    top = region_mask("top", 7)
    assert top[:3].all() and not top[3:].any()
    assert np.array_equal(region_mask("bottom", 7), ~top)
    assert np.array_equal(region_mask("left", 8), region_mask("top", 8).T)
    assert np.array_equal(region_mask("right", 8), ~region_mask("left", 8))
    centre = region_mask("centre", 8)
    assert centre[2:6, 2:6].all() and centre.sum() == 16 and np.array_equal(region_mask("center", 8), centre)
    box = region_mask("1,2,4,3", 6)
    assert np.array_equal(np.argwhere(box), [[2, 1], [2, 2], [2, 3]])
    assert np.array_equal(region_mask("not:centre", 8), ~centre)
    for bad, message in [("middle", "unknown region"), ("1,2,3", "x0,y0,x1,y1"), ("4,0,2,3", "x0 < x1"),
                         ("0,0,9,3", "<= 8")]:
        with pytest.raises(PurrError, match=message):
            region_mask(bad, 8)


def test_a_code_is_kept_only_if_its_whole_footprint_is_kept():
    pixels = np.ones((8, 8), dtype=bool)
    pixels[5, 2] = False                                 # one pixel of code (2, 1) at F = 2
    expected = np.ones((4, 4), dtype=bool)
    expected[2, 1] = False
    assert np.array_equal(code_mask(pixels, 8, 4), expected)
    assert np.array_equal(code_mask(region_mask("top", 28), 28, 7)[:, 0], [True] * 3 + [False] * 4)  # F = 4
    assert keep_mask(None, 2, 8, 4).shape == (2, 4, 4) and not keep_mask(None, 2, 8, 4).any()
    assert np.array_equal(keep_mask("top", 2, 8, 4)[1], code_mask(region_mask("top", 8), 8, 4))
    with pytest.raises(PurrError, match="the mask is 6x6 pixels but the tokenizer works at 8x8"):
        code_mask(np.ones((6, 6), dtype=bool), 8, 4)
    with pytest.raises(PurrError, match="boolean"):
        keep_mask(np.ones((8, 8)), 1, 8, 4)
    with pytest.raises(PurrError, match="3 masks for 2 images"):
        keep_mask(np.ones((3, 8, 8), dtype=bool), 2, 8, 4)


def test_strength_cuts_the_grid_from_the_end():
    assert [first_step_for(s, 10) for s in (1.0, 0.7, 0.3, 0.29, 0.1, 0.09, 1e-6)] == [0, 3, 7, 8, 9, 10, 10]
    assert first_step_for(None, 10) == 0
    for bad in (0, -0.5, 1.5, "x", math.nan):
        with pytest.raises(PurrError, match="strength"):
            first_step_for(bad, 10)


def test_edit_labels():
    assert edit_labels(None, 2, 10).tolist() == [10, 10]
    assert edit_labels(3, 2, 10).tolist() == [3, 3]
    assert edit_labels([3, None, 10], 3, 10).tolist() == [3, 10, 10]
    with pytest.raises(PurrError, match="2 entries for 3 images"):
        edit_labels([1, 2], 3, 10)
    with pytest.raises(PurrError, match="classes 0..9"):
        edit_labels([11], 1, 10)


# ---------------------------------------------------------------------------------------------------------------
# The pipeline, on a trained tiny checkpoint of every method
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tiny_shards_dir, tiny_tokenizer_dir, tmp_path_factory):
    """A two-step tiny checkpoint of every method on the conftest tokenizer's shards (28x28 images, 7x7 codes)."""
    from conftest import tiny_config

    from purrception.training.loop import train

    root = tmp_path_factory.mktemp("edit-runs")
    return {name: train(tiny_config(method=name, steps=2, ckpt_every=2), tiny_shards_dir, root / name,
                        tokenizer_path=str(tiny_tokenizer_dir), progress=False).checkpoint for name in ALL_METHODS}


@pytest.fixture(scope="module")
def digits():
    return load_embedded_mnist("heldout").images[:3]


@pytest.mark.parametrize("name", ALL_METHODS)
def test_pipeline_editing_every_method(name, checkpoints, digits):
    pipe = PurrceptionPipeline.from_pretrained(checkpoints[name])
    knobs = dict(num_inference_steps=4, seed=3, solver="euler")
    out = pipe.inpaint(digits, "top", class_labels=[1, None, 2], num_per_image=2, batch_size=4, **knobs)
    assert out.labels.tolist() == [1, 1, 10, 10, 2, 2] and out.source_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert out.keep.shape == (6, 7, 7) and out.keep[:, :3].all() and not out.keep[:, 3:].any()
    keep = torch.from_numpy(out.keep)
    assert torch.equal(out.codes[keep], out.source_codes[out.source_index][keep])
    assert out.pixels.shape == (6, 28, 28) and np.array_equal(np.asarray(out.images[5]), out.pixels[5])
    # completion k depends only on (seed, k): regenerate completion 3 (image 1's second) alone
    alone = pipe.inpaint(digits[1:2], "top", num_per_image=1, first_index=3, **knobs)
    assert torch.equal(alone.codes[0], out.codes[3])
    # strength 1 is ordinary sampling; a strength under one grid step returns the images' codes
    full = pipe.variations(digits, 1.0, class_labels=[4, 4, 4], **knobs)
    assert torch.equal(full.codes, pipe(class_labels=[4], num_per_class=3, **knobs).codes)
    still = pipe.variations(digits, 1e-6, class_labels=5, **knobs)
    assert torch.equal(still.codes, still.source_codes) and still.first_step == 4


def test_pipeline_takes_pil_images_masks_and_other_sizes(checkpoints, digits, caplog):
    pipe = PurrceptionPipeline.from_pretrained(checkpoints["purrception"])
    big = [Image.fromarray(d).resize((56, 56), Image.Resampling.NEAREST) for d in digits[:2]]
    with caplog.at_level("INFO", logger="purrception.data.images"):
        out = pipe.inpaint(big, np.asarray(region_mask("not:centre", 28)), num_inference_steps=2)
    assert [r.getMessage() for r in caplog.records].count("resizing 56x56 L images to 28x28 L (shorter side to 28)") \
        == 1
    assert np.array_equal(out.keep[0], code_mask(region_mask("not:centre", 28), 28, 7))
    mask = Image.fromarray(region_mask("left", 28).astype(np.uint8) * 255)
    assert np.array_equal(pipe.inpaint(digits[:1], mask, num_inference_steps=2).keep[0],
                          code_mask(region_mask("left", 28), 28, 7))


@pytest.mark.parametrize("call,message", [
    (lambda p, d: p.inpaint(d, "2,2,5,5"), "`keep` keeps no whole code of image 0 .* all its 4x4 pixels"),
    (lambda p, d: p.inpaint(d, np.ones((14, 14), dtype=bool)), "the mask is 14x14 pixels but the tokenizer works"),
    (lambda p, d: p.inpaint(d[:0], "top"), "`images` is empty"),
    (lambda p, d: p.inpaint(d, "top", num_per_image=0), "`num_per_image` must be a positive integer"),
    (lambda p, d: p.inpaint(d, "top", class_labels=[1, 2]), "`class_labels` has 2 entries for 3 images"),
    (lambda p, d: p.variations(d, 0.0), r"`strength` must be in \(0, 1\]"),
    (lambda p, d: p.variations(d, 0.5, num_inference_steps=0), "`sample_steps` must be a positive integer"),
])
def test_pipeline_editing_refuses_bad_values(checkpoints, digits, call, message):
    with pytest.raises(PurrError, match=message):
        call(PurrceptionPipeline.from_pretrained(checkpoints["purrception"]), digits)


# ---------------------------------------------------------------------------------------------------------------
# purr edit
# ---------------------------------------------------------------------------------------------------------------


def _run(argv: list[str]) -> int:
    return main(["edit", *argv, "--sample-steps", "2"])


def test_purr_edit_a_class_folder_uses_each_images_class(checkpoints, digits, tmp_path):
    labels = load_embedded_mnist("heldout").labels[:3]
    for i, (image, label) in enumerate(zip(digits, labels)):
        (tmp_path / "in" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "in" / str(label) / f"{i}.png")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    assert _run([str(checkpoints["cfm"]), "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--keep", "left", "--num-per-image", "2", "--seed", "4"]) == 0
    data = np.load(tmp_path / "out" / "samples.npz")
    order = np.argsort([str(v) for v in labels], kind="stable")  # folders are read in name order
    assert data["labels"].tolist() == np.repeat(labels[order], 2).tolist()
    assert data["source_index"].tolist() == [0, 0, 1, 1, 2, 2]
    assert data["images"].shape == (6, 28, 28) and data["keep"].shape == (6, 7, 7)
    assert data["keep"][:, :, :3].all() and not data["keep"][:, :, 3:].any()
    pngs = sorted(p.name for p in (tmp_path / "out").glob("0*.png"))
    assert pngs[0] == f"00000_src00000_class{labels[order][0]}.png" and len(pngs) == 6
    grid = np.asarray(Image.open(tmp_path / "out" / "grid.png"))
    assert grid.shape == (2 * (3 * 30 + 2), 2 * (4 * 30 + 2))        # 3 rows of source | mask | 2 completions, 2x
    # the same completions through the pipeline, class by class
    pipe = PurrceptionPipeline.from_pretrained(checkpoints["cfm"])
    again = pipe.inpaint(digits[order], "left", class_labels=labels[order].tolist(), num_per_image=2,
                         num_inference_steps=2, seed=4)
    assert np.array_equal(again.pixels, data["images"])


def test_purr_edit_one_image_and_an_npz(checkpoints, digits, tmp_path):
    Image.fromarray(digits[0]).resize((56, 56)).save(tmp_path / "one.png")
    assert _run([str(checkpoints["dfm"]), "--input", str(tmp_path / "one.png"), "--out", str(tmp_path / "a"),
                 "--strength", "0.5", "--classes", "7"]) == 0
    one = np.load(tmp_path / "a" / "samples.npz")
    assert one["labels"].tolist() == [7] and not one["keep"].any() and (tmp_path / "a" / "00000_src00000_class7.png"
                                                                        ).is_file()
    np.savez(tmp_path / "in.npz", images=digits, labels=np.array([3, -1, 5]))
    assert _run([str(checkpoints["purrception"]), "--input", str(tmp_path / "in.npz"), "--out", str(tmp_path / "b"),
                 "--keep", "not:centre", "--cfg-scale", "1.5"]) == 0
    data = np.load(tmp_path / "b" / "samples.npz")
    assert data["labels"].tolist() == [3, 10, 5] and (tmp_path / "b" / "00001_src00001_classnone.png").is_file()
    Image.fromarray(region_mask("right", 28).astype(np.uint8) * 255).save(tmp_path / "mask.png")
    assert _run([str(checkpoints["cfm-endpoint"]), "--input", str(tmp_path / "in.npz"), "--out",
                 str(tmp_path / "c"), "--mask", str(tmp_path / "mask.png"), "--classes", "none"]) == 0
    data = np.load(tmp_path / "c" / "samples.npz")
    assert data["labels"].tolist() == [10, 10, 10]
    assert np.array_equal(data["keep"][0], code_mask(region_mask("right", 28), 28, 7))


@pytest.mark.parametrize("args,message", [
    (["--keep", "2,2,5,5"], "--keep keeps no whole code of image 0"),
    (["--mask", "MASK14"], "the mask is 14x14 pixels but the tokenizer works at 28x28"),
    (["--mask", "nope.png"], "--mask nope.png not found"),
    ([], "say what to do: --keep REGION or --mask MASK.png"),
    (["--keep", "middle"], "unknown region 'middle'"),
    (["--keep", "top", "--classes", "1,2"], "--classes gives 2 classes for 3 images"),
    (["--keep", "top", "--classes", "12"], "this model knows classes 0..9"),
    (["--keep", "top", "--input", "EMPTY"], "holds no images"),
    (["--keep", "top", "--input", "EMPTYNPZ"], "holds no images"),
    (["--keep", "top", "--out", "FULL"], "exists and is not an empty folder"),
])
def test_purr_edit_bad_input_is_one_line(checkpoints, digits, tmp_path, capsys, args, message):
    np.savez(tmp_path / "in.npz", images=digits)
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 28, 28), dtype=np.uint8))
    Image.fromarray(np.full((14, 14), 255, dtype=np.uint8)).save(tmp_path / "m14.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    swap = {"MASK14": str(tmp_path / "m14.png"), "EMPTY": str(tmp_path / "empty"),
            "EMPTYNPZ": str(tmp_path / "empty.npz"), "FULL": str(tmp_path / "full")}
    args = [swap.get(a, a) for a in args]
    base = ["--input", str(tmp_path / "in.npz"), "--out", str(tmp_path / "out")]
    assert _run([str(checkpoints["purrception"]), *base, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_readme_edit_commands_parse():
    import shlex
    from pathlib import Path

    from purrception.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = [line.split("#")[0] for line in readme.splitlines() if line.startswith("purr edit ")]
    assert len(lines) == 4
    for line in lines:
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert args.command == "edit" and args.input and args.out
