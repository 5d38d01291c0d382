"""Hostile training configs (``--set`` values, TOML / JSON / YAML files) through ``purr train``, and property tests:
any override text and any sampler knobs either give a valid object or a :class:`PurrError`, never another
exception."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from purrception.errors import PurrError
from purrception.sampling.settings import SamplerSettings
from purrception.training.config import TrainConfig, parse_override, resolve_config

TINY = ["--set", "steps=1", "--set", "batch_size=8", "--set",
        'model_overrides={"hidden_size": 32, "depth": 1, "num_heads": 2}']

BAD_OVERRIDES = {
    "lr=NaN": "`lr`", "lr=nan": "`lr`", "lr=Infinity": "`lr`", "lr=-1e-9": "`lr`", "lr=1e999": "`lr`",
    "ema_decay=2": "`ema_decay`", "ema_decay=NaN": "`ema_decay`", "eps=0": "`eps`", "weight_decay=-1": "`weight_decay`",
    "grad_clip=-Infinity": "`grad_clip`", "steps=1e999": "`steps`", "steps=99999999999999999999999": "`steps`",
    "seed=18446744073709551616": "`seed`", "betas=abc": "`betas`", "betas=5": "`betas`", "betas=[1,2,3]": "`betas`",
    "betas=[NaN,0.9]": "`betas`", "betas=[0.9,1.5]": "`betas`", "method_options=3": "`method_options`",
    "method_options=[1]": "`method_options`", 'method_options={"nope": 1}': "`method_options`",
    "model_overrides=abc": "`model_overrides`", 'model_overrides={"hidden_size": "big"}': "cannot build model",
    'model_overrides={"nope": 1}': "cannot build model",
    "model=nope": "nope", "method=nope": "nope", "compile=yes": "`compile`", "keep_last=1e2": "`keep_last`",
    "micro_batch_size=3": "micro_batch_size", "precision=fp16": "`precision`", "=3": "unknown", "steps": "key=value",
    "init_from=../../../../etc/passwd": "passwd", "init_from=/etc/passwd": "passwd",
}


def _flagged(expected: str) -> str:
    """A backticked parameter as ``purr train`` prints it (``--set NAME=VALUE`` or the flag)."""
    return expected.strip("`") if expected.startswith("`") else expected


@pytest.mark.parametrize("override", sorted(BAD_OVERRIDES))
def test_a_bad_override_is_refused_in_one_line(override, purr, shards_dir, tmp_path):
    out = tmp_path / "run"
    result = purr(["train", "--shards", shards_dir, "--out", out, "--no-progress", *TINY, "--set", override],
                  untouched=(shards_dir,))
    assert _flagged(BAD_OVERRIDES[override]) in result.message, result.message
    assert not out.exists()


CONFIG_FILES = {
    "wrong-type.toml": ('seed = "ten"\n', "seed"),
    "huge.toml": ("seed = 1e400\n", "seed"),
    "huge-int.json": ('{"keep_every": 123456789012345678901234567890}', "keep_every"),
    "nan.toml": ("lr = nan\n", "lr"),
    "inf.json": ('{"lr": Infinity}', "lr"),
    "nan-string.json": ('{"ema_decay": "nan"}', "ema_decay"),
    "list.json": ("[1, 2]", "mapping"),
    "broken.json": ('{"steps": ', "config"),
    "broken.toml": ("steps = [", "config"),
    "nested.yaml": ("betas: {a: 1}\n", "betas"),
    "alias-bomb.yaml": ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
                        "unknown"),
    "paths.toml": ('init_from = "../../../../../../etc/passwd"\n', "passwd"),
}


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_a_bad_config_file_is_refused_in_one_line(name, purr, shards_dir, tmp_path):
    text, expected = CONFIG_FILES[name]
    path = tmp_path / "configs" / name
    path.parent.mkdir()
    path.write_text(text)
    out = tmp_path / "run"
    result = purr(["train", "--shards", shards_dir, "--out", out, "--no-progress", "--config", path, *TINY],
                  untouched=(shards_dir, path.parent))
    assert expected in result.message, result.message
    assert not out.exists()


# ---- properties ---------------------------------------------------------------------------------------------------
_FIELDS = [f for f in TrainConfig.__dataclass_fields__]
_JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                    max_size=3), max_leaves=6)
_VALUE_TEXT = st.one_of(st.text(max_size=20), _JSONISH.map(lambda v: json.dumps(v, allow_nan=True)),
                        st.sampled_from(["nan", "NaN", "inf", "-Infinity", "1e999", "-0", "0x10", "1_000", "[]", "{}",
                                         "true", "null", '"', "9" * 40]))
_OVERRIDE = st.one_of(st.text(max_size=30), st.tuples(st.sampled_from(_FIELDS), _VALUE_TEXT).map("=".join))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_OVERRIDE, max_size=4))
def test_any_override_text_gives_a_valid_config_or_a_purr_error(overrides):
    try:
        config = resolve_config(None, None, overrides)
    except PurrError as err:
        assert "\n" not in str(err)
        return
    assert TrainConfig.from_dict(config.to_dict()) == config    # what parses is a config that round-trips
    for name in ("lr", "weight_decay", "eps", "grad_clip", "ema_decay", *config.betas):
        value = getattr(config, name) if isinstance(name, str) else name
        assert math.isfinite(value)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_FIELDS), _JSONISH, max_size=4))
def test_any_config_mapping_gives_a_valid_config_or_a_purr_error(values):
    try:
        TrainConfig.from_dict(values)
    except PurrError as err:
        assert "\n" not in str(err)


_KNOB = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                  st.sampled_from(["linear:1:0.5", "cosine:2:0", "linear:nan:1", "x:1:1", "1", "0", "-1", "inf",
                                   "euler", "heun", "midpoint", "dopri5", "rk4", ""]),
                  st.lists(st.floats(), max_size=2))


@settings(max_examples=400, deadline=None)
@given(sample_steps=_KNOB, tau=_KNOB, cfg_scale=_KNOB, solver=_KNOB)
def test_any_sampler_knobs_give_valid_settings_or_a_purr_error(sample_steps, tau, cfg_scale, solver):
    try:
        SamplerSettings(sample_steps=sample_steps, tau=tau, cfg_scale=cfg_scale, solver=solver)
    except PurrError as err:
        assert "\n" not in str(err)


def test_parse_override_reads_json_values_and_bare_words():
    assert parse_override("lr=3e-4") == ("lr", 3e-4)
    assert parse_override("precision=bf16") == ("precision", "bf16")
    assert parse_override("betas=[0.9, 0.95]") == ("betas", [0.9, 0.95])
