"""Training configuration: one dataclass, named presets, and overrides from the command line or a file.

The resolved config is saved next to the run (``config.json``) and inside every checkpoint. On resume the
checkpoint's config wins (nanoGPT style) except where the caller explicitly asks otherwise: a field that defines
the model or the optimisation trajectory (:attr:`TrainConfig.PINNED`) must then equal the checkpoint's, and one that
only says how long to train or how the run is observed or computed (:attr:`TrainConfig.ADJUSTABLE`) takes the
caller's value (:func:`resumed_config`). A preset supplies defaults, not explicit requests: only the fields of a
``--config`` file and of ``key=value`` overrides count as asked for (:func:`explicit_fields`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from purrception.errors import PurrError

__all__ = ["TrainConfig", "TRAIN_PRESETS", "PRESET_ALIASES", "preset_name", "PRECISIONS", "resolve_config",
           "parse_override", "explicit_fields", "resumed_config", "config_differences", "RUN_CONFIG_FORMAT",
           "RUN_CONFIG_VERSION"]

log = logging.getLogger(__name__)

#: format and version (:mod:`purrception.formats`) of a run folder's ``config.json``: a record for people and for the
#: pipeline's description of the data (a resume reads the checkpoint's config, never this file)
RUN_CONFIG_FORMAT, RUN_CONFIG_VERSION = "purrception-run", 1

#: accepted ``precision`` values (the loop maps them to autocast dtypes)
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """Everything that defines a training run. Paper values (App. C) are the defaults of the paper presets."""

    method: str = "purrception"
    method_options: dict[str, Any] = field(default_factory=dict)
    model: str = "DiT-T/1"                        # preset name, see models.dit.DIT_PRESETS
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str = ""                           # DiT / SiT file a new run's trunk starts from (models.dit_import)
    steps: int = 1000
    batch_size: int = 64                          # global batch over all processes and accumulation
    micro_batch_size: int = 0                     # per forward pass; 0 = batch_size / world size (rounding only)
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    grad_clip: float = 0.0                        # 0 = off
    ema_decay: float = 0.9999
    ema_warmup: bool = False                      # decay_k = min(decay, (1 + k) / (10 + k))
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 500
    keep_last: int = 2                            # newest checkpoints kept; 0 = keep all
    keep_every: int = 0                           # also keep every M-th step's checkpoint; 0 = none
    precision: str = "fp32"                       # "fp32" or "bf16" (autocast; weights and optimizer stay fp32)
    compile: bool = False                         # torch.compile each DiT block (GPU)
    tensorboard: bool = False                     # also write TensorBoard scalars / images (needs tensorboard)
    sample_every: int = 0                         # save an EMA sample grid every N steps; 0 = off (needs tokenizer)
    sample_images: int = 16                       # images in each periodic grid (class-balanced)
    sample_steps: int = 50                        # Euler steps for the periodic grids

    #: What defines the model and the optimisation trajectory, so what a resumed run keeps from its checkpoint:
    #: the method and backbone, the initial trunk (``init_from``, read only when a run starts: a resumed run's own
    #: weights win), the global batch and its split into micro-batch slots (the split changes float rounding only:
    #: each sample draws its own noise, ``training.data.sample_generators``; pinned so that a resumed run is exact),
    #: the seed, and AdamW, its warm-up, clipping and the EMA. Asking for another value on resume is refused.
    PINNED: ClassVar[tuple[str, ...]] = (
        "method", "method_options", "model", "model_overrides", "init_from", "batch_size", "micro_batch_size", "seed",
        "lr", "warmup_steps", "weight_decay", "betas", "eps", "grad_clip", "ema_decay", "ema_warmup",
    )
    #: What a resumed run takes from the caller when asked: how many steps in all (the lr schedule does not depend on
    #: it), the logging, checkpoint and sample-grid cadence, and how the arithmetic runs (``precision`` changes
    #: rounding only, like another device; ``compile`` nothing). Exact resume needs the same precision.
    ADJUSTABLE: ClassVar[tuple[str, ...]] = (
        "steps", "log_every", "ckpt_every", "keep_last", "keep_every", "precision", "compile", "tensorboard",
        "sample_every", "sample_images", "sample_steps",
    )

    def __post_init__(self) -> None:
        if isinstance(self.init_from, os.PathLike):
            self.init_from = os.fspath(self.init_from)
        if self.precision not in PRECISIONS:
            raise PurrError(f"`precision` {self.precision!r} is not one of {', '.join(PRECISIONS)}; "
                            f"e.g. `precision=bf16`")
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "sample_images", "sample_steps"):
            if int(getattr(self, name)) <= 0:
                raise PurrError(f"`{name}` must be a positive integer, got {getattr(self, name)}")
        for name in ("micro_batch_size", "keep_last", "keep_every", "sample_every", "warmup_steps", "seed"):
            if int(getattr(self, name)) < 0:
                raise PurrError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        for f in fields(self):
            if str(f.type) == "int" and int(getattr(self, f.name)) > _MAX_INT:
                raise PurrError(f"`{f.name}` must be at most 2**63 - 1, got {getattr(self, f.name)}")
        for name, low, high, closed in _FLOAT_RANGES:
            value = float(getattr(self, name))
            inside = math.isfinite(value) and low <= value and (value <= high if closed else value < high)
            if not inside or (name in _POSITIVE and value == 0):
                bound = f"{'> 0' if name in _POSITIVE else f'>= {low:g}'}" + (
                    "" if math.isinf(high) else f" and {'<=' if closed else '<'} {high:g}")
                raise PurrError(f"`{name}` must be a finite number {bound}, got {getattr(self, name)!r}")
        if (not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and math.isfinite(b) and 0 <= b < 1 for b in self.betas)):
            raise PurrError(f"`betas` must be two numbers in [0, 1), got {list(self.betas)}; e.g. `betas=[0.9,0.999]`")
        for name in ("method_options", "model_overrides"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise PurrError(f"`{name}` must be a mapping of names to values, got {value!r}; e.g. "
                                f"`{name}={{}}`")
        _check_method_options(self.method, self.method_options)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        if not isinstance(d, dict):
            raise PurrError(f"a training config must be a mapping of field names to values, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise PurrError(f"unknown training config field(s): {', '.join(sorted(map(str, unknown)))}")
        d = dict(d)
        if "betas" in d:
            betas = d["betas"]
            if (not isinstance(betas, (list, tuple)) or len(betas) != 2
                    or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas)):
                raise PurrError(f"`betas` must be two numbers in [0, 1), got {betas!r}; e.g. `betas=[0.9,0.999]`")
            d["betas"] = tuple(float(b) for b in betas)
        for f in fields(cls):
            if f.name in d:
                d[f.name] = _checked(f.name, f.type, d[f.name])
        return cls(**d)


#: The optimisation of paper App. C, shared by every ``paper-*`` preset: AdamW, constant lr 1e-4, weight decay 0.01,
#: betas (0.9, 0.999), eps 1e-6, global batch 256 (whatever the number of processes), EMA 0.9999, bf16.
_PAPER = {
    "batch_size": 256, "lr": 1e-4, "warmup_steps": 0, "weight_decay": 0.01, "betas": (0.9, 0.999), "eps": 1e-6,
    "ema_decay": 0.9999, "ema_warmup": False, "grad_clip": 0.0, "precision": "bf16",
    "log_every": 100, "ckpt_every": 10_000, "keep_last": 2, "keep_every": 100_000,
}

#: Named runs. ``digits-*`` are sized for 2 CPU cores on the embedded digits; ``paper-*`` mirror App. C on 32x32
#: codes.
#: The tokenizer (``vq-f8`` or ``vq-ds8-c2i``) is a property of the shards, so one preset per backbone serves both.
#: Steps: DiT-L/2 2M and DiT-XL/2 3.5M iterations as in the paper (Fig. 3a, Table 1); DiT-B/2 is not trained in the
#: paper, it takes the DiT paper's 400k.
#: ``digits-demo`` and ``folder-cpu`` read the codes in 2x2 patches (DiT-T/2: a quarter of DiT-T/1's tokens, so a
#: cheaper step at equal accuracy); ``folder-cpu`` trains a colour image folder longer, 3,500 steps (why: BENCHMARKS.md,
#: "CPU budget"). An odd code grid is padded to whole patches inside the DiT (``models.heads``).
_CPU_SMALL = {
    "model": "DiT-T/2", "steps": 800, "batch_size": 64, "lr": 3e-3, "warmup_steps": 100,
    "ema_decay": 0.999, "ema_warmup": True, "grad_clip": 1.0, "log_every": 50, "ckpt_every": 250,
}
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "digits-demo": _CPU_SMALL,
    "folder-cpu": {**_CPU_SMALL, "steps": 3500},
    "digits-study": {
        "model": "DiT-M/1", "steps": 6000, "batch_size": 128, "lr": 1e-3, "warmup_steps": 200,
        "ema_decay": 0.999, "ema_warmup": True, "grad_clip": 1.0, "log_every": 100, "ckpt_every": 1000,
        "keep_every": 2000,
    },
    "paper-dit-b2": {**_PAPER, "model": "DiT-B/2", "steps": 400_000},
    "paper-dit-l2": {**_PAPER, "model": "DiT-L/2", "steps": 2_000_000},
    "paper-dit-xl2": {**_PAPER, "model": "DiT-XL/2", "steps": 3_500_000},
}


#: the largest integer a config field takes (torch's seeds and counters are 64-bit)
_MAX_INT = 2**63 - 1
#: the float fields' ranges: ``(name, low, high, high included)``; :data:`_POSITIVE` ones must also be > 0 (``lr``
#: 0 is allowed: a run that leaves the weights as they are)
_FLOAT_RANGES = (("lr", 0.0, math.inf, False), ("weight_decay", 0.0, math.inf, False), ("eps", 0.0, math.inf, False),
                 ("grad_clip", 0.0, math.inf, False), ("ema_decay", 0.0, 1.0, True))
_POSITIVE = ("eps",)


def _check_method_options(method: str, options: dict[str, Any]) -> None:
    """Refuse option names the method's constructor does not take (its values are its own to check)."""
    import inspect

    from purrception.flows.base import METHODS

    cls = METHODS.get(method)
    if cls is None:
        raise PurrError(f"unknown method {method!r}; choose one of: {', '.join(sorted(METHODS))}")
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n in params if n not in ("self", "codebook")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise PurrError(f"`method_options` has option(s) {', '.join(unknown)} that method {method} does not take; "
                        f"its options: {', '.join(known) or 'none'}")


