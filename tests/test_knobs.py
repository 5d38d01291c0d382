"""The sampler's knobs: one rule each (``SamplerSettings``), one check of the temperature (the method's), one name
per quantity, and library errors that name parameters, which the CLI (and ``purr app``) turns into flags."""

from __future__ import annotations

import ast
import inspect
import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import purrception
from purrception.cli import build_parser, flag_message, main, subcommand_parser
from purrception.errors import PARAMETER, PurrError
from purrception.evaluation.evaluate import EvalSettings
from purrception.flows.base import METHODS
from purrception.pipeline import PurrceptionPipeline
from purrception.sampling.schedules import Schedule
from purrception.sampling.settings import SamplerSettings
from purrception.studies.core import StudyStore

PACKAGE = Path(purrception.__file__).parent


# -- SamplerSettings checks itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, message", [
    ({"sample_steps": 0}, "`sample_steps` must be a positive integer, got 0"),
    ({"sample_steps": -2}, "`sample_steps` must be a positive integer, got -2"),
    ({"sample_steps": True}, "`sample_steps` must be a positive integer, got True"),
    ({"sample_steps": 2.0}, "`sample_steps` must be a positive integer, got 2.0"),
    ({"sample_steps": "5"}, "`sample_steps` must be a positive integer, got '5'"),
    ({"tau": 0}, "`tau` must be a number > 0 or a schedule like linear:1.2:0.6, got 0"),
    ({"tau": -1.5}, "`tau` must be a number > 0 or a schedule like linear:1.2:0.6, got -1.5"),
    ({"tau": math.inf}, "`tau` must be a number > 0 or a schedule like linear:1.2:0.6, got inf"),
    ({"tau": True}, "`tau` must be a number > 0, a schedule like linear:1.2:0.6, or a callable of t, got True"),
    ({"tau": None}, "`tau` must be a number > 0, a schedule like linear:1.2:0.6, or a callable of t, got None"),
    ({"tau": "0"}, "`tau` must be a number > 0 or a schedule like linear:1.2:0.6, got 0.0"),
    ({"tau": "linear:1.2:0"}, "`tau` must be a number > 0 at both ends of its schedule, got linear:1.2:0"),
    ({"tau": Schedule("cosine", -1.0, 1.0)}, "`tau` must be a number > 0 at both ends of its schedule, "
                                             "got cosine:-1:1"),
    ({"tau": "linear:x:1"}, "`tau` must be a number or SHAPE:START:END with numbers, got 'linear:x:1'"),
    ({"tau": "nan"}, "`tau` must be finite, got 'nan'"),
    ({"cfg_scale": math.nan}, "`cfg_scale` must be a finite number or a schedule like linear:1.2:0.6, got nan"),
    ({"cfg_scale": Schedule("linear", 1.0, math.inf)}, "`cfg_scale` must be a finite number at both ends of its "
                                                       "schedule, got linear:1:inf"),
    ({"cfg_scale": "1:2"}, "`cfg_scale` must be a number or SHAPE:START:END"),
    ({"solver": "rk4"}, "unknown `solver` 'rk4'; choose one of: euler, heun, midpoint, dopri5, bosh3, adaptive_heun"),
    ({"solver": "heun:1e-3"}, "`solver` 'heun' is a fixed-grid solver and takes no tolerance (got ':1e-3')"),
    ({"solver": "dopri5:0"}, "`solver` tolerance must be a number > 0, e.g. dopri5:1e-4; got '0'"),
    ({"solver": "bosh3:abc"}, "`solver` tolerance must be a number > 0, e.g. bosh3:1e-4; got 'abc'"),
    ({"solver": 3}, "`solver` must be a solver name like 'euler' or 'dopri5:1e-4', got 3"),
])
def test_sampler_settings_refuse_bad_knobs_naming_the_field(fields, message):
    with pytest.raises(PurrError) as err:
        SamplerSettings(**fields)
    assert str(err.value).startswith(message), str(err.value)


def test_sampler_settings_normalise_what_they_accept():
    s = SamplerSettings(sample_steps=np.int64(7), tau=2, cfg_scale="linear:1:3", solver="dopri5:1e-4")
    assert (s.sample_steps, s.tau, s.cfg_scale, s.solver) == (7, 2.0, Schedule("linear", 1.0, 3.0), "dopri5:1e-4")
    assert type(s.sample_steps) is int and type(s.tau) is float
    assert SamplerSettings(cfg_scale=-2).cfg_scale == -2.0                     # guidance may be any finite number
    assert SamplerSettings(tau="cosine:1.2:0.6").record() == {"sample_steps": 100, "tau": "cosine:1.2:0.6",
                                                             "cfg_scale": 1.0, "solver": "euler"}
    with pytest.raises(Exception):                                              # frozen: no unchecked changes
        s.tau = 0.0


