"""Hashing in one place: the digests stay byte-identical to those earlier versions wrote into caches, manifests,
checkpoint identities and reports. The expected hex strings below were computed once with the code as it was
before the helpers moved into ``purrception.hashing``; a change here orphans every user's cache."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from purrception.data.images import embedded_source, folder_source
from purrception.evaluation.classifier import _cache_key
from purrception.evaluation.references import EmbeddedReference, ImageFolderReference
from purrception.hashing import sha256_file, sha256_lines, sha256_module, sha256_parts, sha256_tensor
from purrception.io import sha256_of_tensor
from purrception.tokenizers.recipe import _key


def test_tensor_and_file_digests_are_pinned(tmp_path):
    t = torch.arange(12, dtype=torch.float64).reshape(3, 4) / 7
    assert sha256_tensor(t) == sha256_of_tensor(t) == "c1c96ee6af0f0156"
    # float16, transposed (non-contiguous): hashed as its float32 values in C order
    assert sha256_tensor(t.half().t(), length=64) == "ac993d029786cbc3a348e3530e2f5a7cd97bcaf0d81ca0c391903f5b2be9cd4b"
    (tmp_path / "blob.bin").write_bytes(b"purrception\n" * 100_000)
    full = "b0475629feb4a545a7de2d34d1be30572004e5d365398799dc870595b74ffe4c"
    assert sha256_file(tmp_path / "blob.bin") == sha256_file(tmp_path / "blob.bin", chunk=1000) == full
    assert sha256_file(tmp_path / "blob.bin", length=16) == full[:16]


def test_module_and_line_digests_are_pinned():
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(6.0).reshape(2, 3) / 3)
        lin.bias.copy_(torch.tensor([0.5, -1.0]))
    assert sha256_module(lin, "extra-v1") == "abb3e85e8d30e399"
    assert sha256_module(lin) == "1112c490d3963310"
    assert sha256_lines(["a.png\t0\t12", "b/c.png\t1\t34", "ü.png\t2\t5"], length=16) == "8ffaf469308ef32d"
    assert _key([{"b": [1, 2], "a": 1.5}, {"c": None}]) == "2b0e5dd948a7"  # cache folder of the embedded tokenizer


def test_parts_are_the_digest_of_their_concatenation():
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    expected = hashlib.sha256(b"x" + "é".encode() + a.T.tobytes()).hexdigest()
    assert sha256_parts(b"x", "é", a.T) == expected and sha256_parts(b"x", "é", a.T, length=7) == expected[:7]
    assert sha256_lines(["a", "b"], prefix=b"p") == sha256_parts(b"pa\nb\n")
    with pytest.raises(TypeError, match="cannot hash a int"):
        sha256_parts(3)


def test_image_folder_and_embedded_fingerprints_are_pinned(tmp_path):
    root = tmp_path / "imgs"
    for cls, names in {"cat": ["1.png", "2.tif"], "dog": ["x/3.jpg"]}.items():
        for i, name in enumerate(names):
            path = root / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\0" * (10 + 7 * i + len(cls)))  # listings hash names and sizes only
    assert folder_source(root).description["fingerprint"] == "a9db52a83c8a3c61"  # shard manifests
    assert ImageFolderReference(str(root)).fingerprint() == "b666df7ac4d29088"  # FID reference caches
    assert embedded_source("heldout").description["fingerprint"] == "43b5306bfa0f57c2"
    assert EmbeddedReference("digits:heldout").fingerprint() == "30a88f6c30c37d4f"
    assert EmbeddedReference("embedded:heldout").fingerprint() == "30a88f6c30c37d4f"  # the older spelling
    # the digit classifier's cache folder (changes, as it should, when its recipe version changes)
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 4), dtype=np.uint8)
    assert _cache_key(np.arange(5, dtype=np.int64), images) == "d15aae5256fc"


def test_token_shard_reference_and_codebook_digests_are_pinned(tmp_path):
    from purrception.data.embedded_shards import write_embedded_shards
    from purrception.evaluation.references import ShardReference
    from purrception.tokenizers.conv_vq import ConvVQ, ConvVQConfig

    tok = ConvVQ(ConvVQConfig(codebook_size=32, width=8)).eval()
    with torch.no_grad():  # fixed weights and buffers: the digests depend on nothing random
        for i, p in enumerate(tok.parameters()):
            p.copy_(torch.linspace(-1, 1, p.numel()).reshape(p.shape) * (i + 1) / 10)
        for b in tok.buffers():
            if b.is_floating_point():
                b.copy_(torch.linspace(-2, 2, b.numel()).reshape(b.shape))
    assert tok.identity().codebook_sha256 == "ed7c2e4b564acd53"
    write_embedded_shards(tok, "heldout", tmp_path / "s", "/nowhere")
    # manifest bytes + labels + the tokenizer's weights (changes, as it should, with the manifest format)
    # (was cd376722201943e6 while the kind was named "small-vq": the kind is in the manifest)
    assert ShardReference(str(tmp_path / "s"), tok).fingerprint() == "a84ce0d5adccfde1"