_SCALAR_TYPES = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}


def _checked(name: str, type_name: Any, value: Any) -> Any:
    """Refuse a value of the wrong kind (``steps="abc"``, ``compile="yes"``) with a one-line error."""
    accepted = _SCALAR_TYPES.get(str(type_name))
    if accepted is None:
        return value
    if not isinstance(value, accepted) or (bool not in accepted and isinstance(value, bool)):
        raise PurrError(f"config field `{name}` must be {type_name}, got {value!r}; e.g. `{name}=<{type_name}>`")
    return float(value) if type_name == "float" else value


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a JSON value (bare words are strings): ``lr=3e-4``, ``betas=[0.9,0.95]``."""
    if "=" not in text:
        raise PurrError(f"override {text!r} must look like key=value, e.g. lr=3e-4")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


#: older preset names, accepted with a deprecation warning
PRESET_ALIASES = {"mnist-demo": "digits-demo", "mnist-study": "digits-study"}


def _toml() -> Any:
    """The TOML reader: the standard library's ``tomllib`` (Python 3.11+), else the ``tomli`` it was taken from."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pyproject.toml installs tomli there
        import tomli as tomllib
    return tomllib


def preset_name(preset: str) -> str:
    """The name of a preset of :data:`TRAIN_PRESETS`: ``preset`` itself, or the new name of an old one (with a
    warning); an unknown name is refused in one line."""
    if preset in PRESET_ALIASES:
        new = PRESET_ALIASES[preset]
        warnings.warn(f"preset {preset!r} is now called {new!r}; the old name will go", FutureWarning, stacklevel=3)
        log.warning("preset %r is now called %r; the old name will go", preset, new)
        preset = new
    if preset not in TRAIN_PRESETS:
        raise PurrError(f"unknown preset {preset!r}; choose one of: {', '.join(TRAIN_PRESETS)}")
    return preset


