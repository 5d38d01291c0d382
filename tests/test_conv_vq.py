"""The generic convolutional VQ tokenizer: shapes for every factor, checks, resumable training, legacy folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from purrception.errors import PurrError
from purrception.tokenizers import train as train_module
from purrception.tokenizers.conv_vq import ConvVQ, ConvVQConfig
from purrception.tokenizers.store import CONFIG_NAME, load_tokenizer, save_tokenizer
from purrception.tokenizers.train import WORK_DIR, TokenizerTrainConfig, fit_tokenizer, train_tokenizer


@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("size,channels", [(16, 3), (32, 1)])
def test_code_grid_is_resolution_over_factor_and_decodes_back_to_the_image_shape(factor, size, channels):
    tok = ConvVQ(ConvVQConfig(image_size=size, image_channels=channels, downsample=factor, codebook_size=64,
                              width=8)).eval()
    x = torch.rand(2, channels, size, size) * 2 - 1
    codes = tok.encode(x)
    assert codes.shape == (2, size // factor, size // factor) and tok.latent_shape == codes.shape[1:]
    assert tok.decode(codes).shape == x.shape
    assert torch.equal(tok.snap(tok.lookup(codes)), codes)


def test_the_digits_preset_keeps_the_layout_of_the_earlier_small_tokenizer():
    """The defaults (F=4) build the module layout the embedded tokenizer always had, so its weights still load."""
    keys = set(ConvVQ(ConvVQConfig()).state_dict())
    assert {"encoder.0.weight", "encoder.2.weight", "encoder.3.body.2.weight", "encoder.4.weight",
            "encoder.8.weight", "decoder.0.weight", "decoder.2.weight", "decoder.4.weight",
            "decoder.6.weight", "quantizer.embedding"} <= keys
    assert not any(k.startswith(("encoder.9", "decoder.7")) for k in keys)


@pytest.mark.parametrize("change,message", [
    (dict(downsample=3), "downsampling factor must be one of"),
    (dict(image_size=30, downsample=4), "not a multiple of the downsampling factor 4"),
    (dict(image_size=8, downsample=2), "resolution must lie in"),
    (dict(image_size=512), "resolution must lie in"),
    (dict(codebook_size=16385), "codebook size must lie in"),
    (dict(image_channels=4), "1 \\(grey\\) or 3 \\(RGB\\)"),
])
def test_impossible_architectures_are_refused_in_one_line(change, message):
    with pytest.raises(PurrError, match=message):
        ConvVQ(ConvVQConfig(**change))


def _images(n=48, size=16, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def _die_after(save, at_step):
    """``save``, then a kill right after the state of ``at_step`` reached the disk."""
    def wrapped(path, plan, step, *args):
        save(path, plan, step, *args)
        if step == at_step:
            raise KeyboardInterrupt
    return wrapped


def _small():
    return ConvVQConfig(image_size=16, image_channels=3, downsample=4, codebook_size=32, width=8)


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    images, heldout = _images(), _images(8, seed=1)
    recipe = TokenizerTrainConfig(steps=6, batch_size=8, checkpoint_every=2)
    whole = load_tokenizer(fit_tokenizer(images, heldout, tmp_path / "whole", _small(), recipe, progress=False))

    monkeypatch.setattr(train_module, "_save", _die_after(train_module._save, 4))
    with pytest.raises(KeyboardInterrupt):
        fit_tokenizer(images, heldout, tmp_path / "killed", _small(), recipe, progress=False)
    assert (tmp_path / "killed" / WORK_DIR).is_dir() and not (tmp_path / "killed" / CONFIG_NAME).exists()
    monkeypatch.undo()
    resumed = load_tokenizer(fit_tokenizer(images, heldout, tmp_path / "killed", _small(), recipe, progress=False))
    assert not (tmp_path / "killed" / WORK_DIR).exists()
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_resuming_with_other_settings_or_over_a_finished_or_foreign_folder_is_refused(tmp_path, monkeypatch):
    images = _images()
    recipe = TokenizerTrainConfig(steps=4, batch_size=8, checkpoint_every=2)
    monkeypatch.setattr(train_module, "_save", _die_after(train_module._save, 2))
    with pytest.raises(KeyboardInterrupt):
        fit_tokenizer(images, images[:4], tmp_path / "run", _small(), recipe, progress=False)
    monkeypatch.undo()
    with pytest.raises(PurrError, match="unfinished tokenizer run with other train"):
        fit_tokenizer(images, images[:4], tmp_path / "run", _small(),
                      TokenizerTrainConfig(steps=4, batch_size=8, checkpoint_every=2, lr=1e-3), progress=False)
    done = fit_tokenizer(images, images[:4], tmp_path / "done", _small(), recipe, progress=False)
    with pytest.raises(PurrError, match="already holds a trained tokenizer"):
        fit_tokenizer(images, images[:4], done, _small(), recipe, progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(PurrError, match="not an unfinished tokenizer run"):
        fit_tokenizer(images, images[:4], tmp_path / "mine", _small(), recipe, progress=False)
    assert (tmp_path / "mine" / "holiday.jpg").read_bytes() == b"x"


def test_metrics_in_config_json_include_psnr_usage_and_where_they_were_measured(tmp_path):
    images = _images()
    out = fit_tokenizer(images, images[:0], tmp_path / "t", _small(),
                        TokenizerTrainConfig(steps=2, batch_size=8), record={"type": "test"}, progress=False)
    metrics = json.loads((out / CONFIG_NAME).read_text())["metrics"]
    assert "heldout" not in metrics and metrics["train"]["num_images"] == len(images)  # no held-out images
    m = metrics["train"]
    assert m["psnr_db"] == pytest.approx(10 * np.log10(4 / m["recon_mse"]))
    assert 0 < m["codes_used_fraction"] <= 1 and 1 <= m["perplexity"] <= 32
    assert metrics["training"]["steps"] == 2 and metrics["data"] == {"type": "test"}


def test_wrongly_shaped_training_images_are_refused():
    with pytest.raises(PurrError, match="takes 16x16 with 3 channel"):
        train_tokenizer(_images(size=8), _small(), TokenizerTrainConfig(steps=1), progress=False)


def test_a_folder_saved_under_the_old_kind_name_loads_and_keeps_its_identity(tmp_path):
    folder = save_tokenizer(ConvVQ(ConvVQConfig(codebook_size=16, width=8)), tmp_path / "old")
    meta = json.loads((folder / CONFIG_NAME).read_text())
    meta["kind"] = "small-vq"
    del meta["config"]["downsample"]  # written before the factor was configurable
    (folder / CONFIG_NAME).write_text(json.dumps(meta))
    tok = load_tokenizer(folder)
    assert isinstance(tok, ConvVQ) and tok.identity().kind == "small-vq" and tok.downsample == 4


@pytest.mark.parametrize("l2_normalize", [True, False])
def test_the_lookup_is_on_the_sphere_or_euclidean_and_survives_a_save(tmp_path, l2_normalize):
    config = ConvVQConfig(image_size=16, image_channels=3, codebook_size=16, width=8, l2_normalize=l2_normalize)
    tok = train_tokenizer(_images(), config, TokenizerTrainConfig(steps=3, batch_size=8), progress=False).eval()
    norms = tok.codebook.norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, 2.0), atol=1e-5) == l2_normalize  # radius sqrt(d), d = 4
    x = torch.from_numpy(_images()[:2]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z = tok.encoder(x)
        if l2_normalize:
            z = 2.0 * z / z.norm(dim=1, keepdim=True)
        expected = ((z.permute(0, 2, 3, 1)[..., None, :] - tok.codebook) ** 2).sum(-1).argmin(-1)
        assert torch.equal(tok.encode(x), expected)
        loaded = load_tokenizer(save_tokenizer(tok, tmp_path / "tok"))
        assert loaded.config.l2_normalize == l2_normalize and torch.equal(loaded.encode(x), expected)
