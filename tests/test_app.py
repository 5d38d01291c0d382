"""``purr app``'s logic without the page: form values -> pipeline arguments and refusals, the reproducing
``purr sample`` command (run for real), the panel images, the downloads, and the CLI without gradio."""

from __future__ import annotations

import shlex
import subprocess
import sys
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest

from purrception.app.core import (
    ARCHIVE_FOLDER,
    MARK_COLOR,
    TAU_CONSTANT,
    TAU_SCHEDULE,
    AppSession,
    Limits,
    SampleRequest,
    display_factor,
    entropy_items,
    gallery_items,
    mark_position,
    parse_form,
    pixel_to_position,
    python_command,
    to_rgb,
    topk_items,
    upscale,
)
from purrception.cli import build_parser, explain_for, main, subcommand_parser
from purrception.cli.app import MISSING_EXTRA
from purrception.cli.sample import sample_command
from purrception.errors import PurrError
from purrception.pipeline import PurrceptionPipeline

NAMES = [str(i) for i in range(10)]


def form(**changes):
    """The page's form with its defaults, as positional values in parse_form's order."""
    values = dict(classes=[], num_images=8, tau_mode=TAU_CONSTANT, tau=1.0, tau_end=0.6, tau_shape="linear",
                  cfg_scale=1.0, sample_steps=16, solver="euler", seed=0)
    values.update(changes)
    return list(values.values())


def parse(limits=Limits(), names=NAMES, **changes) -> SampleRequest:
    return parse_form(*form(**changes), class_names=names, limits=limits)


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return PurrceptionPipeline.from_pretrained(tiny_checkpoint)


# -- the form ---------------------------------------------------------------------------------------------------


def test_form_to_pipeline_kwargs():
    request = parse(classes=["3", "7"], num_images=5, tau=0.8, cfg_scale=1.3, sample_steps=12.0, solver="heun",
                    seed=4)
    assert request == SampleRequest(classes=(3, 7), num_images=5, tau="0.8", cfg_scale=1.3, sample_steps=12,
                                    solver="heun", seed=4)
    assert request.pipeline_kwargs(10) == {"class_labels": [3, 3, 3, 7, 7], "num_per_class": 1,
                                           "num_inference_steps": 12, "tau": "0.8", "guidance_scale": 1.3,
                                           "solver": "heun", "seed": 4}
    alone = request.image_kwargs(3, 10, times=(0.0, 0.5), topk=4, position=(2, 5))
    assert alone["class_labels"] == [7] and alone["first_index"] == 3 and alone["num_per_class"] == 1
    assert alone["uncertainty_times"] == [0.0, 0.5] and alone["topk"] == 4 and alone["position"] == (2, 5)
    assert request.image_kwargs(0, 10)["topk"] == 0                     # no position: no top-k
    with pytest.raises(PurrError, match="image 5 is not in this grid of 5"):
        request.image_kwargs(5, 10)


def test_form_classes_by_name_and_all():
    names = ["cat", "dog", "owl"]
    assert parse(names=names, classes=["owl", "cat"]).classes == (2, 0)
    every = parse(names=names, classes=[], num_images=5)
    assert every.classes is None and every.labels(3).tolist() == [0, 1, 2, 0, 1]
    with pytest.raises(PurrError, match="unknown class 'fox'"):
        parse(names=names, classes=["fox"])


def test_form_tau_schedule():
    request = parse(tau_mode=TAU_SCHEDULE, tau=1.2, tau_end=0.6, tau_shape="cosine")
    assert request.tau == "cosine:1.2:0.6"
    assert "--tau cosine:1.2:0.6" in request.command(sample_command, "run")


