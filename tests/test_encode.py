"""``purr encode``: image folders and the embedded data -> token shards; resumption; two-process encoding."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from purrception.cli import main
from purrception.data.embedded import load_embedded_mnist
from purrception.data.encode import EncodeOptions, encode_source
from purrception.data.images import (
    ConversionLog,
    ImageOrigin,
    describe_conversion,
    embedded_source,
    folder_source,
    image_origin,
    image_to_tensor,
    prepare_image,
    resize_center_crop,
)
from purrception.data.reading import read_images
from purrception.data.shards import TokenShards, codes_dtype_for, parts_dir
from purrception.errors import PurrError
from purrception.pixels import images_to_tensor
from purrception.tokenizers.conv_vq import ConvVQ, ConvVQConfig
from purrception.tokenizers.store import load_tokenizer, save_tokenizer

CLASSES = ["cat", "dog", "owl"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)  # random weights: encoding needs no training
    return save_tokenizer(ConvVQ(ConvVQConfig(codebook_size=32, width=8)), tmp_path_factory.mktemp("tok") / "tok")


def _random_image(rng: np.random.Generator, size: tuple[int, int], mode: str) -> Image.Image:
    w, h = size
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory) -> Path:
    """3 class folders x 5 images of assorted sizes and modes (resize + center crop + grey conversion)."""
    root = tmp_path_factory.mktemp("images") / "train"
    rng = np.random.default_rng(0)
    sizes = [(40, 32), (28, 28), (64, 80), (31, 57), (100, 100)]
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i, size in enumerate(sizes):
            _random_image(rng, size, "RGB" if i % 2 else "L").save(root / c / f"{c}{i}.png")
    (root / "owl" / "notes.txt").write_text("not an image")
    return root


def _expected_codes(tok, files, flip=False) -> np.ndarray:
    x = torch.stack([image_to_tensor(Image.open(f), tok.image_size, tok.image_channels) for f in files])
    with torch.inference_mode():
        codes = tok.encode(x)
        if flip:
            codes = torch.stack([codes, tok.encode(x.flip(-1))], 1).flatten(0, 1)
    return codes.numpy()


def test_resize_center_crop():
    img = Image.fromarray(np.arange(60 * 100, dtype=np.uint32).reshape(60, 100).astype(np.uint8))
    assert resize_center_crop(img, 28).size == (28, 28)
    assert resize_center_crop(img, 28) is not img
    sq = Image.new("RGB", (28, 28))
    assert resize_center_crop(sq, 28) is sq
    x = image_to_tensor(Image.new("RGB", (50, 70), (255, 0, 0)), 16, 3)
    assert x.shape == (3, 16, 16) and torch.equal(x[0], torch.ones(16, 16)) and torch.equal(x[1], -torch.ones(16, 16))


def test_codes_dtype_is_the_smallest_that_holds_k():
    assert codes_dtype_for(256) == np.uint8
    assert codes_dtype_for(257) == np.uint16
    assert codes_dtype_for(16384) == np.uint16
    assert codes_dtype_for(65537) == np.uint32


def test_encode_class_folder_cli(tokenizer_dir, class_folder, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(["encode", "--tokenizer", str(tokenizer_dir), "--images", str(class_folder), "--out", str(out),
                 "--batch-size", "4", "--part-size", "6", "--workers", "0", "--no-progress"]) == 0
    shards = TokenShards.open(out)
    tok = load_tokenizer(tokenizer_dir)
    files = sorted(class_folder.rglob("*.png"))
    assert len(shards) == 15 and shards.codes.dtype == np.uint8 and shards.latent_shape == (7, 7)
    assert shards.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert shards.num_classes == 3 and shards.manifest["source"]["class_names"] == CLASSES
    assert shards.identity == tok.identity()
    assert np.array_equal(shards.codebook, tok.codebook.numpy())
    assert shards.manifest["preprocessing"]["image_size"] == 28 and shards.manifest["preprocessing"]["flip"] is False
    assert np.array_equal(shards.codes, _expected_codes(tok, files))
    assert not parts_dir(out).exists()
    assert "15 items" in capsys.readouterr().out
    # re-running a finished encode does nothing; other inputs into the same folder are refused
    before = (out / "codes.npy").stat().st_mtime_ns
    assert main(["encode", "--tokenizer", str(tokenizer_dir), "--images", str(class_folder), "--out", str(out),
                 "--batch-size", "4", "--part-size", "6", "--workers", "0", "--no-progress"]) == 0
    assert (out / "codes.npy").stat().st_mtime_ns == before
    assert main(["encode", "--tokenizer", str(tokenizer_dir), "--images", str(class_folder), "--out", str(out),
                 "--flip", "--no-progress"]) == 2
    assert "already holds token shards" in capsys.readouterr().err


def test_encode_flat_folder_with_labels_and_flip(tokenizer_dir, class_folder, tmp_path):
    files = sorted(class_folder.rglob("*.png"))[::2]
    lines = ["filename,label"] + [f"{f.relative_to(class_folder).as_posix()},{f.parent.name}" for f in files]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "flat"
    assert main(["encode", "--tokenizer", str(tokenizer_dir), "--images", str(class_folder), "--labels",
                 str(tmp_path / "labels.csv"), "--out", str(out), "--flip", "--batch-size", "3",
                 "--workers", "0", "--no-progress"]) == 0
    shards = TokenShards.open(out)
    names = [f.parent.name for f in files]
    assert len(shards) == 2 * len(files)
    assert shards.labels.tolist() == [CLASSES.index(n) for n in names for _ in range(2)]
    assert shards.manifest["preprocessing"]["flip"] is True
    assert np.array_equal(shards.codes, _expected_codes(load_tokenizer(tokenizer_dir), files, flip=True))


def test_folder_errors(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(PurrError, match="no class sub-folders"):
        folder_source(tmp_path / "flat")
    (tmp_path / "labels.csv").write_text("a.png,0\nmissing.png,1\n")
    with pytest.raises(PurrError, match="missing.png not found"):
        folder_source(tmp_path / "flat", tmp_path / "labels.csv")
    with pytest.raises(PurrError, match="not found"):
        folder_source(tmp_path / "nope")


def test_encode_embedded_cli(tokenizer_dir, tmp_path):
    out = tmp_path / "heldout"
    assert main(["encode", "--tokenizer", str(tokenizer_dir), "--embedded", "heldout", "--out", str(out),
                 "--batch-size", "250", "--part-size", "500", "--no-progress"]) == 0
    shards = TokenShards.open(out)
    data = load_embedded_mnist("heldout")
    tok = load_tokenizer(tokenizer_dir)
    assert len(shards) == 1000 and np.array_equal(shards.labels, data.labels)
    assert shards.manifest["source"]["type"] == "embedded-mnist" and shards.num_classes == 10
    with torch.inference_mode():
        expected = np.concatenate([tok.encode(images_to_tensor(data.images[i:i + 250])).numpy()
                                   for i in range(0, 1000, 250)])
    assert np.array_equal(shards.codes, expected)


def test_encode_refuses_a_foreign_non_empty_out_but_takes_an_empty_one(tokenizer_dir, tmp_path, capsys):
    args = ["encode", "--tokenizer", str(tokenizer_dir), "--embedded", "heldout", "--batch-size", "500",
            "--part-size", "500", "--no-progress", "--out"]
    samples = tmp_path / "samples"
    samples.mkdir()
    for i in range(2):
        Image.new("L", (8, 8), i).save(samples / f"{i:04d}.png")
    before = sorted(p.name for p in samples.iterdir())
    assert main([*args, str(samples)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(samples) in err and "--out" in err
    assert sorted(p.name for p in samples.iterdir()) == before  # not even .parts/ was created
    (tmp_path / "file").write_text("x")
    assert main([*args, str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*args, str(empty)]) == 0 and len(TokenShards.open(empty)) == 1000
    debris = tmp_path / "debris"  # killed before its plan was written: only .parts/ is there
    parts_dir(debris).mkdir(parents=True)
    (parts_dir(debris) / ".plan.json.x1y2.tmp").write_bytes(b"torn write")
    assert main([*args, str(debris)]) == 0 and len(TokenShards.open(debris)) == 1000


def _encode_cli(tokenizer_dir: Path, root: Path, out: Path, *extra: str) -> int:
    return main(["encode", "--tokenizer", str(tokenizer_dir), "--images", str(root), "--out", str(out),
                 "--no-progress", *extra])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("purr: error: "), err
    return err


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("damage", ["truncated", "not-an-image"])
def test_a_corrupted_image_is_one_error_line_naming_the_file(tokenizer_dir, tmp_path, workers, damage, capsys):
    root = tmp_path / "images"
    (root / "cat").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (28, 28), (i, i, i)).save(root / "cat" / f"{i}.png")
    broken = root / "cat" / "1.png"
    if damage == "truncated":
        broken.write_bytes(broken.read_bytes()[:40])  # a valid header, truncated pixel data
    else:
        broken.write_text("an image suffix, but text inside")
    assert _encode_cli(tokenizer_dir, root, tmp_path / "out", "--workers", workers) == 2
    err = _one_error_line(capsys)
    assert err.startswith("purr: error: cannot read image") and str(broken) in err and "remove or fix" in err
    if damage == "not-an-image":
        assert "does not recognise it as an image" in err


def _conversions(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "purrception.data.images" and r.getMessage().startswith(("resizing", "converting"))]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_encode_says_once_per_distinct_conversion(tokenizer_dir, class_folder, tmp_path, workers, caplog):
    caplog.set_level(logging.INFO, logger="purrception")
    assert _encode_cli(tokenizer_dir, class_folder, tmp_path / "out", "--batch-size", "4", "--workers",
                       workers) == 0
    # 3 classes x the same 5 (size, mode) kinds: one line per kind; 28x28 L is what the tokenizer takes
    assert sorted(_conversions(caplog)) == [
        "converting 28x28 RGB images to 28x28 L",
        "resizing 100x100 L images to 28x28 L (shorter side to 28)",
        "resizing 31x57 RGB images to 28x28 L (shorter side to 28, centre crop)",
        "resizing 40x32 L images to 28x28 L (shorter side to 28, centre crop)",
        "resizing 64x80 L images to 28x28 L (shorter side to 28, centre crop)",
    ]


def test_images_already_at_the_tokenizer_size_log_no_conversion(tokenizer_dir, tmp_path, caplog):
    root = tmp_path / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        Image.new("L", (28, 28), 7).save(root / c / "0.png")
    caplog.set_level(logging.INFO, logger="purrception")
    assert _encode_cli(tokenizer_dir, root, tmp_path / "out", "--workers", "0") == 0
    assert _conversions(caplog) == []


def test_transparency_is_composited_on_white():
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent black
    half = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    assert (prepare_image(clear, 8, 3) == 255).all() and (prepare_image(clear, 8, 1) == 255).all()
    assert np.allclose(prepare_image(half, 8, 3), 127, atol=1)
    grey = Image.new("LA", (8, 8), (0, 0))
    assert (prepare_image(grey, 4, 1) == 255).all()
    palette = Image.new("P", (8, 8), 3)
    palette.info["transparency"] = 3
    assert (prepare_image(palette, 8, 3) == 255).all()
    opaque = Image.new("RGBA", (8, 8), (10, 20, 30, 255))
    assert (prepare_image(opaque, 8, 3) == [10, 20, 30]).all()
    assert describe_conversion(ImageOrigin(72, 72, "RGBA", True), 32, 3) == (
        "resizing 72x72 RGBA images to 32x32 RGB (shorter side to 32; transparency composited on white)")
    assert describe_conversion(ImageOrigin(8, 8, "RGBA", True), 8, 3) == (
        "converting 8x8 RGBA images to 8x8 RGB (transparency composited on white)")
    assert describe_conversion(ImageOrigin(8, 8, "RGB", False), 8, 3) is None


def test_16_bit_grey_pngs_are_scaled_to_8_bits_not_clipped(tmp_path):
    ramp = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)  # 0, 1, 128, 255 in 8 bits
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    with Image.open(tmp_path / "wide.png") as img:
        assert img.mode == "I;16"
        grey, rgb = prepare_image(img, 4, 1), prepare_image(img, 4, 3)
        origin = image_origin(img)
    assert (grey == [0, 1, 128, 255]).all() and (rgb == grey[..., None]).all()
    assert describe_conversion(origin, 4, 1) == "converting 4x4 I;16 images to 4x4 L (16-bit grey scaled to 8 bits)"


def test_conversion_log_says_each_kind_once(caplog):
    caplog.set_level(logging.INFO, logger="purrception")
    conversions = ConversionLog(16, 3)
    a, b, same = ImageOrigin(20, 16, "L", False), ImageOrigin(20, 16, "RGBA", True), ImageOrigin(16, 16, "RGB", False)
    conversions.note([a, a, same])
    conversions.note([b, a, b])
    assert _conversions(caplog) == [describe_conversion(a, 16, 3), describe_conversion(b, 16, 3)]


@pytest.mark.parametrize("channels", [1, 3])
def test_read_images_matches_the_encode_preprocessing(class_folder, channels, caplog):
    source = folder_source(class_folder)
    files = sorted(class_folder.rglob("*.png"))
    expected = np.stack([prepare_image(Image.open(f), 16, channels) for f in files])
    caplog.set_level(logging.INFO, logger="purrception")
    images = read_images(source, 16, channels)
    assert images.dtype == np.uint8 and images.shape == ((15, 16, 16) if channels == 1 else (15, 16, 16, 3))
    assert np.array_equal(images, expected)
    assert len(_conversions(caplog)) == 5  # one per distinct (size, mode), none at 16x16 already
    caplog.clear()
    assert np.array_equal(read_images(source, 16, channels, workers=2), expected)
    assert len(_conversions(caplog)) == 5


def test_read_images_refuses_too_much_memory_and_unreadable_images(class_folder, tmp_path):
    source = folder_source(class_folder)
    with pytest.raises(PurrError, match=r"15 images at 16x16x3 .* GiB limit; use a smaller `resolution` or a subset"):
        read_images(source, 16, 3, max_bytes=15 * 16 * 16 * 3 - 1)
    assert read_images(source, 16, 3, max_bytes=15 * 16 * 16 * 3).shape == (15, 16, 16, 3)
    with pytest.raises(PurrError, match="`channels` must be 1 or 3"):
        read_images(source, 16, 4)
    root = tmp_path / "images"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(PurrError, match="cannot read image .*0.png.*remove or fix the file"):
        read_images(folder_source(root), 8, 1, workers=2)


def _grey_pngs(folder: Path, n: int, size: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("L", (size, size), 10 * i).save(folder / f"{i}.png")


def test_bad_folders_are_one_error_line_and_write_nothing(tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _encode_cli(tokenizer_dir, empty, out) == 2
    err = _one_error_line(capsys)
    assert "holds no class sub-folders and no images" in err and "ROOT/<class>/" in err
    assert "nothing was written" in err

    hollow = tmp_path / "hollow"  # class folders, but no images in any
    (hollow / "cat").mkdir(parents=True)
    (hollow / "dog").mkdir()
    (hollow / "dog" / "notes.txt").write_text("x")
    assert _encode_cli(tokenizer_dir, hollow, out) == 2
    err = _one_error_line(capsys)
    assert "class folders of" in err and "cat, dog" in err and "hold no images" in err
    assert "nothing was written" in err

    flat = tmp_path / "flat"  # images, but no class folders and no --labels
    _grey_pngs(flat, 2)
    assert _encode_cli(tokenizer_dir, flat, out) == 2
    err = _one_error_line(capsys)
    assert "no class sub-folders" in err and "--labels FILE" in err and "nothing was written" in err
    assert not out.exists()


def test_odd_but_usable_folders_encode_and_say_what_they_skip(tokenizer_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="purrception")
    root = tmp_path / "images"
    _grey_pngs(root / "cat", 2)
    _grey_pngs(root / "dog", 2, size=12)
    for name in ("notes.txt", ".DS_Store", "Thumbs.db"):
        (root / "dog" / name).write_bytes(b"junk")
    _grey_pngs(root, 1)  # an image next to the class folders
    assert _encode_cli(tokenizer_dir, root, tmp_path / "out", "--workers", "0") == 0
    shards = TokenShards.open(tmp_path / "out")
    assert len(shards) == 4 and shards.manifest["source"]["class_names"] == ["cat", "dog"]
    messages = [r.getMessage() for r in caplog.records]
    skipped = [m for m in messages if m.startswith("skipped")]
    assert len(skipped) == 1 and "skipped 3 non-image file(s)" in skipped[0]
    loose = [r for r in caplog.records if "directly in" in r.getMessage()]
    assert len(loose) == 1 and loose[0].levelno == logging.WARNING and "'0.png'" in loose[0].getMessage()
    assert sorted(_conversions(caplog)) == ["resizing 12x12 L images to 28x28 L (shorter side to 28)",
                                            "resizing 8x8 L images to 28x28 L (shorter side to 28)"]


def test_a_single_class_folder_encodes_with_a_warning(tokenizer_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="purrception")
    root = tmp_path / "images"
    _grey_pngs(root / "cat", 3, size=28)
    assert _encode_cli(tokenizer_dir, root, tmp_path / "out", "--workers", "0") == 0
    assert TokenShards.open(tmp_path / "out").num_classes == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "one class ('cat')" in warnings[0] and "unconditional" in warnings[0]


class _Killed(Exception):
    pass


def test_killed_run_resumes_to_identical_shards(tokenizer_dir, class_folder, tmp_path):
    options = EncodeOptions(batch_size=2, part_size=4, flip=True, progress=False)
    source = folder_source(class_folder)
    encode_source(load_tokenizer(tokenizer_dir), source, tmp_path / "straight", options)

    out = tmp_path / "resumed"
    tok = load_tokenizer(tokenizer_dir)
    real_encode, calls = tok.encode, []

    def dying_encode(x):
        calls.append(len(x))
        if len(calls) == 6:  # mid-way through part 2 (of 4)
            raise _Killed
        return real_encode(x)

    tok.encode = dying_encode
    with pytest.raises(_Killed):
        encode_source(tok, source, out, options)
    assert sorted(p.name for p in parts_dir(out).glob("part-*.npz")) == ["part-000000.npz", "part-000001.npz"]
    assert not (out / "manifest.json").exists()
    (parts_dir(out) / ".part-000002.npz.x1y2.tmp").write_bytes(b"torn write")  # debris of a killed writer

    with pytest.raises(PurrError, match="unfinished encode of different inputs"):
        encode_source(load_tokenizer(tokenizer_dir), source, out, EncodeOptions(batch_size=2, part_size=4,
                                                                               progress=False))
    calls.clear()
    tok.encode = lambda x: (calls.append(len(x)), real_encode(x))[1]
    encode_source(tok, source, out, options)
    assert len(calls) == 4  # only parts 2 and 3 are encoded (4 + 3 images in batches of 2)
    for name in ("codes.npy", "labels.npy", "codebook.npy"):
        assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    assert json.loads((out / "manifest.json").read_text()) == json.loads(
        (tmp_path / "straight" / "manifest.json").read_text())
    assert not parts_dir(out).exists()


def test_two_process_encode_matches_single_process(tokenizer_dir, class_folder, tmp_path):
    args = ["encode", "--tokenizer", str(tokenizer_dir), "--images", str(class_folder), "--batch-size", "2",
            "--part-size", "3", "--workers", "0", "--no-progress"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each torchrun worker (OMP_NUM_THREADS=1)
    try:
        assert main(args + ["--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "purrception", *args, "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("codes.npy", "labels.npy", "codebook.npy"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert TokenShards.open(tmp_path / "two").manifest == TokenShards.open(tmp_path / "one").manifest
    assert proc.stdout.count("15 items") == 1  # only rank 0 reports


def test_an_encode_planned_before_plans_had_a_version_resumes_to_identical_shards(tokenizer_dir, tmp_path):
    root, rng = tmp_path / "images", np.random.default_rng(1)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            _random_image(rng, (20, 20), "RGB").save(root / c / f"{i}.png")
    rgba = rng.integers(0, 256, (20, 20, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(np.arange(20) < 10, 0, 255)[:, None]  # top half transparent
    Image.fromarray(rgba, "RGBA").save(root / "a" / "2.png")  # item 2: part 1 of 3
    options = EncodeOptions(batch_size=2, part_size=2, progress=False)
    source = folder_source(root)
    encode_source(load_tokenizer(tokenizer_dir), source, tmp_path / "straight", options)

    out, tok = tmp_path / "old", load_tokenizer(tokenizer_dir)
    real_encode, calls = tok.encode, []

    def dying_encode(x):
        calls.append(len(x))
        if len(calls) == 3:  # parts 0 and 1 are on disk
            raise _Killed
        return real_encode(x)

    tok.encode = dying_encode
    with pytest.raises(_Killed):
        encode_source(tok, source, out, options)
    plan_file = parts_dir(out) / "plan.json"
    plan = json.loads(plan_file.read_text())
    assert plan["version"] == 2 and plan["preprocessing"]["alpha"] == "composited on white"
    del plan["version"], plan["preprocessing"]["alpha"]  # the layout before plans had a version
    plan_file.write_text(json.dumps(plan))
    with np.load(parts_dir(out) / "part-000001.npz") as part:  # its transparent image, as the old rule made it
        codes, labels = part["codes"], part["labels"]
    np.savez(parts_dir(out) / "part-000001.npz", codes=(codes + 1) % 32, labels=labels)

    calls.clear()
    tok.encode = lambda x: (calls.append(len(x)), real_encode(x))[1]
    encode_source(tok, source, out, options)
    assert calls == [2, 2]  # part 0 is kept; part 1 (transparent image) and part 2 are encoded
    for name in ("codes.npy", "labels.npy", "codebook.npy", "manifest.json"):
        assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


def test_an_encode_plan_of_a_newer_version_is_refused_in_one_line(tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    parts_dir(out).mkdir(parents=True)
    (parts_dir(out) / "plan.json").write_text(json.dumps({"version": 3}))
    with pytest.raises(PurrError, match=r"plan.json is encode plan format version 3 \(this purrception reads 1 to "
                                        r"2\): written by a newer purrception; upgrade purrception to read it$"):
        encode_source(load_tokenizer(tokenizer_dir), embedded_source("heldout"), out, EncodeOptions(progress=False))
