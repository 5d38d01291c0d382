"""The folder protocol of ``purr eval``: a judge trained on half of a labelled folder, scores against the rest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_own_images import TINY_DIT, make_shape_folder

import purrception.evaluation.folder_judge as folder_judge
from purrception.cli import main
from purrception.evaluation.evaluate import reference_features
from purrception.evaluation.extractors import FolderFeatures
from purrception.evaluation.fid import feature_stats, frechet_distance
from purrception.evaluation.folder_judge import split_folder
from purrception.pipeline import PurrceptionPipeline


@pytest.fixture(autouse=True)
def _short_judge(monkeypatch):
    monkeypatch.setattr(folder_judge, "JUDGE_STEPS", 60)  # the recipe is part of the cache key


@pytest.fixture(scope="module")
def shape_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 16x16 RGB folder of three shapes and a two-step generator trained on it."""
    root = tmp_path_factory.mktemp("folder-eval")
    images = make_shape_folder(root / "images", 16, "RGB", per_class=12)
    tok, shards, run = root / "tok", root / "shards", root / "run"
    assert main(["tokenizer", "train", "--images", str(images), "--out", str(tok), "--codebook-size", "32",
                 "--width", "8", "--steps", "4", "--batch-size", "8", "--no-progress"]) == 0
    assert main(["encode", "--tokenizer", str(tok), "--images", str(images), "--out", str(shards),
                 "--no-progress"]) == 0
    assert main(["train", "--shards", str(shards), "--out", str(run), "--no-progress", "--device", "cpu",
                 "--set", "steps=2", "--set", "batch_size=8", *TINY_DIT]) == 0
    return images, run


def _eval(run: Path, images: Path, out: Path, *extra: str) -> int:
    return main(["eval", str(run), "--protocol", "folder", "--reference", str(images), "-n", "12",
                 "--sample-steps", "2", "--out", str(out), *extra])


def test_the_split_is_class_balanced_on_a_sorted_folder_and_fixed(tmp_path):
    images = make_shape_folder(tmp_path / "images", 16, "RGB", per_class=11)
    split = split_folder(images, 16, 3)
    assert split.labels.tolist() == sorted(split.labels.tolist())  # class sub-folders list files class by class
    per_class = np.bincount(split.labels[split.judge_mask], minlength=3)
    assert per_class.tolist() == [6, 6, 6]  # round(11 / 2) of every class, not the first half of the list
    np.testing.assert_array_equal(split.judge_mask, split_folder(images, 16, 3).judge_mask)
    assert split_folder(images, 8, 1).images.shape == (33, 8, 8)  # read at the generator's size and channels


def test_the_reference_is_the_rest_of_the_folder_in_the_judges_features(tmp_path):
    split = split_folder(make_shape_folder(tmp_path / "images", 16, "RGB", per_class=12), 16, 3)
    extractor = FolderFeatures(split, tmp_path / "cache")
    reference = extractor.own_reference()
    assert len(reference) == 18 and reference.fingerprint() == split.fingerprint()
    rest = np.concatenate(list(reference.batches(7, 3)))
    np.testing.assert_array_equal(rest, split.images[~split.judge_mask])
    extracted = extractor.extract(rest)
    cached = reference_features(reference, extractor, tmp_path / "cache", batch_size=5)  # what purr eval scores
    np.testing.assert_allclose(cached.features, extracted.features, rtol=1e-4, atol=1e-5)  # float32, batched
    assert abs(frechet_distance(feature_stats(extracted.features), cached.stats)) < 1e-3
    accuracy = float((extracted.predicted == split.labels[~split.judge_mask]).mean())
    assert accuracy == pytest.approx(extractor.facts["accuracy_on_rest"])
    again = FolderFeatures(split, tmp_path / "cache")  # cached: the same judge, not a retrained one
    assert again.fingerprint() == extractor.fingerprint()
    assert len(list((tmp_path / "cache").glob("folder-judge-*"))) == 1


def test_purr_eval_folder_protocol_reports_every_score_and_is_reproducible(shape_run, tmp_path, capsys):
    images, run = shape_run
    assert _eval(run, images, tmp_path / "one.json") == 0
    assert "class accuracy" in capsys.readouterr().out
    report = json.loads((tmp_path / "one.json").read_text())
    assert report["protocol"] == "folder"
    assert set(report["metrics"]) >= {"fid", "precision", "recall", "class_accuracy"}
    assert report["reference"]["kind"] == "folder-rest" and report["reference"]["count"] == 18
    judge = report["feature_extractor"]["judge"]
    assert judge["trained_on"] == 18 and judge["rest"] == 18 and judge["class_names"] == ["bar", "disc", "square"]
    assert 0.0 <= judge["accuracy_on_rest"] <= 1.0
    assert _eval(run, images, tmp_path / "two.json") == 0
    assert json.loads((tmp_path / "two.json").read_text())["metrics"] == report["metrics"]