@pytest.mark.parametrize("changes, message", [
    ({"tau": 0}, "`tau` must be a number > 0 or a schedule like linear:1.2:0.6, got 0.0"),
    ({"tau": -0.5}, "`tau` must be a number > 0 or a schedule like linear:1.2:0.6, got -0.5"),
    ({"tau": None}, "`tau` is empty"),
    ({"tau": float("nan")}, "`tau` must be a finite number"),
    ({"tau_mode": TAU_SCHEDULE, "tau": 1.2, "tau_end": 0}, "`tau` must be a number > 0 at both ends of its schedule, "
                                                          "got linear:1.2:0"),
    ({"tau_mode": TAU_SCHEDULE, "tau_end": None}, "`tau` is empty"),
    ({"tau_mode": TAU_SCHEDULE, "tau_shape": "zigzag"}, "unknown schedule shape 'zigzag'"),
    ({"tau_mode": "wobbly"}, "`tau_mode` is either"),
    ({"sample_steps": 0}, "`sample_steps` must be a positive integer, got 0"),
    ({"sample_steps": -3}, "`sample_steps` must be a positive integer, got -3"),
    ({"sample_steps": 2.5}, "`sample_steps` must be a whole number"),
    ({"sample_steps": 65}, "`sample_steps` is at most 64 in this app (start it with a larger `max_steps`"),
    ({"num_images": 0}, "`num_images` must be a positive integer"),
    ({"num_images": 17}, "`num_images` is at most 16 in this app (start it with a larger `max_images`"),
    ({"cfg_scale": "lots"}, "`cfg_scale` must be a number"),
    ({"solver": "dopri5"}, "`solver` must be one of euler, heun, midpoint"),
    ({"seed": -1}, "`seed` must be a non-negative integer"),
])
def test_form_refusals_name_the_field(changes, message):
    with pytest.raises(PurrError) as err:
        parse(**changes)
    assert message in str(err.value)


def test_page_errors_name_the_flags_of_purr_app_and_purr_sample(pipe, tiny_checkpoint, tmp_path):
    """What cli/app.py hands the session: the CLI's own translation, for purr app's and purr sample's flags."""
    root = build_parser()
    explain = explain_for(subcommand_parser(root, ["app"]), subcommand_parser(root, ["sample"]))
    session = AppSession(pipe, tiny_checkpoint, workdir=tmp_path, command=sample_command, explain=explain)
    shown = {}
    for changes in ({"sample_steps": 65}, {"sample_steps": 0}, {"tau": 0}, {"cfg_scale": "lots"}):
        with pytest.raises(PurrError) as err:
            session.parse(*form(**changes))
        shown[next(iter(changes))] = session.error_message(err.value)
    assert shown["sample_steps"] == "--sample-steps must be a positive integer, got 0"
    assert shown["tau"].startswith("--tau must be a number > 0") and shown["cfg_scale"].startswith("--cfg-scale")
    with pytest.raises(PurrError) as err:
        session.parse(*form(sample_steps=65))
    assert session.error_message(err.value) == ("--sample-steps is at most 64 in this app (start it with a larger "
                                                "--max-steps to allow more), got 65")
    library = AppSession(pipe, tiny_checkpoint, workdir=tmp_path / "lib")      # the defaults: Python names
    assert library.error_message(err.value) == str(err.value)


def test_limits_are_the_app_flags():
    assert parse(limits=Limits(max_images=40, max_steps=200), num_images=40, sample_steps=200).sample_steps == 200
    with pytest.raises(PurrError, match="must be positive"):
        Limits(max_images=0)


def test_command_quotes_and_round_trips():
    request = parse(classes=["0", "4"], num_images=4, tau=1e-05, cfg_scale=2.0, seed=9)
    line = request.command(sample_command, "/runs/my run", out="out dir")
    argv = shlex.split(line)
    assert argv[:2] == ["purr", "sample"] and argv[2] == "/runs/my run"
    flags = dict(zip(argv[3::2], argv[4::2]))
    assert flags == {"--out": "out dir", "--classes": "0,4", "--num": "4", "--seed": "9", "--sample-steps": "16",
                     "--solver": "euler", "--tau": "1e-05", "--cfg-scale": "2.0"}
    every = shlex.split(parse(classes=[]).command(sample_command, "run", times=(0.0, 0.5), topk=3, position=(1, 2)))
    assert every[every.index("--classes") + 1] == "all"
    assert every[-6:] == ["--uncertainty-times", "0.0,0.5", "--topk", "3", "--position", "1,2"]


