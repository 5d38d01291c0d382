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
    CLASS_CHOSEN,
    CLASS_NONE,
    CLASS_OWN,
    EDIT_INPUT,
    MARK_COLOR,
    REGION_BOX,
    TAU_CONSTANT,
    TAU_SCHEDULE,
    AppSession,
    EditRequest,
    EditSource,
    Limits,
    SampleRequest,
    display_factor,
    entropy_items,
    gallery_items,
    mark_position,
    mask_image,
    parse_edit_form,
    parse_form,
    pixel_to_position,
    python_command,
    python_edit_command,
    to_rgb,
    topk_items,
    upscale,
)
from purrception.cli import build_parser, explain_for, main, subcommand_parser
from purrception.cli.app import MISSING_EXTRA
from purrception.cli.edit import edit_command
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


# -- the Edit tab -----------------------------------------------------------------------------------------------

#: a grid image of class 7 (index 3 of a grid), at the tiny tokenizer's 28x28 with a 7x7 code grid (4x4 pixels)
GRID_SOURCE = EditSource(np.zeros((28, 28), np.uint8), label=7, index=3,
                         request=SampleRequest((7,), 4, "1.0", 1.0, 2, "euler", 0))


def edit_form(**changes):
    """The Edit tab's form with its defaults, as positional values in parse_edit_form's order."""
    values = dict(source=GRID_SOURCE, region="top", box="", class_mode=CLASS_OWN, class_name=None, num_per_image=2,
                  tau=1.0, cfg_scale=1.0, sample_steps=8, solver="euler", seed=0)
    values.update(changes)
    return list(values.values())


def parse_edit(limits=Limits(), **changes) -> EditRequest:
    return parse_edit_form(*edit_form(**changes), class_names=NAMES, image_size=28, side=7, limits=limits)


def test_edit_form_to_inpaint_kwargs():
    request = parse_edit(region="not:centre", class_mode=CLASS_CHOSEN, class_name="4", num_per_image=3.0, tau=0.8,
                         cfg_scale=1.5, sample_steps=12, solver="heun", seed=5)
    assert request == EditRequest(keep="not:centre", class_label=4, num_per_image=3, tau="0.8", cfg_scale=1.5,
                                  sample_steps=12, solver="heun", seed=5)
    assert request.inpaint_kwargs() == {"keep": "not:centre", "class_labels": [4], "num_per_image": 3,
                                        "num_inference_steps": 12, "tau": "0.8", "guidance_scale": 1.5,
                                        "solver": "heun", "seed": 5}
    assert parse_edit().class_label == 7                                        # the grid image's own class
    assert parse_edit(source=EditSource(np.zeros((28, 28), np.uint8))).class_label is None   # an upload has none
    assert parse_edit(class_mode=CLASS_NONE).class_label is None
    assert parse_edit(region=REGION_BOX, box=" 0,0,28,8 ").keep == "0,0,28,8"


@pytest.mark.parametrize("changes, message", [
    ({"source": None}, "`images` is empty; pick an image of the grid or upload one"),
    ({"region": "middle"}, "`keep` must be one of top, bottom"),
    ({"region": REGION_BOX, "box": ""}, "`keep` is a box but the box is empty"),
    ({"region": REGION_BOX, "box": "0,0,40,8"}, "`keep`: box '0,0,40,8' must satisfy 0 <= x0 < x1 <= 28"),
    ({"region": REGION_BOX, "box": "1,2,3"}, "`keep`: a box region is x0,y0,x1,y1"),
    ({"region": REGION_BOX, "box": "1,1,4,4"}, "`keep` '1,1,4,4' keeps no whole code (a code is kept only if all "
                                               "its 4x4 pixels are)"),
    ({"region": REGION_BOX, "box": "0,0,28,28"}, "`keep` '0,0,28,28' keeps every code"),
    ({"class_mode": CLASS_CHOSEN, "class_name": None}, "`class_labels` is empty; pick a class"),
    ({"class_mode": CLASS_CHOSEN, "class_name": "fox"}, "unknown class 'fox'"),
    ({"num_per_image": 0}, "`num_per_image` must be a positive integer, got 0"),
    ({"num_per_image": 17}, "`num_per_image` is at most 16 in this app (start it with a larger `max_images`"),
    ({"sample_steps": 65}, "`sample_steps` is at most 64 in this app"),
    ({"tau": 0}, "`tau` must be a number > 0"),
    ({"solver": "dopri5"}, "`solver` must be one of euler, heun, midpoint"),
    ({"seed": -2}, "`seed` must be a non-negative integer"),
])
def test_edit_form_refusals_name_the_field(changes, message):
    with pytest.raises(PurrError) as err:
        parse_edit(**changes)
    assert message in str(err.value)


def test_edit_errors_in_the_page_name_the_flags_of_purr_edit(pipe, tiny_checkpoint, tmp_path):
    root = build_parser()
    explain = explain_for(*(subcommand_parser(root, [name]) for name in ("app", "sample", "edit")))
    session = AppSession(pipe, tiny_checkpoint, workdir=tmp_path, command=sample_command, explain=explain,
                         edit_command=edit_command)
    shown = []
    for changes in ({"num_per_image": 17}, {"region": REGION_BOX, "box": "0,0,40,8"}, {"region": "bottom",
                                                                                       "box": "", "seed": -1}):
        with pytest.raises(PurrError) as err:
            session.parse_edit(*edit_form(**changes))
        shown.append(session.error_message(err.value))
    assert shown[0] == ("--num-per-image is at most 16 in this app (start it with a larger --max-images to allow "
                        "more), got 17")
    assert shown[1].startswith("--keep: box '0,0,40,8' must satisfy") and shown[2].startswith("--seed must be")


