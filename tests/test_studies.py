"""The studies: speed-up arithmetic, and a tiny convergence + temperature study that resumes without redoing work."""

from __future__ import annotations

import json

import numpy as np

from purrception.cli import main
from purrception.studies.core import first_crossing


def test_first_crossing_interpolates_linearly():
    steps, fid = np.array([100, 200, 300]), np.array([10.0, 6.0, 2.0])
    assert first_crossing(steps, fid, 8.0) == 150.0
    assert first_crossing(steps, fid, 10.0) == 100.0
    assert first_crossing(steps, fid, 1.0) is None


def _study_args(tiny_shards_dir, tiny_tokenizer_dir, out):
    return ["study", "convergence", "--out", str(out), "--methods", "purrception,cfm",
            "--shards", str(tiny_shards_dir), "--tokenizer", str(tiny_tokenizer_dir),
            "--set", "steps=4", "--set", "batch_size=8", "--set", 'model_overrides={"hidden_size":32,"depth":1,"num_heads":2}',
            "--eval-every", "2", "--num-samples", "20", "--sample-steps", "2"]


def test_convergence_study_writes_table_plot_and_resumes(tiny_shards_dir, tiny_tokenizer_dir, tmp_path):
    out = tmp_path / "conv"
    assert main(_study_args(tiny_shards_dir, tiny_tokenizer_dir, out)) == 0
    results = json.loads((out / "results.json").read_text())
    keys = sorted(results["points"])
    assert keys == ["cfm|seed=0|step=2", "cfm|seed=0|step=4", "purrception|seed=0|step=2", "purrception|seed=0|step=4"]
    assert all(np.isfinite(p["fid"]) and 0 <= p["class_accuracy"] <= 1 for p in results["points"].values())
    assert "cfm" in results["speedups"]
    table = (out / "convergence.md").read_text()
    assert "Made by: `purr study convergence --out" in table and "| purrception | 4 |" in table
    assert (out / "convergence.png").stat().st_size > 1000
    before = (out / "results.json").read_text()
    assert main(_study_args(tiny_shards_dir, tiny_tokenizer_dir, out)) == 0  # resumes: nothing new to measure
    assert (out / "results.json").read_text() == before


def test_study_with_other_settings_refuses_the_folder(tiny_shards_dir, tiny_tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "conv"
    args = _study_args(tiny_shards_dir, tiny_tokenizer_dir, out)
    assert main(args[:-2] + ["--sample-steps", "2", "--methods", "nonsense"]) == 2
    assert "unknown method 'nonsense'" in capsys.readouterr().err


def test_temperature_sweep_of_one_checkpoint(tiny_checkpoint, tmp_path):
    out = tmp_path / "temp"
    assert main(["study", "temperature", str(tiny_checkpoint), "--out", str(out), "--values", "0.5,1.0",
                 "--num-samples", "20", "--sample-steps", "2"]) == 0
    points = json.loads((out / "results.json").read_text())["points"]
    assert sorted(points) == ["tau=0.5", "tau=1"]
    assert (out / "tau.md").read_text().count("\n| ") == 3  # header + 2 rows