def resolve_config(preset: str | None = None, file: str | Path | None = None,
                   overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- preset <- YAML/JSON file <- ``key=value`` overrides, in that order."""
    values: dict[str, Any] = {}
    if preset is not None:
        values.update(TRAIN_PRESETS[preset_name(preset)])
    if file is not None:
        values.update(_read_config_file(Path(file)))
    for item in overrides or []:
        key, value = parse_override(item)
        values[key] = value
    return TrainConfig.from_dict(values)


def explicit_fields(file: str | Path | None = None, overrides: list[str] | None = None) -> frozenset[str]:
    """The fields a caller asked for by name: those of a config file and of ``key=value`` overrides.

    A preset's values (and the dataclass defaults) are not among them: on resume they give way to the checkpoint's.
    """
    names = set(_read_config_file(Path(file))) if file is not None else set()
    names.update(parse_override(item)[0] for item in overrides or [])
    return frozenset(names)


def resumed_config(saved: TrainConfig, asked: TrainConfig, explicit: Collection[str] | None = None) -> TrainConfig:
    """The config a resumed run continues with: the checkpoint's (``saved``) except where the caller asked.

    Args:
        saved: the config stored in the checkpoint.
        asked: the caller's config.
        explicit: the fields of ``asked`` the caller asked for by name (:func:`explicit_fields`); None means all.
            An asked-for :attr:`TrainConfig.ADJUSTABLE` field takes the caller's value; an asked-for
            :attr:`TrainConfig.PINNED` field must equal the checkpoint's; every other field keeps the checkpoint's.

    Raises:
        PurrError: naming every asked-for pinned field that differs from the checkpoint, with both values.
    """
    names = set(TrainConfig.PINNED + TrainConfig.ADJUSTABLE) if explicit is None else set(explicit)
    clashing = [n for n in TrainConfig.PINNED if n in names and getattr(saved, n) != getattr(asked, n)]
    if clashing:
        conflicts = ", ".join(f"{n} is {_shown(getattr(saved, n))} in the checkpoint but {_shown(getattr(asked, n))} "
                              f"was asked" for n in clashing)
        raise PurrError(f"cannot resume: {conflicts}; drop the override or train into a new `run_dir`")
    taken = {name: getattr(asked, name) for name in TrainConfig.ADJUSTABLE if name in names}
    return TrainConfig.from_dict({**saved.to_dict(), **taken})


def config_differences(run: TrainConfig, asked: TrainConfig) -> dict[str, dict[str, Any]]:
    """``{field: {"run": value, "asked": value}}`` for every field where two configs differ (JSON-ready values)."""
    a, b = run.to_dict(), asked.to_dict()
    return {name: {"run": a[name], "asked": b[name]} for name in a if a[name] != b[name]}


def _shown(value: Any) -> str:
    """A config value as it would be typed after ``key=`` in an override (JSON)."""
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PurrError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif path.suffix == ".toml":
            data = _toml().loads(text)
        else:
            data = json.loads(text)
    except Exception as err:
        raise PurrError(f"cannot parse config file {path}: {err}") from None
    if not isinstance(data, dict):
        raise PurrError(f"config file {path} must hold a mapping of field: value")
    return data