def test_edit_commands_round_trip():
    request = parse_edit(region=REGION_BOX, box="0,0,28,12", class_mode=CLASS_NONE, tau=1e-05, seed=3)
    argv = shlex.split(request.command(edit_command, "/runs/my run", "in dir/a.png", out="out dir"))
    assert argv[:3] == ["purr", "edit", "/runs/my run"]
    assert dict(zip(argv[3::2], argv[4::2])) == {
        "--input": "in dir/a.png", "--out": "out dir", "--keep": "0,0,28,12", "--classes": "none",
        "--num-per-image": "2", "--seed": "3", "--sample-steps": "8", "--solver": "euler", "--tau": "1e-05",
        "--cfg-scale": "1.0"}
    args = build_parser().parse_args(argv[1:])
    assert (args.keep, args.classes, args.num_per_image, args.tau) == ("0,0,28,12", "none", 2, "1e-05")
    assert "class_labels=[None]" in request.command(python_edit_command, "run", "a.png")
    assert GRID_SOURCE.file_name() == "purr-samples/00003_class7.png"


def test_edit_a_grid_image_and_read_where_the_model_invents(pipe, tiny_checkpoint, tmp_path, monkeypatch):
    session = AppSession(pipe, tiny_checkpoint, times=(0.0, 0.5), workdir=tmp_path / "work", command=sample_command,
                         edit_command=edit_command)
    grid_request = parse(classes=["3", "7"], num_images=4, sample_steps=3, seed=1)
    grid = session.generate(grid_request)
    source = EditSource.from_grid(grid_request, grid.pixels, grid.labels, 2)
    assert source.label == 7 and (source.pixels == grid.pixels[2]).all()
    request = session.parse_edit(*edit_form(source=source, num_per_image=3, sample_steps=4, seed=2))
    run = session.edit(source, request)
    out = run.output
    assert out.pixels.shape == (3, 28, 28) and out.labels.tolist() == [7, 7, 7]
    kept = out.keep[0]
    assert kept[:3].all() and not kept[3:].any()             # top: code rows 0..2 (pixels 0..11) wholly kept
    assert (out.codes[:, :3] == out.source_codes[0, :3]).all()
    overview = run.overview_items()
    assert overview[0][0].shape == (224, 224, 3) and (overview[1][0][:96] == 255).all()
    assert (overview[1][0][96:] == 0).all() and len(run.completion_items(NAMES)) == 3

    looked = session.inspect_edit(run, 1)
    assert (looked.image == out.pixels[1]).all() and looked.label == 7       # completion 1, regenerated alone
    assert looked.entropy.shape == (2, 7, 7)
    assert (looked.entropy[:, :3] == 0).all()                  # kept codes: the posterior is their one-hot
    assert (looked.entropy[0, 3:] > 0.5).all()                 # at t = 0 the model is unsure where it invents
    assert len(looked.entropy_gallery()) == 2 and "Completion 1" in looked.summary(NAMES)
    with pytest.raises(PurrError, match="completion 3 is not among these 3"):
        session.inspect_edit(run, 3)

    # the command: purr sample writes the source, purr edit the same completions from it
    sample_line, edit_line = run.command.split(" && ")
    assert sample_line == grid.command and run.files[-1].read_text().strip().splitlines()[-1] == run.command
    monkeypatch.chdir(tmp_path)
    for line in (sample_line, edit_line):
        assert main(shlex.split(line)[1:]) == 0
    with np.load(tmp_path / "purr-edits" / "samples.npz") as data:
        assert (data["images"] == out.pixels).all() and data["labels"].tolist() == [7, 7, 7]


def test_edit_an_upload_with_the_python_command(pipe, tiny_checkpoint, tmp_path):
    session = AppSession(pipe, tiny_checkpoint, workdir=tmp_path / "work")
    image = np.zeros((56, 56, 3), np.uint8)                   # another size, RGB: brought to 28x28 grey
    image[10:40, 20:30] = 255
    source = session.upload_source(image)
    assert source.pixels.shape == (28, 28) and source.label is None and source.file_name() == EDIT_INPUT
    request = session.parse_edit(*edit_form(source=source, region="left", num_per_image=2, sample_steps=2))
    run = session.edit(source, request)
    assert run.output.labels.tolist() == [10, 10]             # own class of an upload: unconditional (null class)
    assert [f.name for f in run.files] == [EDIT_INPUT, "purr-app-edit-command.sh"]
    argv = shlex.split(run.command)
    assert argv[:2] == ["python", "-c"]
    code = argv[2].replace(repr(EDIT_INPUT), repr(str(run.files[0]))).replace(repr("purr-edits"),
                                                                            repr(str(tmp_path / "again")))
    subprocess.run([sys.executable, "-c", code], check=True)
    from PIL import Image
    again = [np.asarray(Image.open(tmp_path / "again" / f"{k:05d}.png")) for k in range(2)]
    assert all((a == b).all() for a, b in zip(again, run.output.pixels))
    with pytest.raises(PurrError, match="`images` is empty"):
        session.upload_source(None)


def test_mask_image_is_the_code_grid_at_pixel_scale():
    keep = np.zeros((7, 7), bool)
    keep[1, 2] = True
    big = mask_image(keep, (28, 28))
    assert big.shape == (28, 28, 3) and set(np.unique(big)) == {0, 255}
    assert (big[4:8, 8:12] == 255).all() and big.sum() == 16 * 3 * 255


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
