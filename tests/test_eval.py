"""Evaluation: FID math, reference caching, the embedded protocol, the FID Inception module, `purr eval` (also
under torchrun with 2 gloo processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from purrception.cli import main
from purrception.data.embedded import load_embedded_mnist
from purrception.distributed import contiguous_slice
from purrception.errors import PurrError
from purrception.evaluation.evaluate import save_adm_npz
from purrception.evaluation.extractors import DigitFeatures
from purrception.evaluation.fid import (
    FeatureStats,
    feature_stats,
    fid_from_features,
    frechet_distance,
    load_or_compute_reference,
)
from purrception.evaluation.inception import FIDInceptionV3, load_fid_inception, resize_bilinear_tf1
from purrception.evaluation.metrics import class_accuracy, inception_score, precision_recall
from purrception.evaluation.references import ImageFolderReference, open_reference, to_channels
from purrception.sampling.schedules import Schedule, parse_schedule


# ---- FID math ---------------------------------------------------------------------------------------------------
def test_fid_of_a_set_with_itself_is_zero_and_a_shift_adds_its_squared_norm():
    x = np.random.default_rng(0).normal(size=(400, 12)) @ np.random.default_rng(1).normal(size=(12, 12))
    assert abs(fid_from_features(x, x)) < 1e-8
    shift = np.linspace(0.1, 1.0, 12)
    # same covariance: the trace terms cancel and FID = ||shift||^2 exactly
    assert fid_from_features(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-8)
    assert fid_from_features(x, x + 2 * shift) > fid_from_features(x, x + shift)


def test_fid_closed_form_for_diagonal_covariances():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    fid = frechet_distance(FeatureStats(mu1, np.diag(s1), 10), FeatureStats(mu2, np.diag(s2), 10))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)  # = 7.25 + 4 + 1 + 0
    assert fid == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(12.25)


def test_fid_matches_scipy_sqrtm_on_full_covariances():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8)) + 0.3
    sa, sb = feature_stats(a), feature_stats(b)
    np.testing.assert_allclose(sa.mu, a.mean(0))
    np.testing.assert_allclose(sa.sigma, np.cov(a, rowvar=False, ddof=1))
    covmean = scipy.linalg.sqrtm(sa.sigma @ sb.sigma).real
    expected = np.sum((sa.mu - sb.mu) ** 2) + np.trace(sa.sigma) + np.trace(sb.sigma) - 2 * np.trace(covmean)
    assert frechet_distance(sa, sb) == pytest.approx(expected, rel=1e-9)


def test_reference_statistics_are_computed_once_then_read_from_the_cache(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.random.default_rng(0).normal(size=(50, 4)), {"source": {"kind": "test"}}

    first = load_or_compute_reference(tmp_path, "src0", "ext0", compute)
    second = load_or_compute_reference(tmp_path, "src0", "ext0", compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.stats.sigma, second.stats.sigma)
    np.testing.assert_array_equal(first.features, second.features)
    assert second.info["source_fingerprint"] == "src0" and second.info["extractor_fingerprint"] == "ext0"
    load_or_compute_reference(tmp_path, "src0", "ext1", compute)  # another extractor: another cache entry
    assert len(calls) == 2


# ---- other metrics ----------------------------------------------------------------------------------------------
def test_inception_score_exact_values():
    assert inception_score(np.zeros((20, 5)), splits=2) == pytest.approx((1.0, 0.0))
    confident = np.tile(60.0 * np.eye(10), (1, 1))  # 10 samples, each sure of a different class
    mean, std = inception_score(confident, splits=1)
    assert mean == pytest.approx(10.0, rel=1e-6) and std == 0.0


def test_precision_recall_on_hand_built_sets():
    real = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    assert precision_recall(real, real, k=1) == (1.0, 1.0)
    # k=1 radii of real: 1 everywhere; fake points at 0.5 (inside) and 10 (outside): precision 1/2.
    # fake's own radius is 9.5, so every real point is within reach of the fake at 0.5: recall 1.
    fake = np.array([[0.5], [10.0]])
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    assert precision_recall(real, real + 100.0, k=1) == (0.0, 0.0)
    assert class_accuracy(np.array([1, 2, 3, 3]), np.array([1, 2, 3, 0])) == 0.75


def test_contiguous_slices_cover_every_index_once():
    for total in (0, 1, 7, 40, 1001):
        for world in (1, 2, 3, 8):
            got = [i for r in range(world) for i in contiguous_slice(total, r, world)]
            assert got == list(range(total))


def test_adm_npz_export_is_uint8_nhwc_rgb(tmp_path):
    grey = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    save_adm_npz(tmp_path / "s.npz", grey, np.array([3, 1]))
    with np.load(tmp_path / "s.npz") as data:
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (2, 4, 4, 3)
        np.testing.assert_array_equal(data["arr_0"][..., 1], grey)
        np.testing.assert_array_equal(data["arr_1"], [3, 1])
    ref = open_reference(str(tmp_path / "s.npz"))
    assert len(ref) == 2 and next(ref.batches(8, 1)).shape == (2, 4, 4)
    np.testing.assert_array_equal(to_channels(to_channels(grey, 3), 1), grey)


def test_transparent_reference_images_read_on_white_as_encode_reads_them(tmp_path):
    from PIL import Image

    Image.new("RGBA", (6, 6), (0, 0, 0, 0)).save(tmp_path / "clear.png")  # transparent black: white, not black
    Image.new("RGBA", (6, 6), (10, 20, 30, 255)).save(tmp_path / "opaque.png")
    rgb = np.concatenate(list(open_reference(str(tmp_path)).batches(2, 3)))
    assert (rgb[0] == 255).all() and (rgb[1] == [10, 20, 30]).all()


def test_tif_gif_and_ppm_folders_are_non_empty_fid_references(tmp_path):
    from PIL import Image

    grey = np.arange(3 * 6 * 6, dtype=np.uint8).reshape(3, 6, 6) * 2
    for image, suffix in zip(grey, (".tif", ".gif", ".ppm")):
        Image.fromarray(image).convert("RGB").save(tmp_path / f"img{suffix}")
    ref = open_reference(str(tmp_path))
    assert isinstance(ref, ImageFolderReference) and len(ref) == 3
    assert sorted(p.suffix for p in ref.files) == [".gif", ".ppm", ".tif"]
    batch = np.concatenate(list(ref.batches(2, 1)))
    by_suffix = dict(zip((p.suffix for p in ref.files), batch))
    for image, suffix in zip(grey, (".tif", ".gif", ".ppm")):
        np.testing.assert_array_equal(by_suffix[suffix], image)


# ---- the embedded protocol --------------------------------------------------------------------------------------
@pytest.fixture
def digit_features():
    """The cached digit classifier (trained once per session in the isolated PURR_CACHE of conftest)."""
    return DigitFeatures(Path(os.environ["PURR_CACHE"]))


def test_embedded_fid_is_small_for_real_digits_and_grows_when_they_are_degraded(digit_features):
    train = digit_features.extract(load_embedded_mnist("train").images).features
    heldout_images = load_embedded_mnist("heldout").images
    rng = np.random.default_rng(0)
    noisy = np.clip(heldout_images + rng.normal(0, 60, heldout_images.shape), 0, 255).astype(np.uint8)
    padded = np.pad(heldout_images.astype(np.float64), ((0, 0), (1, 1), (1, 1)), mode="edge")
    blurred = sum(padded[:, dy : dy + 28, dx : dx + 28] for dy in range(3) for dx in range(3)) / 9
    fid_real = fid_from_features(digit_features.extract(heldout_images).features, train)
    fid_noisy = fid_from_features(digit_features.extract(noisy).features, train)
    fid_blur = fid_from_features(digit_features.extract(np.round(blurred).astype(np.uint8)).features, train)
    assert fid_real < 0.2 * min(fid_noisy, fid_blur), (fid_real, fid_noisy, fid_blur)


# ---- the FID Inception module -----------------------------------------------------------------------------------
def test_tf1_bilinear_resize_hand_values():
    x = torch.tensor([[0.0, 10.0], [20.0, 30.0]])[None, None]
    expected = torch.tensor([[0, 5, 10, 10], [10, 15, 20, 20], [20, 25, 30, 30], [20, 25, 30, 30]], dtype=torch.float32)
    torch.testing.assert_close(resize_bilinear_tf1(x, 4)[0, 0], expected)
    y = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(resize_bilinear_tf1(y, 2)[0, 0], torch.tensor([[0.0, 2.0], [8.0, 10.0]]))


def test_inception_state_dict_round_trips_strictly_and_wrong_files_are_refused(tmp_path):
    torch.manual_seed(0)
    model = FIDInceptionV3()
    state = model.state_dict()
    # torch-fidelity's converter maps 94 TF convolutions (conv weight + 4 batch-norm tensors each) and the fc layer
    assert len(state) == 94 * 5 + 2
    assert state["fc.weight"].shape == (1008, 2048)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert not any("num_batches_tracked" in k for k in state)
    for key, v in state.items():  # non-trivial batch-norm statistics (convs keep their random init)
        if ".bn." in key:
            v.copy_(torch.rand_like(v) * 0.1 + (0.0 if key.endswith(("running_mean", "bias")) else 0.95))
    torch.save(state, tmp_path / "inception.pth")
    loaded, digest = load_fid_inception(tmp_path / "inception.pth")
    assert len(digest) == 64
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    image = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8)
    with torch.no_grad():
        f, logits = loaded(image)
    assert f.shape == (1, 2048) and logits.shape == (1, 1008)
    assert torch.isfinite(logits).all() and f.abs().sum() > 0
    tiny = torch.zeros(1)  # small stand-ins: the loader checks keys and shapes before loading anything
    torch.save({k.replace("Mixed_5b", "Mixed_5x"): tiny for k in state}, tmp_path / "renamed.pth")
    with pytest.raises(PurrError, match="missing keys"):
        load_fid_inception(tmp_path / "renamed.pth")
    torch.save({k: tiny for k in state}, tmp_path / "reshaped.pth")
    with pytest.raises(PurrError, match="wrong shapes"):
        load_fid_inception(tmp_path / "reshaped.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(PurrError, match="not a state dict"):
        load_fid_inception(tmp_path / "list.pth")
    with pytest.raises(PurrError, match="not found"):
        load_fid_inception(tmp_path / "absent.pth")


# ---- purr eval --------------------------------------------------------------------------------------------------
def _eval_args(ckpt: Path, out: Path, cache: Path) -> list[str]:
    return ["eval", str(ckpt), "-n", "30", "--sample-steps", "2", "--batch-size", "5", "--tau", "0.9", "--seed", "7",
            "--fid-subsets", "20", "--cache-dir", str(cache), "--device", "cpu", "--out", str(out)]


def test_purr_eval_single_and_two_gloo_processes_agree(tiny_checkpoint, tmp_path, digit_features, capsys):
    cache = Path(os.environ["PURR_CACHE"])
    out1 = tmp_path / "one.json"
    assert main([*_eval_args(tiny_checkpoint, out1, cache), "--export-npz", str(tmp_path / "s.npz")]) == 0
    table = capsys.readouterr().out
    assert "FID" in table and "class accuracy" in table
    one = json.loads(out1.read_text())
    assert one["sampling"]["num_samples"] == 30 and one["sampling"]["tau"] == 0.9 and one["sampling"]["seed"] == 7
    assert one["checkpoint"]["step"] == 4 and len(one["checkpoint"]["sha256"]) == 16
    assert one["reference"]["spec"] == "digits:train" and one["reference"]["count"] == 4000
    assert one["feature_extractor"]["fingerprint"] == digit_features.fingerprint()
    assert set(one["metrics"]) >= {"fid", "fid_first_20", "precision", "recall", "class_accuracy"}
    with np.load(tmp_path / "s.npz") as data:
        assert data["arr_0"].shape == (30, 28, 28, 3) and data["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(data["arr_1"], np.arange(30) % 10)

    out2 = tmp_path / "two.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "purrception", *_eval_args(tiny_checkpoint, out2, cache)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads(out2.read_text())
    assert two["distributed"]["world_size"] == 2 and two["sampling"]["num_samples"] == 30
    # the samples are the same images; the feature sums run in another order with another thread count per process
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_purr_eval_refuses_bad_requests(tiny_checkpoint, tmp_path, capsys):
    cache = Path(os.environ["PURR_CACHE"])
    args = _eval_args(tiny_checkpoint, tmp_path / "x.json", cache)
    assert main([*args, "--protocol", "inception"]) == 2
    assert "no default reference" in capsys.readouterr().err
    assert main([*args, "--protocol", "inception", "--reference", "digits:heldout"]) == 2
    assert "--inception" in capsys.readouterr().err
    assert main([*args, "--inception", str(tmp_path / "w.pth")]) == 2  # digits protocol does not read it
    assert "not used by the digits protocol" in capsys.readouterr().err
    assert main([*args, "--method", "cfm"]) == 2
    assert "trained with method" in capsys.readouterr().err
    assert main([*args, "--fid-subsets", "31"]) == 2
    assert not (tmp_path / "x.json").exists()


def test_purr_eval_records_tau_and_cfg_schedules_by_their_spec(tiny_checkpoint, tmp_path, capsys):
    cache = Path(os.environ["PURR_CACHE"])
    out = tmp_path / "sched.json"
    args = ["eval", str(tiny_checkpoint), "-n", "10", "--sample-steps", "2", "--batch-size", "10",
            "--no-precision-recall", "--tau", "linear:0.5:1.0", "--cfg-scale", "cosine:1:1.5",
            "--cache-dir", str(cache), "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    assert "sample_steps=2 tau=linear:0.5:1 cfg=cosine:1:1.5" in capsys.readouterr().out
    report = json.loads(out.read_text())
    for where in (report["sampling"], report["command"]):
        assert where["tau"] == "linear:0.5:1" and where["cfg_scale"] == "cosine:1:1.5"
        assert where["sample_steps"] == 2 and "steps" not in where
        assert parse_schedule(where["tau"]) == Schedule("linear", 0.5, 1.0)
