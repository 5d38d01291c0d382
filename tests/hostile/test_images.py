"""Hostile image folders through ``purr encode``: damaged, empty, fake, bomb and giant-header PNGs, symlink loops,
links and labels-file paths out of the folder, non-UTF-8 names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hostile.corpus import bomb_png, non_utf8_name, png_bytes, png_claiming


def _folder(root: Path, bad: dict[str, bytes]) -> Path:
    """Two class folders with two good images each, plus the ``bad`` files (relative path -> bytes)."""
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            (root / c / f"{i}.png").write_bytes(png_bytes(value=40 * i + 20))
    for name, data in bad.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _encode(tok: Path, images: Path, out: Path, *extra) -> list:
    return ["encode", "--tokenizer", tok, "--images", images, "--out", out, "--no-progress", "--workers", "0", *extra]


BAD_IMAGES = {
    "truncated": (png_bytes()[:50], "image file is truncated"),
    "zero-byte": (b"", "Pillow does not recognise it as an image"),
    "fake": (b"this is not a png\n" * 3, "Pillow does not recognise it as an image"),
    "giant-header": (png_claiming(60000, 60000), "it claims 60000x60000 pixels, more than"),
    "decompression-bomb": (bomb_png(), "it claims 10000x10000 pixels, more than"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_a_bad_image_is_refused_in_one_line_naming_it(case, purr, tokenizer_dir, tmp_path):
    data, expected = BAD_IMAGES[case]
    images = _folder(tmp_path / "images", {f"b/{case}.png": data})
    out = tmp_path / "out"
    result = purr(_encode(tokenizer_dir, images, out), untouched=(images,))
    assert f"{case}.png" in result.message and expected in result.message, result.message
    assert not (out / "manifest.json").exists()


def test_a_symlink_loop_is_not_followed(purr, tokenizer_dir, tmp_path, capsys):
    from purrception.cli import main

    images = _folder(tmp_path / "images", {})
    (images / "a" / "loop").symlink_to("..", target_is_directory=True)
    (images / "b" / "self").symlink_to(".", target_is_directory=True)
    assert main(["encode", "--tokenizer", str(tokenizer_dir), "--images", str(images), "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 0
    import json

    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["num_items"] == 4


def test_a_link_out_of_the_folder_is_not_followed(purr, tokenizer_dir, unreadable_outside, tmp_path):
    images = tmp_path / "images"
    (images / "c").mkdir(parents=True)
    (images / "c" / "secret.png").symlink_to(unreadable_outside / "secret.png")   # a damaged image, if it were read
    (images / "c" / "out").symlink_to(unreadable_outside, target_is_directory=True)
    result = purr(_encode(tokenizer_dir, images, tmp_path / "out"), untouched=(images,))
    assert "hold no images" in result.message and "cannot read image" not in result.message, result.message
    assert not (tmp_path / "out").exists()


def _labels(images: Path, names: list[str]) -> Path:
    path = images.parent / "labels.csv"
    path.write_text("".join(f"{n},0\n" for n in names))
    return path


@pytest.mark.parametrize("entry", ["../outside/secret.png", "ABSOLUTE", "a/../../outside/secret.png"])
def test_a_labels_file_path_outside_the_folder_is_refused_before_it_is_opened(entry, purr, tokenizer_dir,
                                                                               unreadable_outside, tmp_path):
    images = _folder(tmp_path / "images", {})
    (tmp_path / "outside").symlink_to(unreadable_outside, target_is_directory=True)
    entry = str(unreadable_outside / "secret.png") if entry == "ABSOLUTE" else entry
    labels = _labels(images, ["a/0.png", entry])
    result = purr(_encode(tokenizer_dir, images, tmp_path / "out", "--labels", labels), untouched=(images,))
    assert "outside" in result.message and "cannot read image" not in result.message, result.message
    assert not (tmp_path / "out").exists()


def test_a_non_utf8_file_name_is_read_and_named_in_errors(tokenizer_dir, tmp_path):
    images = _folder(tmp_path / "images", {})
    non_utf8_name(images / "b", b"caf\xe9-\xff", png_bytes()[:50])   # Latin-1 bytes: not UTF-8
    proc = subprocess.run([sys.executable, "-m", "purrception", *map(str, _encode(tokenizer_dir, images,
                                                                                   tmp_path / "out"))],
                          capture_output=True, timeout=300)
    err = proc.stderr.decode("utf-8", "replace")
    lines = [line for line in err.splitlines() if line.startswith("purr: error:")]
    assert proc.returncode == 2 and "Traceback" not in err and len(lines) == 1, err[-3000:]
    assert "cannot read image" in lines[0] and "caf" in lines[0]
    assert not (tmp_path / "out" / "manifest.json").exists()
