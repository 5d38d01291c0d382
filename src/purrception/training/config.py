"""Training configuration: one dataclass, named presets, and overrides from the command line or a file.

The resolved config is saved next to the run (``config.json``) and inside every checkpoint; on resume the
checkpoint's config wins (nanoGPT style).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from purrception.errors import PurrError

__all__ = ["TrainConfig", "TRAIN_PRESETS", "PRECISIONS", "resolve_config", "parse_override"]

#: accepted ``precision`` values (the loop maps them to autocast dtypes)
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """Everything that defines a training run. Paper values (App. C) are the defaults of the paper presets."""

    method: str = "purrception"
    method_options: dict[str, Any] = field(default_factory=dict)
    model: str = "DiT-T/1"                        # preset name, see models.dit.DIT_PRESETS
    model_overrides: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 64                          # global batch over all processes and accumulation
    micro_batch_size: int = 0                     # per forward pass; 0 = batch_size / world size
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

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise PurrError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}; "
                            f"e.g. --set precision=bf16")
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "sample_images", "sample_steps"):
            if int(getattr(self, name)) <= 0:
                raise PurrError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("micro_batch_size", "keep_last", "keep_every", "sample_every", "warmup_steps"):
            if int(getattr(self, name)) < 0:
                raise PurrError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise PurrError(f"unknown training config field(s): {', '.join(sorted(unknown))}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(float(b) for b in d["betas"])
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

#: Named runs. ``mnist-*`` are sized for 2 CPU cores on the embedded data; ``paper-*`` mirror App. C on 32x32 codes.
#: The tokenizer (``vq-f8`` or ``vq-ds8-c2i``) is a property of the shards, so one preset per backbone serves both.
#: Steps: DiT-L/2 2M and DiT-XL/2 3.5M iterations as in the paper (Fig. 3a, Table 1); DiT-B/2 is not trained in the
#: paper, it takes the DiT paper's 400k.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "mnist-demo": {
        "model": "DiT-T/1", "steps": 1500, "batch_size": 64, "lr": 2e-3, "warmup_steps": 100,
        "ema_decay": 0.999, "ema_warmup": True, "grad_clip": 1.0, "log_every": 50, "ckpt_every": 250,
    },
    "mnist-study": {
        "model": "DiT-M/1", "steps": 6000, "batch_size": 128, "lr": 1e-3, "warmup_steps": 200,
        "ema_decay": 0.999, "ema_warmup": True, "grad_clip": 1.0, "log_every": 100, "ckpt_every": 1000,
        "keep_every": 2000,
    },
    "paper-dit-b2": {**_PAPER, "model": "DiT-B/2", "steps": 400_000},
    "paper-dit-l2": {**_PAPER, "model": "DiT-L/2", "steps": 2_000_000},
    "paper-dit-xl2": {**_PAPER, "model": "DiT-XL/2", "steps": 3_500_000},
}


_SCALAR_TYPES = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}


def _checked(name: str, type_name: Any, value: Any) -> Any:
    """Refuse a value of the wrong kind (``steps="abc"``, ``compile="yes"``) with a one-line error."""
    accepted = _SCALAR_TYPES.get(str(type_name))
    if accepted is None:
        return value
    if not isinstance(value, accepted) or (bool not in accepted and isinstance(value, bool)):
        raise PurrError(f"config field {name} must be {type_name}, got {value!r}; e.g. --set {name}=<{type_name}>")
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


def resolve_config(preset: str | None = None, file: str | Path | None = None,
                   overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- preset <- YAML/JSON file <- ``key=value`` overrides, in that order."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in TRAIN_PRESETS:
            raise PurrError(f"unknown preset {preset!r}; choose one of: {', '.join(TRAIN_PRESETS)}")
        values.update(TRAIN_PRESETS[preset])
    if file is not None:
        values.update(_read_config_file(Path(file)))
    for item in overrides or []:
        key, value = parse_override(item)
        values[key] = value
    return TrainConfig.from_dict(values)


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PurrError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as err:
        raise PurrError(f"cannot parse config file {path}: {err}") from None
    if not isinstance(data, dict):
        raise PurrError(f"config file {path} must hold a mapping of field: value")
    return data
