"""The embedded data, the small VQ tokenizer and token shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from purrception.data.embedded import load_embedded_mnist
from purrception.data.embedded_shards import encode_array
from purrception.data.shards import TokenShards, check_same_tokenizer, codes_dtype_for
from purrception.errors import PurrError
from purrception.pixels import images_to_tensor
from purrception.tokenizers.base import TokenizerIdentity, nearest_code
from purrception.tokenizers.conv_vq import ConvVQ, ConvVQConfig
from purrception.tokenizers.store import load_tokenizer, save_tokenizer
from purrception.tokenizers.train import evaluate_tokenizer


def test_embedded_split_is_deterministic_stratified_and_disjoint():
    train, held = load_embedded_mnist("train"), load_embedded_mnist("heldout")
    assert len(train) == 4000 and len(held) == 1000
    assert np.bincount(held.labels, minlength=10).tolist() == [100] * 10
    assert np.array_equal(load_embedded_mnist("heldout").images, held.images)
    train_rows = {img.tobytes() for img in train.images}
    overlap = sum(img.tobytes() in train_rows for img in held.images)
    assert overlap <= 5  # MNIST has a few exact duplicates at most
    with pytest.raises(PurrError):
        load_embedded_mnist("test")


def test_nearest_code_matches_brute_force_with_chunks():
    codebook = torch.randn(37, 3)
    z = torch.randn(2, 3, 4, 5)
    brute = ((z.permute(0, 2, 3, 1)[..., None, :] - codebook) ** 2).sum(-1).argmin(-1)
    assert torch.equal(nearest_code(z, codebook, chunk=8), brute)


def test_snap_of_lookup_round_trips_codes_exactly():
    tok = ConvVQ(ConvVQConfig(codebook_size=16, width=8)).eval()
    codes = torch.randint(0, 16, (3, 7, 7))
    assert torch.equal(tok.snap(tok.lookup(codes)), codes)
    assert tok.decode(codes).shape == (3, 1, 28, 28)


def test_trained_tokenizer_round_trips_codes_through_pixels(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    images = load_embedded_mnist("heldout").images[:200]
    codes = encode_array(tok, images)
    assert codes.shape == (200, 7, 7) and codes.min() >= 0 and codes.max() < tok.codebook_size
    with torch.no_grad():
        recon = tok.decode(torch.from_numpy(codes))
        again = tok.encode(recon)
    agreement = (again.numpy() == codes).mean()
    assert agreement > 0.8, agreement  # encode(decode(c)) keeps most codes after only 120 training steps
    metrics = evaluate_tokenizer(tok, images)
    assert 0 < metrics["recon_mse"] < 0.3 and metrics["perplexity"] > 2 and 0 < metrics["codes_used_fraction"] <= 1


def test_tokenizer_save_load_is_exact_and_refuses_garbage(tmp_path, tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    copy = load_tokenizer(save_tokenizer(tok, tmp_path / "copy"))
    x = images_to_tensor(load_embedded_mnist("heldout").images[:4])
    assert torch.equal(copy.encode(x), tok.encode(x))
    assert copy.identity() == tok.identity()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(PurrError, match="not readable JSON"):
        load_tokenizer(tmp_path / "bad")
    with pytest.raises(PurrError, match="not found"):
        load_tokenizer(tmp_path / "missing")


def test_shards_hold_codes_labels_codebook_and_identity(tiny_shards_dir, tiny_tokenizer_dir):
    shards = TokenShards.open(tiny_shards_dir)
    tok = load_tokenizer(tiny_tokenizer_dir)
    assert len(shards) == 4000 and shards.codes.dtype == np.uint8 and shards.latent_shape == (7, 7)
    assert isinstance(shards.codes, np.memmap)
    assert shards.identity == tok.identity()
    np.testing.assert_array_equal(shards.codebook, tok.codebook.numpy())
    other = TokenizerIdentity("small-vq", 32, 4, "0" * 16)
    with pytest.raises(PurrError, match="re-encode"):
        check_same_tokenizer(other, shards.identity, "shards")


def test_codes_dtype_is_smallest_unsigned():
    assert codes_dtype_for(256) == np.uint8
    assert codes_dtype_for(257) == np.uint16
    assert codes_dtype_for(16384) == np.uint16
    assert codes_dtype_for(70000) == np.uint32


def test_load_matching_tokenizer_refuses_another_codebook(tmp_path, tiny_tokenizer_dir):
    from purrception.tokenizers.store import load_matching_tokenizer

    tok = load_tokenizer(tiny_tokenizer_dir)
    assert load_matching_tokenizer(tiny_tokenizer_dir, tok.identity()).identity() == tok.identity()
    other = save_tokenizer(ConvVQ(ConvVQConfig(codebook_size=32, width=8)), tmp_path / "other")
    with pytest.raises(PurrError, match="pass the matching `tokenizer=PATH`"):
        load_matching_tokenizer(other, tok.identity())