def test_callables_are_allowed_but_not_recordable():
    s = SamplerSettings(tau=lambda t: 1.0 - 0.5 * t)
    assert s.tau_at(1.0) == 0.5 and s.constant_tau is None
    with pytest.raises(PurrError, match="^`tau` is a function, which cannot be recorded"):
        s.record()
    with pytest.raises(PurrError, match="^`cfg_scale` is a function"):
        EvalSettings(cfg_scale=lambda t: 1.0).check()


@given(st.floats(min_value=1e-300, max_value=1e300), st.floats(min_value=1e-300, max_value=1e300))
def test_any_positive_finite_temperature_and_schedule_is_accepted(a, b):
    assert SamplerSettings(tau=a).tau == a
    assert SamplerSettings(tau=f"linear:{a!r}:{b!r}").tau == Schedule("linear", a, b)


@given(st.one_of(st.floats(max_value=0.0), st.just(math.inf), st.just(math.nan)), st.floats(1e-6, 10.0))
def test_a_temperature_at_or_below_zero_anywhere_is_refused(bad, good):
    for tau in (bad, Schedule("linear", good, bad), Schedule("cosine", bad, good)):
        with pytest.raises(PurrError, match="^`tau` must be a number > 0"):
            SamplerSettings(tau=tau)


@given(st.integers(min_value=-10**6, max_value=0))
def test_non_positive_step_counts_are_refused(n):
    with pytest.raises(PurrError, match=f"^`sample_steps` must be a positive integer, got {n}$"):
        SamplerSettings(sample_steps=n)


def test_eval_settings_are_checked_by_the_same_rule_and_record_sample_steps():
    with pytest.raises(PurrError, match="^`sample_steps` must be a positive integer, got 0$"):
        EvalSettings(sample_steps=0)
    settings = EvalSettings(sample_steps=3, tau="linear:1:0.5")
    assert settings.tau == Schedule("linear", 1.0, 0.5) and settings.sampler().sample_steps == 3


def test_the_pipeline_sampler_uses_the_library_names_and_the_call_diffusers_names(tiny_checkpoint):
    pipe = PurrceptionPipeline.from_pretrained(tiny_checkpoint)
    assert list(inspect.signature(pipe.sampler).parameters) == ["sample_steps", "tau", "cfg_scale", "solver"]
    assert pipe.sampler(sample_steps=3, cfg_scale="linear:1:2") == SamplerSettings(3, 1.0, Schedule("linear", 1, 2))
    call = inspect.signature(pipe.__call__).parameters
    assert {"num_inference_steps", "guidance_scale"} <= set(call) and not {"sample_steps", "cfg_scale"} & set(call)


# -- whether a method has a temperature is the method's ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_method_property_decides_tau_for_every_method(name):
    method = METHODS[name](torch.randn(16, 4))
    method.check_sampler(SamplerSettings(tau=1.0))                      # 1 means "no temperature": always fine
    for tau in (0.5, "linear:1.2:0.6"):
        if METHODS[name].has_temperature:
            method.check_sampler(SamplerSettings(tau=tau))
        else:
            with pytest.raises(PurrError, match=f"^`tau` has no meaning for {name} \\(it has no logits\\)"):
                method.check_sampler(SamplerSettings(tau=tau))
    assert {n for n, cls in METHODS.items() if not cls.has_temperature} == {"cfm", "cfm-endpoint"}


# -- library errors name parameters, never flags ----------------------------------------------------------------


def _message_strings(tree: ast.AST):
    """Every string literal (and f-string part) inside a ``raise ...(...)`` or a ``PurrError(...)``, once."""
    seen = set()
    for node in ast.walk(tree):
        roots = []
        if isinstance(node, ast.Raise) and node.exc is not None:
            roots.append(node.exc)
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "PurrError":
            roots.append(node)
        for root in roots:
            for sub in ast.walk(root):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and id(sub) not in seen:
                    seen.add(id(sub))
                    yield sub.lineno, sub.value


def test_no_library_error_message_names_a_cli_flag():
    modules = [p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] not in ("cli", "app")]
    assert len(modules) > 50 and PACKAGE / "pipeline.py" in modules
    found = [f"{path.relative_to(PACKAGE)}:{line}: {text!r}"
             for path in modules for line, text in _message_strings(ast.parse(path.read_text()))
             if re.search(r"--[a-z]", text)]
    assert not found, "library messages must name parameters (see purrception.errors):\n" + "\n".join(found)


def test_the_scan_sees_a_flag_in_a_raise():
    tree = ast.parse('def f(x):\n    raise PurrError(f"{x} is bad; pass --tokenizer PATH")\n')
    assert [t for _, t in _message_strings(tree) if re.search(r"--[a-z]", t)] == [" is bad; pass --tokenizer PATH"]


