"""The studies: speed-up arithmetic, and a tiny convergence + temperature study that resumes without redoing work."""

from __future__ import annotations

import json

import numpy as np
import pytest

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
            "--set", "steps=4", "--set", "batch_size=8",
            "--set", 'model_overrides={"hidden_size":32,"depth":1,"num_heads":2}',
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

    assert main(_study_args(tiny_shards_dir, tiny_tokenizer_dir, out) + ["--seeds", "0,1"]) == 0  # extends
    extended = json.loads((out / "results.json").read_text())
    assert sorted(extended["points"]) == sorted(keys + [k.replace("seed=0", "seed=1") for k in keys])
    assert all(extended["points"][k] == results["points"][k] for k in keys)  # seed 0 was not measured again
    assert sorted(extended["speedups"]["cfm"]["per_seed"]) == ["0", "1"]
    assert "seeds [0, 1]" in (out / "convergence.md").read_text()


def test_study_with_other_settings_refuses_the_folder(tiny_shards_dir, tiny_tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "conv"
    args = _study_args(tiny_shards_dir, tiny_tokenizer_dir, out)
    assert main(args[:-2] + ["--sample-steps", "2", "--methods", "nonsense"]) == 2
    assert "unknown method 'nonsense'" in capsys.readouterr().err


def _sweep(checkpoints, out, *extra):
    return main(["study", "temperature", *map(str, checkpoints), "--out", str(out), "--values", "0.5,1.0",
                 "--num-samples", "20", "--sample-steps", "2", *extra])


def test_temperature_sweep_of_one_checkpoint(tiny_checkpoint, tmp_path):
    out = tmp_path / "temp"
    assert _sweep([tiny_checkpoint], out) == 0
    points = json.loads((out / "results.json").read_text())["points"]
    assert sorted(points) == [f"tau=0.5|{tiny_checkpoint}", f"tau=1|{tiny_checkpoint}"]
    table = (out / "tau.md").read_text()
    assert table.count("\n| ") == 3 and "±" not in table  # header + 2 rows of plain numbers


def test_temperature_sweep_over_several_checkpoints_reports_mean_and_std(tiny_checkpoint, tmp_path, capsys):
    earlier = tiny_checkpoint.parent / "step_00000002.pt"
    assert _sweep([tiny_checkpoint], tmp_path / "one") == 0
    alone = json.loads((tmp_path / "one" / "results.json").read_text())["points"]
    out = tmp_path / "two"
    assert _sweep([earlier, tiny_checkpoint], out) == 0
    capsys.readouterr()
    both = json.loads((out / "results.json").read_text())["points"]
    for tau in ("0.5", "1"):  # each checkpoint scored exactly as on its own; the table is their mean ± std
        key = f"tau={tau}|{tiny_checkpoint}"
        assert both[key]["fid"] == pytest.approx(alone[key]["fid"])
        fids = [both[f"tau={tau}|{c}"]["fid"] for c in (earlier, tiny_checkpoint)]
        row = next(line for line in (out / "tau.md").read_text().splitlines()
                   if line.startswith(f"| {float(tau):.3f} |"))
        assert row.split(" | ")[1] == f"{np.mean(fids):.3f} ± {np.std(fids):.3f}"
    assert f"best FID of {earlier}: tau = " in (out / "tau.md").read_text()

    assert _sweep([tiny_checkpoint, tiny_checkpoint], tmp_path / "twice") == 2
    assert "the same checkpoint is given twice" in capsys.readouterr().err


def test_head_study_compares_at_equal_steps_and_equal_wall_time(tiny_shards_dir, tiny_tokenizer_dir, tmp_path):
    out = tmp_path / "head"
    args = _study_args(tiny_shards_dir, tiny_tokenizer_dir, out)
    args[1] = "head"
    del args[4:6]  # --methods
    assert main(args + ["--ranks", "0,4"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["points"]) == ["factorised-r4|seed=0|step=2", "factorised-r4|seed=0|step=4",
                                         "full-head|seed=0|step=2", "full-head|seed=0|step=4"]
    for name in ("full-head", "factorised-r4"):  # every checkpoint records its training time
        early, late = (results["points"][f"{name}|seed=0|step={s}"]["train_seconds"] for s in (2, 4))
        assert 0 < early < late
    per_step = results["throughput"]["step_seconds"]  # measured side by side
    assert sorted(per_step) == ["factorised-r4", "full-head"] and all(v > 0 for v in per_step.values())
    equal = results["equal_wall_time"]
    assert equal["seconds"] == pytest.approx(4 * min(per_step.values()))
    fastest, slowest = sorted(per_step, key=per_step.get)
    assert equal[fastest]["step_at_budget"] == pytest.approx(4.0)
    assert equal[slowest]["step_at_budget"] == pytest.approx(4 * per_step[fastest] / per_step[slowest])
    assert "at equal wall time" in (out / "head_wall_time.md").read_text()
    assert (out / "head_wall_time.png").stat().st_size > 1000 and (out / "head.png").stat().st_size > 1000
    before = (out / "results.json").read_text()
    assert main(args + ["--ranks", "0,4"]) == 0  # resumes: neither trains, evaluates nor times again
    assert json.loads((out / "results.json").read_text())["throughput"] == json.loads(before)["throughput"]