def test_a_flat_folder_with_a_labels_file_is_the_same_reference(shape_run, tmp_path):
    images, run = shape_run
    flat = tmp_path / "flat"
    flat.mkdir()
    lines = []
    for path in sorted(images.rglob("*.png")):
        name = f"{path.parent.name}-{path.name}"
        (flat / name).write_bytes(path.read_bytes())
        lines.append(f"{name},{path.parent.name}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    assert _eval(run, flat, tmp_path / "flat.json", "--reference-labels", str(tmp_path / "labels.csv")) == 0
    report = json.loads((tmp_path / "flat.json").read_text())
    assert report["feature_extractor"]["judge"]["class_names"] == ["bar", "disc", "square"]
    assert report["reference"]["count"] == 18


def test_folder_protocol_refuses_bad_requests_in_one_line(shape_run, tmp_path, capsys):
    images, run = shape_run
    capsys.readouterr()
    assert main(["eval", str(run), "--protocol", "folder", "-n", "12"]) == 2
    assert "pass --reference DIR" in capsys.readouterr().err

    one = make_shape_folder(tmp_path / "one", 16, "RGB", per_class=6)
    for extra in sorted(one.iterdir())[1:]:
        for f in extra.iterdir():
            f.unlink()
        extra.rmdir()
    single = _eval(run, one, tmp_path / "x.json")
    err = capsys.readouterr().err
    assert single == 2 and "at least 2 classes" in err and "Traceback" not in err

    four = make_shape_folder(tmp_path / "four", 16, "RGB", per_class=6)
    (four / "extra").mkdir()
    for f in sorted((four / "bar").iterdir())[:3]:
        (four / "extra" / f.name).write_bytes(f.read_bytes())
    assert _eval(run, four, tmp_path / "y.json") == 2
    err = capsys.readouterr().err
    assert "knows 4 classes but the checkpoint generates 3" in err and len(err.strip().splitlines()) == 1

    assert main(["eval", str(run), "--protocol", "digits", "--reference-labels", "x.csv", "-n", "12"]) == 2
    assert "--reference-labels is not used by the digits protocol" in capsys.readouterr().err


def test_studies_score_with_the_folder_protocol_as_purr_eval_does(shape_run, tmp_path):
    images, run = shape_run
    ckpt = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    sweep = tmp_path / "tau"
    assert main(["study", "temperature", str(ckpt), "--out", str(sweep), "--values", "1.0", "--reference",
                 str(images), "--num-samples", "12", "--sample-steps", "2"]) == 0
    point = json.loads((sweep / "results.json").read_text())["points"][f"tau=1|{ckpt}"]
    assert _eval(ckpt, images, tmp_path / "eval.json") == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert point["fid"] == pytest.approx(metrics["fid"]) and point["class_accuracy"] == metrics["class_accuracy"]
    assert "folder protocol" in (sweep / "tau.md").read_text()

    conv = tmp_path / "conv"
    assert main(["study", "convergence", "--out", str(conv), "--methods", "purrception", "--shards",
                 str(run.parent / "shards"), "--tokenizer", str(run.parent / "tok"), "--reference", str(images),
                 "--set", "steps=2", "--set", "batch_size=8", *TINY_DIT, "--eval-every", "2", "--num-samples", "12",
                 "--sample-steps", "2"]) == 0
    assert "folder protocol" in (conv / "convergence.md").read_text()
    assert np.isfinite(json.loads((conv / "results.json").read_text())["points"]["purrception|seed=0|step=2"]["fid"])


def test_an_exported_pipeline_scores_as_its_run_on_the_cli_and_in_python(shape_run, tmp_path, capsys):
    images, run = shape_run
    assert _eval(run, images, tmp_path / "run.json") == 0
    expected = json.loads((tmp_path / "run.json").read_text())
    assert main(["export", str(run), "--out", str(tmp_path / "pipe")]) == 0
    assert _eval(tmp_path / "pipe", images, tmp_path / "pipe.json") == 0
    report = json.loads((tmp_path / "pipe.json").read_text())
    assert report["metrics"]["fid"] == pytest.approx(expected["metrics"]["fid"])
    assert report["metrics"]["class_accuracy"] == expected["metrics"]["class_accuracy"]
    assert report["checkpoint"]["path"] == str((tmp_path / "pipe").resolve())
    assert report["checkpoint"]["step"] == expected["checkpoint"]["step"]

    pipe = PurrceptionPipeline.from_pretrained(tmp_path / "pipe")
    scored = pipe.evaluate(protocol="folder", reference=str(images), num_samples=12, sample_steps=2)
    assert scored["metrics"]["fid"] == pytest.approx(expected["metrics"]["fid"])

    capsys.readouterr()
    assert _eval(tmp_path / "pipe", images, tmp_path / "raw.json", "--raw-weights") == 2
    err = capsys.readouterr().err
    assert "holds only the EMA weights" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "raw.json").exists()
