"""Hostile files the library reads: pickled object arrays in ``.npz``, a tokenizer folder pointing at weights
elsewhere, shards whose manifest lies, checkpoints with weights missing or extra."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file


class _Payload:
    """Pickled inside an object array: unpickling it would create ``self.path``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def _evil_npz(path: Path, sentinel: Path, key: str) -> Path:
    np.savez(path, **{key: np.array([_Payload(sentinel)], dtype=object)}, allow_pickle=True)
    return path


@pytest.mark.parametrize("command", ["tokenizer encode", "tokenizer decode", "edit"])
def test_an_npz_with_pickled_object_arrays_is_refused_and_its_payload_never_runs(command, purr, tokenizer_dir,
                                                                                 checkpoint, tmp_path):
    sentinel = tmp_path / "payload-ran"
    key = "codes" if command == "tokenizer decode" else "images"
    evil = _evil_npz(tmp_path / "evil.npz", sentinel, key)
    out = tmp_path / "out"
    argv = {"tokenizer encode": ["tokenizer", "encode", "--tokenizer", tokenizer_dir, "--images", evil, "--out",
                                 out / "codes.npz"],
            "tokenizer decode": ["tokenizer", "decode", "--tokenizer", tokenizer_dir, "--input", evil, "--out",
                                 out / "images.npz"],
            "edit": ["edit", checkpoint, "--input", evil, "--out", out, "--keep", "top"]}[command]
    result = purr(argv)
    assert "allow_pickle" in result.message or "object" in result.message.lower(), result.message
    assert not sentinel.exists() and not out.exists()


def test_a_tokenizer_folder_never_reads_weights_its_config_names_elsewhere(purr, tokenizer_dir, tmp_path):
    elsewhere = tmp_path / "x.safetensors"
    shutil.copy(tokenizer_dir / "model.safetensors", elsewhere)   # valid weights: reading them would succeed
    tok = tmp_path / "a" / "b" / "tok"
    shutil.copytree(tokenizer_dir, tok)
    (tok / "model.safetensors").unlink()
    meta = json.loads((tok / "config.json").read_text())
    meta.update(weights="../../../x.safetensors", weights_path=str(elsewhere), model="/etc/passwd")
    (tok / "config.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    result = purr(["encode", "--tokenizer", tok, "--embedded", "heldout", "--out", out, "--no-progress"])
    assert result.message == f"purr: error: tokenizer weights missing: {tok / 'model.safetensors'}"
    assert not out.exists()


def test_a_tokenizer_folder_whose_weights_link_out_of_it_is_refused(purr, tokenizer_dir, tmp_path):
    elsewhere = tmp_path / "x.safetensors"
    shutil.copy(tokenizer_dir / "model.safetensors", elsewhere)
    tok = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, tok)
    (tok / "model.safetensors").unlink()
    (tok / "model.safetensors").symlink_to(elsewhere)
    result = purr(["encode", "--tokenizer", tok, "--embedded", "heldout", "--out", tmp_path / "out", "--no-progress"])
    assert "outside" in result.message and "model.safetensors" in result.message, result.message
    assert not (tmp_path / "out").exists()