def test_the_library_default_command_is_python_that_writes_the_same_images(pipe, tiny_checkpoint, tmp_path):
    request = parse(classes=["3", "7"], num_images=3, tau_mode=TAU_SCHEDULE, tau=1.2, tau_end=0.7, sample_steps=2,
                    seed=2)
    session = AppSession(pipe, tiny_checkpoint, workdir=tmp_path / "work")
    result = session.generate(request)
    argv = shlex.split(result.command)
    assert argv[:2] == ["python", "-c"] and result.command == request.command(python_command, str(tiny_checkpoint))
    out = tmp_path / "again"
    code = argv[2].replace(repr("purr-samples"), repr(str(out)))
    subprocess.run([sys.executable, "-c", code], check=True)
    with np.load(out / "samples.npz") as data:
        assert (data["images"] == result.pixels).all() and data["labels"].tolist() == [3, 3, 7]


# -- the images -------------------------------------------------------------------------------------------------


def test_pixel_to_position_and_mark_agree():
    size, latent = (224, 224), (7, 7)
    assert pixel_to_position(0, 0, size, latent) == (0, 0)
    assert pixel_to_position(223, 223, size, latent) == (6, 6)
    assert pixel_to_position(95, 33, size, latent) == (1, 2)            # x = column 95 // 32, y = row 33 // 32
    assert pixel_to_position(500, -4, size, latent) == (0, 6)           # clamped into the grid
    marked = mark_position(np.zeros((224, 224), np.uint8), (1, 2), latent)
    ys, xs = np.nonzero((marked == MARK_COLOR).all(-1))
    assert {pixel_to_position(x, y, size, latent) for x, y in zip(xs, ys)} == {(1, 2)}
    assert (marked[32:64, 64:96][3:-3, 3:-3] == 0).all()               # only the outline is drawn


def test_panel_images():
    grey = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    assert to_rgb(grey).shape == (28, 28, 3) and (to_rgb(grey)[..., 1] == grey).all()
    assert display_factor((28, 28)) == 8 and display_factor((256, 256)) == 1
    big = upscale(to_rgb(grey), 8)
    assert big.shape == (224, 224, 3) and (big[8:16, :8] == grey[1, 0]).all()
    items = gallery_items(np.stack([grey, grey]), np.array([3, 7]), NAMES, 2)
    assert [caption for _, caption in items] == ["0: 3", "1: 7"] and items[0][0].shape == (56, 56, 3)
    entropy = np.stack([np.full((7, 7), np.log(32.0)), np.zeros((7, 7))]).astype(np.float32)
    maps = entropy_items(entropy, [0.0, 0.75], float(np.log(32.0)), (224, 224), position=(3, 3))
    assert [m.shape for m, _ in maps] == [(224, 224, 3)] * 2 and maps[0][1] == "t=0.00: 3.47"
    assert maps[1][0][0, 0].sum() < 10 and maps[1][0][96, 96].tolist() == list(MARK_COLOR)  # certain: black
    strip = topk_items(np.stack([grey] * 3), [5, 9, 1], [0.5, 0.3, 0.2], 8, (0, 0), (7, 7))
    assert [caption for _, caption in strip] == ["code 5: p = 0.500", "code 9: p = 0.300", "code 1: p = 0.200"]


# -- the session, on a tiny checkpoint --------------------------------------------------------------------------


