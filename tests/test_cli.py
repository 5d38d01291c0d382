"""Smoke tests of every `purr` subcommand on tiny inputs, and the one-line errors for bad input."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys

import numpy as np
import pytest

from purrception.cli import COMMAND_MODULES, build_parser, main
from purrception.errors import PurrError
from purrception.training.config import TrainConfig


def test_console_script_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "purrception", "--help"], capture_output=True, text=True, check=True)
    for name in ("demo", "data", "tokenizer", "encode", "train", "sample", "edit", "app", "eval", "study"):
        assert f"    {name}" in out.stdout
    assert len(COMMAND_MODULES) == 11 and build_parser().prog == "purr"


def test_tokenizer_train_encode_decode(tmp_path, capsys):
    tok = tmp_path / "tok"
    assert main(["tokenizer", "train", "--out", str(tok), "--steps", "3", "--codebook-size", "16"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["metrics"]["heldout"]) >= {"recon_mse", "psnr_db", "perplexity", "codes_used_fraction"}
    assert main(["tokenizer", "encode", "--tokenizer", str(tok), "--embedded", "heldout", "--out",
                 str(tmp_path / "codes.npz")]) == 0
    with np.load(tmp_path / "codes.npz") as data:
        codes, labels = data["codes"], data["labels"]
    assert codes.shape == (1000, 7, 7) and codes.max() < 16 and labels.shape == (1000,)
    np.savez(tmp_path / "few.npz", codes=codes[:12], labels=labels[:12])
    assert main(["tokenizer", "decode", "--tokenizer", str(tok), "--input", str(tmp_path / "few.npz"), "--out",
                 str(tmp_path / "images.npz")]) == 0
    with np.load(tmp_path / "images.npz") as data:
        assert data["images"].shape == (12, 28, 28) and data["images"].dtype == np.uint8
    assert (tmp_path / "images.png").is_file()
    latents = np.random.default_rng(0).normal(size=(2, 4, 7, 7)).astype(np.float32)
    np.savez(tmp_path / "latents.npz", latents=latents)
    assert main(["tokenizer", "decode", "--tokenizer", str(tok), "--input", str(tmp_path / "latents.npz"), "--out",
                 str(tmp_path / "from_latents.npz")]) == 0


def test_train_then_sample(tiny_shards_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--shards", str(tiny_shards_dir), "--out", str(run), "--no-progress", "--device", "cpu",
                 "--set", "steps=2", "--set", "batch_size=8",
                 "--set", 'model_overrides={"hidden_size":32,"depth":1,"num_heads":2}']) == 0
    out = tmp_path / "samples"
    assert main(["sample", str(run), "--out", str(out), "--classes", "3,7", "--num", "4", "--sample-steps", "2"]) == 0
    with np.load(out / "samples.npz") as data:
        assert data["labels"].tolist() == [3, 3, 7, 7] and data["images"].shape == (4, 28, 28)


def test_demo_end_to_end_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--tokenizer-steps", "3", "--set", "steps=2", "--set", "ckpt_every=2",
                 "--per-class", "1", "--sample-steps", "2", "--tau", "0.5", "1.0"]) == 0
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary["results"]) == {"0.5", "1.0"}
    assert 0.0 <= summary["results"]["1.0"]["class_accuracy"] <= 1.0
    with np.load(out / "samples.npz") as data:
        assert data["images"].shape == (20, 28, 28) and data["labels"].tolist() == list(range(10)) * 2
        assert sorted(set(data["tau"].tolist())) == [0.5, 1.0]
    assert (out / "grid.png").stat().st_size > 500
    # a second run reuses the trained model instead of training again
    before = sorted(p.name for p in (out / "model" / "checkpoints").iterdir())
    assert main(["demo", "--out", str(out), "--tokenizer-steps", "3", "--set", "steps=2", "--set", "ckpt_every=2",
                 "--per-class", "1", "--sample-steps", "2", "--tau", "1.0"]) == 0
    assert sorted(p.name for p in (out / "model" / "checkpoints").iterdir()) == before


def test_demo_continues_a_cached_run_and_says_when_it_reuses_another_config(tmp_path, caplog):
    out = tmp_path / "demo"
    common = ["demo", "--out", str(out), "--tokenizer-steps", "3", "--per-class", "1", "--sample-steps", "2",
              "--tau", "1.0", "--set", "ckpt_every=2"]
    assert main([*common, "--set", "steps=2"]) == 0
    assert main([*common, "--set", "steps=4"]) == 0  # more steps asked: the cached run trains on to 4
    training = json.loads((out / "demo.json").read_text())["training"]
    assert (training["steps"], training["resumed_from_step"], training["differs_from_asked"]) == (4, 2, {})
    assert math.isfinite(training["final_loss"])
    with caplog.at_level(logging.WARNING, logger="purrception.demo"):
        assert main(common) == 0  # steps not given: the 4-step run is reused, and the demo says so
    training = json.loads((out / "demo.json").read_text())["training"]
    assert training["steps"] == 4 and math.isfinite(training["final_loss"])
    assert training["differs_from_asked"] == {"steps": {"run": 4, "asked": 800}}
    assert "differs from the one asked for: steps is 4 in the run, 800 asked" in caplog.text


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("purr: error: "), err
    return err[0]


def test_bad_input_gives_one_line_and_overwrites_nothing(tiny_checkpoint, tiny_tokenizer_dir, tmp_path, capsys):
    assert main(["sample", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o1")]) == 2
    assert "not found" in _error_line(capsys)

    assert main(["sample", str(tiny_checkpoint), "--method", "cfm", "--out", str(tmp_path / "o2")]) == 2
    assert "trained with method 'purrception'" in _error_line(capsys)

    assert main(["sample", str(tiny_checkpoint), "--classes", "12", "--out", str(tmp_path / "o3")]) == 2
    assert "class id 12 is out of range" in _error_line(capsys)

    np.savez(tmp_path / "wrong.npz", images=np.zeros((2, 32, 32), dtype=np.uint8))
    assert main(["tokenizer", "encode", "--tokenizer", str(tiny_tokenizer_dir), "--images", str(tmp_path / "wrong.npz"),
                 "--out", str(tmp_path / "c.npz")]) == 2
    assert "must be uint8 (N, 28, 28" in _error_line(capsys)

    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    assert main(["sample", str(tmp_path / "garbage.pt"), "--out", str(tmp_path / "o4")]) == 2
    assert "cannot read checkpoint" in _error_line(capsys)

    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious.png").write_bytes(b"mine")
    assert main(["sample", str(tiny_checkpoint), "--out", str(keep)]) == 2
    assert "not empty" in _error_line(capsys) and (keep / "precious.png").read_bytes() == b"mine"

    for flag, value in (("--tau", "0"), ("--sample-steps", "0"), ("--steps", "0"), ("--tau", "-1")):
        assert main(["sample", str(tiny_checkpoint), "--out", str(tmp_path / "o5"), flag, value]) == 2
        assert _error_line(capsys).startswith(f"purr: error: {flag.replace('--steps', '--sample-steps')} must be")
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(tiny_checkpoint), "--out", str(tmp_path / "o5"), "--seed", "-1"])
    assert exit_info.value.code == 2
    assert "a seed must be an integer from 0" in capsys.readouterr().err
    assert not (tmp_path / "o5").exists()
    for args in (["study", "convergence", "--out", str(tmp_path / "s"), "--seeds", "0,-2"],
                 ["study", "zloss", "--out", str(tmp_path / "s"), "--seeds", "1,1"]):
        with pytest.raises(SystemExit):
            main(args)
    assert "names a seed twice" in capsys.readouterr().err and not (tmp_path / "s").exists()
    with pytest.raises(PurrError, match="`seed` must be >= 0, got -1"):
        TrainConfig(seed=-1)