def _lying_copy(shards: Path, dst: Path, **manifest_changes) -> Path:
    shutil.copytree(shards, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest.update(manifest_changes)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _train(shards: Path, out: Path) -> list:
    return ["train", "--shards", shards, "--out", out, "--no-progress", "--set", "steps=1", "--set", "batch_size=8",
            "--set", 'model_overrides={"hidden_size": 32, "depth": 1, "num_heads": 2}']


LIES = {
    "more items": ({"num_items": 33}, "inconsistent with their manifest"),
    "fewer items": ({"num_items": 31}, "inconsistent with their manifest"),
    "latent shape": ({"latent_shape": [8, 6]}, "inconsistent with their manifest"),
    "codes dtype": ({"codes_dtype": "uint16"}, "codes_dtype"),
    "too few classes": ({"num_classes": 5}, "num_classes"),
    "bigger codebook": ({"tokenizer": "CODEBOOK+"}, "codebook"),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_shards_whose_manifest_lies_are_refused_before_training(lie, purr, shards_dir, tmp_path):
    changes, expected = LIES[lie]
    if changes.get("tokenizer") == "CODEBOOK+":
        manifest = json.loads((shards_dir / "manifest.json").read_text())
        changes = {"tokenizer": {**manifest["tokenizer"], "codebook_size": 64}}
    shards = _lying_copy(shards_dir, tmp_path / "shards", **changes)
    out = tmp_path / "run"
    result = purr(_train(shards, out), untouched=(shards,))
    assert expected in result.message, result.message
    assert not out.exists()


def test_shards_holding_codes_outside_the_codebook_are_refused(purr, shards_dir, tmp_path):
    shards = _lying_copy(shards_dir, tmp_path / "shards")
    codes = np.load(shards / "codes.npy")
    codes[3, 2, 1] = 40    # K = 32
    np.save(shards / "codes.npy", codes)
    result = purr(_train(shards, tmp_path / "run"), untouched=(shards,))
    assert "codes outside [0, 32)" in result.message, result.message
    assert not (tmp_path / "run").exists()


def test_shards_too_large_to_scan_when_opened_are_checked_batch_by_batch(purr, shards_dir, tmp_path, monkeypatch):
    from purrception.data import shards as shard_module

    monkeypatch.setattr(shard_module, "SCAN_MAX_BYTES", 0)   # as ImageNet's gigabytes of codes
    shards = _lying_copy(shards_dir, tmp_path / "shards")
    codes = np.load(shards / "codes.npy")
    codes[:, 2, 1] = 40    # in every row, so the first batch holds one
    np.save(shards / "codes.npy", codes)
    result = purr(_train(shards, tmp_path / "run"), untouched=(shards,))
    assert "codes outside [0, 32)" in result.message, result.message
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))


@pytest.mark.parametrize("change", ["missing top-level entry", "missing weight", "extra weight", "wrong shape"])
def test_a_checkpoint_with_missing_or_extra_keys_is_refused(change, purr, checkpoint, tmp_path):
    entries = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if change == "missing top-level entry":
        del entries["ema"]
    elif change == "missing weight":
        entries["ema"].pop(sorted(entries["ema"])[0])
    elif change == "extra weight":
        entries["ema"]["blocks.7.attn.qkv.weight"] = torch.zeros(3)
    else:
        name = sorted(entries["ema"])[0]
        entries["ema"][name] = torch.zeros(*entries["ema"][name].shape, 2)
    bad = tmp_path / "ckpt" / "bad.pt"
    bad.parent.mkdir()
    torch.save(entries, bad)
    out = tmp_path / "samples"
    result = purr(["sample", bad, "--out", out, "--num", "2"], untouched=(bad.parent,))
    assert str(bad) in result.message, result.message
    assert not out.exists()


def test_pipeline_weights_with_extra_keys_are_refused(purr, checkpoint, tmp_path):
    from purrception.pipeline import PurrceptionPipeline

    folder = PurrceptionPipeline.from_pretrained(checkpoint).save_pretrained(tmp_path / "pipe")
    weights = load_file(str(folder / "model.safetensors"))
    save_file({**weights, "extra.weight": torch.zeros(2)}, str(folder / "model.safetensors"))
    result = purr(["sample", folder, "--out", tmp_path / "samples", "--num", "2"], untouched=(folder,))
    assert "does not fit" in result.message, result.message
    assert not (tmp_path / "samples").exists()


@pytest.mark.parametrize("pointer", ["/etc/passwd", "../../../../../../etc/passwd"])
def test_a_pipeline_folder_pointing_its_tokenizer_elsewhere_is_refused_in_one_line(pointer, purr, checkpoint,
                                                                                  tmp_path):
    from purrception.pipeline import PurrceptionPipeline

    folder = PurrceptionPipeline.from_pretrained(checkpoint).save_pretrained(tmp_path / "pipe")
    shutil.rmtree(folder / "tokenizer")
    config = json.loads((folder / "config.json").read_text())
    config["tokenizer"].update(path=pointer, folder="../../elsewhere")
    (folder / "config.json").write_text(json.dumps(config))
    result = purr(["sample", folder, "--out", tmp_path / "samples", "--num", "2"], untouched=(folder,))
    assert "passwd" in result.message and "tokenizer" in result.message, result.message
    assert not (tmp_path / "samples").exists()
