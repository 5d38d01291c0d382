"""The public Python API: PurrceptionPipeline, save_pretrained folders, the curated top-level names."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import purrception
from purrception import PurrceptionPipeline, PurrError
from purrception.checkpoint import load_checkpoint
from purrception.cli import main
from purrception.generation.generate import generate_codes
from purrception.sampling.settings import SamplerSettings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_star_import_gives_exactly_the_curated_names():
    namespace: dict = {}
    exec("from purrception import *", namespace)
    public = {k for k in namespace if k != "__builtins__"}
    assert public == set(purrception.__all__)
    assert len(purrception.__all__) == len(set(purrception.__all__))
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", purrception.__version__)
    for name in ("PurrceptionPipeline", "train", "evaluate_checkpoint", "load_tokenizer", "Purrception", "DFM"):
        assert namespace[name] is getattr(purrception, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        purrception.nope  # noqa: B018


def test_pipeline_matches_generate_codes_and_is_batch_invariant(tiny_checkpoint, tiny_tokenizer_dir):
    pipe = PurrceptionPipeline.from_pretrained(tiny_checkpoint)
    out = pipe(class_labels=[3, 7], num_per_class=2, num_inference_steps=3, tau=0.9, guidance_scale=1.3,
               solver="heun", seed=5, batch_size=3)
    assert out.labels.tolist() == [3, 3, 7, 7]
    assert len(out.images) == 4 and all(isinstance(im, Image.Image) for im in out.images)
    assert np.array_equal(np.asarray(out.images[1]), out.pixels[1])
    ckpt = load_checkpoint(tiny_checkpoint)
    method, model = ckpt.build_method(), ckpt.build_model(ema=True)
    sampler = SamplerSettings(sample_steps=3, tau=0.9, cfg_scale=1.3, solver="heun")
    expected = generate_codes(method, model, np.array([3, 3, 7, 7]), sampler, 5, pipe.tokenizer.snap, batch_size=4)
    assert torch.equal(out.codes, expected)
    # image i depends only on (seed, i): regenerate image 2 alone
    alone = pipe(class_labels=[7], num_inference_steps=3, tau=0.9, guidance_scale=1.3, solver="heun", seed=5,
                 first_index=2)
    assert torch.equal(alone.codes[0], out.codes[2])


def test_pipeline_uncertainty_and_candidates(tiny_checkpoint):
    pipe = PurrceptionPipeline.from_pretrained(tiny_checkpoint)
    out = pipe(class_labels=[1], num_per_class=2, num_inference_steps=4, tau="linear:1.2:0.8", seed=0,
               uncertainty_times=[0.0, 0.5], topk=3, position=(1, 2))
    plain = pipe(class_labels=[1], num_per_class=2, num_inference_steps=4, tau="linear:1.2:0.8", seed=0)
    assert torch.equal(out.codes, plain.codes)
    assert out.uncertainty.entropy.shape[:2] == (2, 2)
    assert out.candidates.shape == (2, 3, *out.pixels.shape[1:])
    top1 = out.codes.clone()
    top1[:, 1, 2] = out.uncertainty.topk_codes[:, 0]
    assert np.array_equal(out.candidates[:, 0], pipe.decode(top1))


@pytest.mark.parametrize("kwargs, message", [
    ({"tau": 0.0}, "`tau` must be a number > 0"),
    ({"tau": "linear:1:-1"}, "`tau` must be a number > 0 at both ends of its schedule, got linear:1:-1"),
    ({"num_inference_steps": 0}, "`sample_steps` must be a positive integer, got 0"),
    ({"guidance_scale": "nan"}, "`cfg_scale` must be finite"),
    ({"class_labels": [99]}, "class id 99 is out of range"),
    ({"class_labels": []}, "`class_labels` is empty"),
    ({"num_per_class": 0}, "`num_per_class` must be a positive integer"),
    ({"topk": 2}, "`topk` and `position` go together"),
    ({"solver": "rk99"}, "unknown `solver` 'rk99'"),
])
def test_pipeline_refuses_bad_values_naming_the_parameter(tiny_checkpoint, kwargs, message):
    pipe = PurrceptionPipeline.from_pretrained(tiny_checkpoint)
    call = {"class_labels": [0], "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        pipe(**call)


def test_saved_pipeline_loads_with_pickle_disabled_and_gives_the_same_images(tiny_checkpoint, tmp_path,
                                                                             monkeypatch):
    pipe = PurrceptionPipeline.from_pretrained(tiny_checkpoint)
    reference = pipe(class_labels=[0, 4], num_per_class=2, num_inference_steps=3, tau=0.8, seed=1)
    folder = pipe.save_pretrained(tmp_path / "pipe", metrics={"fid": 12.5})
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "codebook.safetensors", "config.json", "model.safetensors", "tokenizer"]
    config = json.loads((folder / "config.json").read_text())
    assert config["method"]["name"] == "purrception" and config["tokenizer"]["folder"] == "tokenizer"
    assert config["tokenizer"]["identity"]["codebook_sha256"] == pipe.tokenizer.identity().codebook_sha256
    card = (folder / "README.md").read_text()
    assert "| fid | 12.5 |" in card and "PurrceptionPipeline.from_pretrained" in card and "steps" in card

    def refuse(*args, **kwargs):
        raise AssertionError("a saved pipeline must load without unpickling anything")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = PurrceptionPipeline.from_pretrained(folder)
    again = loaded(class_labels=[0, 4], num_per_class=2, num_inference_steps=3, tau=0.8, seed=1)
    assert torch.equal(again.codes, reference.codes)
    assert np.array_equal(again.pixels, reference.pixels)
    assert loaded.info["metrics"] == {"fid": 12.5}


def test_save_pretrained_never_overwrites(tiny_checkpoint, tmp_path):
    pipe = PurrceptionPipeline.from_pretrained(tiny_checkpoint)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    with pytest.raises(PurrError, match="not an empty folder"):
        pipe.save_pretrained(tmp_path / "busy")
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep"


def test_purr_sample_reads_a_saved_pipeline_like_the_checkpoint(tiny_checkpoint, tmp_path):
    PurrceptionPipeline.from_pretrained(tiny_checkpoint).save_pretrained(tmp_path / "pipe")
    args = ["--classes", "2,5", "--num", "3", "--sample-steps", "2", "--seed", "4"]
    assert main(["sample", str(tiny_checkpoint), "--out", str(tmp_path / "a"), *args]) == 0
    assert main(["sample", str(tmp_path / "pipe"), "--out", str(tmp_path / "b"), *args]) == 0
    a, b = np.load(tmp_path / "a" / "samples.npz"), np.load(tmp_path / "b" / "samples.npz")
    assert np.array_equal(a["images"], b["images"]) and a["labels"].tolist() == [2, 2, 5]


def test_readme_python_example_runs(tiny_checkpoint, tmp_path, monkeypatch):
    """The quickstart's Python example, run as written against a tiny trained run."""
    text = README.read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block, "README has no ```python example"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 6
    run_dir = tmp_path / "purr-demo" / "model"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "step_00000001.pt").write_bytes(Path(tiny_checkpoint).read_bytes())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert Path(tmp_path / "sample.png").is_file()


def test_purr_export_records_the_eval_report_of_the_same_checkpoint(tiny_checkpoint, tmp_path, capsys):
    step = load_checkpoint(tiny_checkpoint).step
    report = {"protocol": "digits", "checkpoint": {"method": "purrception", "step": step},
              "sampling": {"num_samples": 100, "steps": 8, "solver": "euler", "tau": 1.0, "cfg_scale": 1.0},
              "metrics": {"fid": 3.25, "class_accuracy": 0.5, "per_class": [1, 2]}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "pipe"),
                 "--eval-report", str(tmp_path / "report.json")]) == 0
    config = json.loads((tmp_path / "pipe" / "config.json").read_text())
    assert config["metrics"]["fid"] == 3.25 and config["metrics"]["protocol"] == "digits"
    assert "per_class" not in config["metrics"]
    assert "| fid | 3.25 |" in (tmp_path / "pipe" / "README.md").read_text()
    report["checkpoint"]["step"] = step + 1
    (tmp_path / "other.json").write_text(json.dumps(report))
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "pipe2"),
                 "--eval-report", str(tmp_path / "other.json")]) == 2
    assert f"step {step + 1}" in capsys.readouterr().err
    assert not (tmp_path / "pipe2").exists()
