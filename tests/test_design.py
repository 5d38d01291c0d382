"""The design's promises, checked: nothing lands in the working directory, a data set is one registry entry, and
the layers import only downwards where docs/ARCHITECTURE.md says they must."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL

import purrception
import purrception.errors
from purrception.cli import main
from purrception.data.datasets import DATASETS, ImageFolderData, LabelledImages, exported_folder, register_dataset
from purrception.data.tokenizer_folder import FOLDER_RECIPE
from purrception.demo import DemoSettings, run_demo
from purrception.pipeline import PurrceptionPipeline

PACKAGE = Path(purrception.__file__).parent


def test_nothing_is_written_into_the_working_directory(tiny_checkpoint, tiny_shards_dir, tiny_tokenizer_dir, tmp_path,
                                                        monkeypatch):
    """The pipeline's evaluation (whose cache used to default to the current folder) and the commands that write,
    each given explicit outputs elsewhere, leave an empty working directory empty."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "out"
    monkeypatch.chdir(cwd)
    pipe = PurrceptionPipeline.from_pretrained(tiny_checkpoint)
    report = pipe.evaluate(num_samples=20, batch_size=10)
    assert report["protocol"] == "digits" and np.isfinite(report["metrics"]["fid"])
    commands = [
        ["sample", str(tiny_checkpoint), "--out", str(out / "samples"), "--num", "4"],
        ["eval", str(tiny_checkpoint), "-n", "20", "--out", str(out / "report.json")],
        ["export", str(tiny_checkpoint), "--out", str(out / "pipeline")],
        ["data", "export", "--data", "digits", "--split", "heldout", "--out", str(out / "digits")],
        ["train", "--shards", str(tiny_shards_dir), "--tokenizer", str(tiny_tokenizer_dir), "--out", str(out / "run"),
         "--set", "steps=1", "--set", f"model_overrides={json.dumps(TINY_MODEL)}",
         "--set", "batch_size=4", "--no-progress"],
    ]
    for argv in commands:
        assert main(argv) == 0, argv
        assert list(cwd.iterdir()) == [], argv


def _bars(size: int = 16, per_class: int = 12) -> LabelledImages:
    """A generated data set: a horizontal or a vertical bright bar at a random place on a dark background."""
    rng = np.random.default_rng(0)
    images = np.zeros((2 * per_class, size, size), dtype=np.uint8)
    labels = np.repeat(np.arange(2), per_class)
    for i, label in enumerate(labels):
        start = rng.integers(0, size - 4)
        if label == 0:
            images[i, start:start + 4, :] = 255
        else:
            images[i, :, start:start + 4] = 255
    return LabelledImages(images, labels, ["horizontal", "vertical"])


@pytest.fixture
def bars_dataset():
    """The fifth data set, registered in one entry (and unregistered afterwards)."""
    entry = register_dataset(ImageFolderData(
        name="bars", summary="generated bars, horizontal or vertical", preset="digits-demo", protocol="folder",
        tokenizer=FOLDER_RECIPE.with_train(steps=3), folder=exported_folder("bars", 16, _bars), size=16, channels=1,
        make_images=_bars))
    yield entry
    del DATASETS[entry.name]


def test_a_new_data_set_is_one_entry(bars_dataset, tmp_path, monkeypatch, capsys):
    """Registered once, a data set runs the demo's route (prepare, train, sample, judge) and is exported, trained
    on, sampled and evaluated by the commands that read the registry."""
    import purrception.evaluation.folder_judge as folder_judge

    monkeypatch.setattr(folder_judge, "JUDGE_STEPS", 20)
    overrides = ["steps=2", "ckpt_every=2", "batch_size=4", f"model_overrides={json.dumps(TINY_MODEL)}"]
    summary = run_demo(DemoSettings(out_dir=str(tmp_path / "demo"), data="bars", train_overrides=overrides,
                                    temperatures=(1.0,), per_class=2, sample_steps=2), progress=False)
    assert summary["data"] == "bars" and summary["outputs"]["class_names"] == ["horizontal", "vertical"]
    assert 0.0 <= summary["results"]["1.0"]["class_accuracy"] <= 1.0
    with np.load(tmp_path / "demo" / "samples.npz") as samples:
        assert samples["images"].shape == (4, 16, 16) and samples["labels"].tolist() == [0, 0, 1, 1]

    assert main(["data", "export", "--data", "bars", "--out", str(tmp_path / "export")]) == 0
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["classes.json", "horizontal", "vertical"]
    run = tmp_path / "run"
    assert main(["train", "--data", "bars", "--out", str(run), "--no-progress",
                 *[a for o in overrides for a in ("--set", o)]]) == 0
    assert main(["sample", str(run), "--out", str(tmp_path / "samples"), "--num", "2"]) == 0
    reference = bars_dataset.reference()
    assert main(["eval", str(run), "-n", "10", "--protocol", "folder", "--reference", reference,
                 "--out", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["protocol"] == "folder" and report["checkpoint"]["num_classes"] == 2


def _imports(path: Path) -> set[str]:
    """The purrception modules a source file imports (absolute imports only: the package uses no relative ones)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {n for n in names if n.startswith("purrception")}


@pytest.mark.parametrize("package, forbidden", [
    ("evaluation", ("purrception.training", "purrception.pipeline", "purrception.cli", "purrception.app")),
    ("generation", ("purrception.training", "purrception.evaluation", "purrception.pipeline", "purrception.cli")),
    ("data", ("purrception.training", "purrception.evaluation", "purrception.generation", "purrception.cli")),
    ("tokenizers", ("purrception.data", "purrception.training", "purrception.evaluation", "purrception.cli")),
    ("app", ("purrception.cli",)),
])
def test_layers_import_only_downwards(package, forbidden):
    """The layering of docs/ARCHITECTURE.md: e.g. evaluation reads checkpoints without importing training."""
    for path in sorted((PACKAGE / package).rglob("*.py")):
        bad = sorted(n for n in _imports(path) if n.startswith(forbidden))
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_a_folder_path_is_a_data_set_read_as_purr_tokenizer_train_reads_it(tmp_path):
    """``--data DIR``: an ad-hoc entry whose size and channels are the folder's, as the tokenizer would infer them."""
    from PIL import Image

    from purrception.data.datasets import get_dataset

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((28, 28), 40 * i, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    entry = get_dataset(str(tmp_path))
    assert (entry.size, entry.channels, entry.protocol, entry.preset) == (28, 1, "folder", "folder-cpu")
    assert entry.reference() == str(tmp_path.resolve())
    assert get_dataset(str(tmp_path), size=16, channels=3).size == 16
    cache = tmp_path.parent / f"{tmp_path.name}-cache"
    work = entry.work_dir(cache, tmp_path.resolve())  # a folder outside the cache: keyed by its listing
    assert work.parent == cache and work.name.startswith("folder-")
    assert work != get_dataset(str(tmp_path), size=16).work_dir(cache, tmp_path.resolve())
    tokenizer = entry.ensure_tokenizer(cache, tokenizer_steps=2, progress=False)
    assert tokenizer.parent == work and (tokenizer / "model.safetensors").is_file()
    with pytest.raises(purrception.errors.PurrError, match="unknown data set 'nowhere'"):
        get_dataset("nowhere")