def test_flag_message_rewrites_only_the_parameters_the_parser_defines():
    root = build_parser()
    sample, train = subcommand_parser(root, ["sample"]), subcommand_parser(root, ["train"])
    assert PARAMETER.findall("`tau` and `tokenizer=PATH` but not `purr encode`") == [("tau", ""),
                                                                                      ("tokenizer", "PATH")]
    text = ("`tau` must be > 0; set `num_inference_steps`, `guidance_scale=2`, `tokenizer=PATH`; tau and steps "
            "stay; `nothing_here` stays; re-run `purr encode`")
    assert flag_message(text, [sample]) == ("--tau must be > 0; set --sample-steps, --cfg-scale 2, --tokenizer PATH; "
                                           "tau and steps stay; `nothing_here` stays; re-run `purr encode`")
    assert flag_message("pass `resume=True` or choose another `run_dir`; or `sample_every=0`",
                        [train]) == "pass --resume or choose another --out; or --set sample_every=0"
    assert flag_message("`sample_steps` is bad", [train]) == "`sample_steps` is bad"    # a --set field there


def test_purr_sample_bad_knobs_print_one_line_naming_the_flag(tmp_path, capsys):
    cases = [("--tau", "0", "purr: error: --tau must be a number > 0 or a schedule like linear:1.2:0.6, got 0.0"),
             ("--tau", "linear:1:-1", "purr: error: --tau must be a number > 0 at both ends of its schedule, got "
                                      "linear:1:-1"),
             ("--sample-steps", "0", "purr: error: --sample-steps must be a positive integer, got 0"),
             ("--sample-steps", "two", "purr: error: --sample-steps must be a positive integer, got 'two'"),
             ("--cfg-scale", "linear:x:1", "purr: error: --cfg-scale must be a number or SHAPE:START:END with "
                                           "numbers, got 'linear:x:1'"),
             ("--solver", "rk4", "purr: error: unknown --solver 'rk4'")]
    for flag, value, line in cases:
        assert main(["sample", str(tmp_path / "no.pt"), "--out", str(tmp_path / "o"), flag, value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(line), (flag, value, err)
    assert not (tmp_path / "o").exists()
    assert main(["eval", str(tmp_path / "no.pt"), "--tau", "-1", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("purr: error: --tau must be a number > 0")


def test_deprecated_steps_still_sets_sample_steps_and_warns(tiny_checkpoint, tmp_path, caplog):
    parser = build_parser()
    for command in (["sample", "ck", "--out", "o"], ["eval", "ck"], ["demo"]):
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            assert parser.parse_args([*command, "--steps", "7"]).sample_steps == 7
        assert "--steps is deprecated and will be removed in the next release; use --sample-steps" in caplog.text
        assert parser.parse_args([*command, "--sample-steps", "7"]).sample_steps == 7
    with pytest.raises(SystemExit):
        parser.parse_args(["study", "convergence", "--out", "s", "--steps", "7"])   # never spelt --steps there
    with caplog.at_level(logging.WARNING):
        assert main(["sample", str(tiny_checkpoint), "--out", str(tmp_path / "old"), "--classes", "1", "--num", "2",
                     "--steps", "2"]) == 0
    assert main(["sample", str(tiny_checkpoint), "--out", str(tmp_path / "new"), "--classes", "1", "--num", "2",
                 "--sample-steps", "2"]) == 0
    with np.load(tmp_path / "old" / "samples.npz") as old, np.load(tmp_path / "new" / "samples.npz") as new:
        assert (old["images"] == new["images"]).all()
    assert "use --sample-steps" in caplog.text


def test_study_tau_takes_a_schedule_like_every_other_tau():
    args = build_parser().parse_args(["study", "temperature", "ck", "--out", "s", "--tau", "linear:1.2:0.6"])
    assert SamplerSettings(tau=args.tau).tau == Schedule("linear", 1.2, 0.6)


def test_a_study_folder_of_an_older_version_resumes(tmp_path):
    new = {"study": "cfg", "checkpoints": ["a.pt"], "steps": [4],
           "eval": {"num_samples": 20, "sample_steps": 2, "tau": 1.0, "cfg_scale": 1.0}}
    old = {**new, "eval": {"num_samples": 20, "steps": 2, "tau": 1.0, "cfg_scale": 1.0}}
    (tmp_path / "results.json").write_text(json.dumps({"settings": old, "points": {"k": {"fid": 1.0}}}))
    store = StudyStore(tmp_path, new, "purr study cfg")
    assert store.points == {"k": {"fid": 1.0}} and store.data["settings"] == new
    with pytest.raises(PurrError, match="holds a study made with other settings; use another `folder`"):
        StudyStore(tmp_path, {**new, "eval": {**new["eval"], "sample_steps": 3}}, "purr study cfg")


# -- the app gets the CLI's command and translation by injection ------------------------------------------------


def test_the_app_package_never_imports_the_cli():
    code = ("import sys, purrception.app, purrception.app.core\n"
            "assert not [m for m in sys.modules if m.startswith('purrception.cli')], 'the app imported the cli'")
    subprocess.run([sys.executable, "-c", code], check=True)
    for path in (PACKAGE / "app").rglob("*.py"):              # not even lazily, inside a function
        imported = [n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Import)
                     for a in n.names]
        assert not [m for m in imported if m and m.startswith("purrception.cli")], path