def test_command_reproduces_the_page(pipe, tiny_checkpoint, tmp_path):
    session = AppSession(pipe, tiny_checkpoint, times=(0.0, 0.5), topk=3, workdir=tmp_path / "work",
                         command=sample_command)
    request = parse(classes=["3", "7"], num_images=3, tau_mode=TAU_SCHEDULE, tau=1.2, tau_end=0.7,
                    cfg_scale=1.3, sample_steps=3, solver="heun", seed=2)
    result = session.generate(request)
    assert result.pixels.shape == (3, 28, 28) and result.labels.tolist() == [3, 3, 7]
    looked = session.inspect(request, 2, position=(1, 4))
    assert (looked.image == result.pixels[2]).all() and looked.label == 7     # image 2, regenerated alone
    assert looked.entropy.shape == (2, 7, 7) and len(looked.topk_codes) == 3
    assert looked.candidates.shape == (3, 28, 28) and len(looked.topk_gallery()) == 3
    assert looked.enlarged().shape == (224, 224, 3) and len(looked.entropy_gallery()) == 2

    argv = shlex.split(looked.command)                # the grid's command plus the uncertainty flags
    assert argv[0] == "purr" and shlex.split(result.command) == argv[:argv.index("--uncertainty-times")]
    out = tmp_path / "again"
    argv[argv.index("--out") + 1] = str(out)
    assert main(argv[1:]) == 0
    with np.load(out / "samples.npz") as data:
        assert (data["images"] == result.pixels).all() and data["labels"].tolist() == [3, 3, 7]
    with np.load(out / "uncertainty.npz") as data:
        np.testing.assert_allclose(data["entropy"][2], looked.entropy, rtol=1e-5, atol=1e-5)
        assert data["topk_codes"][2].tolist() == looked.topk_codes

    with zipfile.ZipFile(result.archive) as archive:
        names = set(archive.namelist())
        assert {f"{ARCHIVE_FOLDER}/{n}" for n in ("00000_class3.png", "00002_class7.png", "grid.png",
                                                   "samples.npz", "command.sh")} <= names
        assert archive.read(f"{ARCHIVE_FOLDER}/command.sh").decode().strip().splitlines()[-1] == result.command
    assert result.script.read_text().strip().splitlines()[-1] == result.command
    assert "3 images in" in result.summary() and "τ linear:1.2:0.7" in result.summary()


def test_session_refusals(pipe, tiny_checkpoint, tmp_path):
    session = AppSession(pipe, tiny_checkpoint, workdir=tmp_path)
    request = parse(num_images=2, sample_steps=2)
    with pytest.raises(PurrError, match=r"outside the 7x7 code grid"):
        session.inspect(request, 0, position=(7, 0))
    with pytest.raises(PurrError, match="class id 12 is out of range"):
        session.generate(SampleRequest((12,), 1, "1.0", 1.0, 2, "euler", 0))
    flat = SimpleNamespace(has_posterior=False, method=SimpleNamespace(name="cfm", codebook_size=32))
    with pytest.raises(PurrError, match="cfm.*no categorical posterior"):
        AppSession(flat, "run", workdir=tmp_path).inspect(request, 0)
    assert "purrception, 10 classes" in session.describe()


def test_session_cleans_its_own_folder(pipe, tiny_checkpoint):
    session = AppSession(pipe, tiny_checkpoint)
    result = session.generate(parse(num_images=1, sample_steps=1))
    assert result.archive.is_file()
    session.close()
    assert not session.workdir.exists()


# -- the command ------------------------------------------------------------------------------------------------


def test_purr_app_without_gradio_exits_2(monkeypatch, capsys, tiny_checkpoint):
    monkeypatch.setattr("purrception.cli.app.gradio_installed", lambda: False)
    assert main(["app", str(tiny_checkpoint)]) == 2
    assert capsys.readouterr().err.strip() == MISSING_EXTRA == \
        "purr app needs the [app] extra: pip install 'purrception[app]'"


def test_core_and_cli_never_import_gradio():
    code = ("import sys, purrception.app, purrception.cli\npurrception.cli.build_parser()\n"
            "assert 'gradio' not in sys.modules, 'gradio was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_purr_app_refuses_a_bad_port():
    with pytest.raises(SystemExit) as exit_:
        main(["app", "run", "--port", "70000"])
    assert exit_.value.code == 2
