"""Your own images, end to end through the command line: a folder -> tokenizer -> shards -> model -> samples."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from purrception.cli import main
from purrception.tokenizers.store import CONFIG_NAME, load_tokenizer

TINY_DIT = ['--set', 'model_overrides={"hidden_size":32,"depth":1,"num_heads":2}']


def make_shape_folder(root: Path, size: int, mode: str, per_class: int = 12, seed: int = 0) -> Path:
    """Three classes (disc, square, bar) of random colours and places, ``per_class`` PNGs each."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(["disc", "square", "bar"]):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(img)
            x, y = (int(v) for v in rng.integers(0, size // 3, 2))
            s = size // 2
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            box = [x, y, x + s, y + (s if label < 2 else s // 4)]
            (draw.ellipse if label == 0 else draw.rectangle)(box, fill=fill)
            img.convert(mode).save(folder / f"{i:03d}.png")
    return root


@pytest.mark.parametrize("size,mode,factor,model", [(16, "RGB", 4, "DiT-T/1"), (32, "L", 8, "DiT-T/1"),
                                                    (28, "RGB", 4, "DiT-T/2")])  # 7x7 codes in 2x2 patches
def test_a_folder_becomes_a_tokenizer_shards_a_model_and_samples(tmp_path, capsys, size, mode, factor, model):
    images = make_shape_folder(tmp_path / "images", size, mode)
    tok, shards, run, out = (tmp_path / name for name in ("tok", "shards", "run", "samples"))
    assert main(["tokenizer", "train", "--images", str(images), "--out", str(tok), "--downsample", str(factor),
                 "--codebook-size", "32", "--width", "8", "--steps", "4", "--batch-size", "8", "--no-progress"]) == 0
    meta = json.loads((tok / CONFIG_NAME).read_text())
    channels = 3 if mode == "RGB" else 1
    assert meta["config"]["image_size"] == size and meta["config"]["image_channels"] == channels
    assert meta["metrics"]["heldout"]["num_images"] == 3  # 10% of each class of 12, class-balanced
    assert meta["metrics"]["data"]["class_names"] == ["bar", "disc", "square"]
    assert main(["encode", "--tokenizer", str(tok), "--images", str(images), "--out", str(shards),
                 "--workers", "0", "--no-progress"]) == 0
    assert main(["train", "--shards", str(shards), "--out", str(run), "--no-progress", "--device", "cpu",
                 "--set", "steps=2", "--set", "batch_size=8", "--set", f"model={model}", *TINY_DIT]) == 0
    assert main(["sample", str(run), "--out", str(out), "--classes", "0,2", "--num", "4", "--sample-steps", "2"]) == 0
    with np.load(out / "samples.npz") as data:
        shape = (4, size, size, 3) if channels == 3 else (4, size, size)
        assert data["images"].shape == shape and data["labels"].tolist() == [0, 0, 2, 2]
    assert load_tokenizer(tok).latent_shape == (size // factor, size // factor)


def test_resolution_and_channels_are_inferred_from_the_folder_and_can_be_chosen(tmp_path):
    images = make_shape_folder(tmp_path / "images", 40, "L", per_class=4)
    common = ["--codebook-size", "16", "--width", "8", "--steps", "1", "--batch-size", "4", "--no-progress"]
    assert main(["tokenizer", "train", "--images", str(images), "--out", str(tmp_path / "a"), *common]) == 0
    config = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())["config"]
    assert (config["image_size"], config["image_channels"]) == (40, 1)
    assert main(["tokenizer", "train", "--images", str(images), "--out", str(tmp_path / "b"), "--resolution", "16",
                 "--channels", "3", *common]) == 0
    config = json.loads((tmp_path / "b" / CONFIG_NAME).read_text())["config"]
    assert (config["image_size"], config["image_channels"]) == (16, 3)


@pytest.mark.parametrize("flags,message", [
    (["--resolution", "30"], "not a multiple of the downsampling factor 4"),
    (["--resolution", "512"], "resolution must lie in"),
    (["--codebook-size", "20000"], "codebook size must lie in"),
])
def test_bad_tokenizer_settings_are_one_line_errors(tmp_path, capsys, flags, message):
    images = make_shape_folder(tmp_path / "images", 16, "RGB", per_class=2)
    assert main(["tokenizer", "train", "--images", str(images), "--out", str(tmp_path / "t"), "--steps", "1",
                 "--no-progress", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not (tmp_path / "t").exists()


@pytest.mark.parametrize("case", ["empty", "corrupted", "one-class", "junk-file", "mixed-sizes", "mixed-formats"])
def test_bad_folders_give_one_line_errors_or_logged_skips_never_a_traceback(tmp_path, capsys, caplog, case):
    caplog.set_level(logging.INFO, logger="purrception")
    root = tmp_path / "images"
    if case == "empty":
        root.mkdir()
    else:
        make_shape_folder(root, 16, "RGB", per_class=4)
    if case == "corrupted":
        (root / "disc" / "000.png").write_bytes((root / "disc" / "001.png").read_bytes()[:40])
    elif case == "one-class":
        for name in ("square", "bar"):
            for f in (root / name).iterdir():
                f.unlink()
            (root / name).rmdir()
    elif case == "junk-file":
        (root / "disc" / "notes.txt").write_text("not an image")
    elif case == "mixed-sizes":
        Image.new("RGB", (24, 20), "red").save(root / "bar" / "big.png")
    elif case == "mixed-formats":  # what a folder gathered from elsewhere holds beside plain RGB PNGs
        Image.new("CMYK", (16, 16), (0, 255, 0, 0)).save(root / "disc" / "print.jpg")
        Image.new("RGB", (16, 16), "blue").convert("P").save(root / "square" / "palette.gif")
        Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(root / "bar" / "scan16.png")
        Image.new("LA", (16, 16), (90, 128)).save(root / "bar" / "grey-alpha.png")
    code = main(["tokenizer", "train", "--images", str(root), "--out", str(tmp_path / "t"), "--steps", "1",
                 "--codebook-size", "16", "--width", "8", "--batch-size", "4", "--resolution", "16",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if case in ("empty", "corrupted"):
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("purr: error:"), err
        assert ("000.png" in lines[0]) if case == "corrupted" else "class sub-folders" in lines[0]
        assert not (tmp_path / "t" / CONFIG_NAME).exists()
    else:
        assert code == 0
        logged = caplog.text
        expected = {"one-class": "unconditional", "junk-file": "notes.txt", "mixed-sizes": "24x20",
                    "mixed-formats": "16-bit grey scaled to 8 bits"}[case]
        assert expected in logged, logged
        if case == "mixed-formats":  # every one of them read (12 + 4), each kind of conversion said once
            assert "16 images in 3 classes" in logged and logged.count("CMYK images") == 1


def test_16_bit_grey_of_either_byte_order_is_inferred_as_one_channel(tmp_path):
    from purrception.data.images import folder_source
    from purrception.data.tokenizer_folder import infer_image_format

    ramp = np.arange(24 * 24).reshape(24, 24) * 100
    for name, dtype in (("big", ">u2"), ("little", "<u2")):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray((ramp + i).astype(dtype)).save(tmp_path / name / f"{i}.tif")
    assert Image.open(tmp_path / "big" / "0.tif").mode == "I;16B"
    assert infer_image_format(folder_source(tmp_path), downsample=4) == (24, 1)
    Image.new("RGB", (24, 24), (200, 10, 10)).save(tmp_path / "little" / "colour.png")
    assert infer_image_format(folder_source(tmp_path), downsample=4) == (24, 3)

