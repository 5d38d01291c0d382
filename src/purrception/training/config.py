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

__all__ = ["TrainConfig", "TRAIN_PRESETS", "resolve_config", "parse_override"]


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
    keep_last: int = 2
    keep_every: int = 0                           # also keep every M-th step's checkpoint; 0 = none

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
        return cls(**d)


#: Named runs. ``mnist-*`` are sized for 2 CPU cores on the embedded data; ``paper-*`` mirror App. C.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "mnist-demo": {
        "model": "DiT-T/1", "steps": 1500, "batch_size": 64, "lr": 2e-3, "warmup_steps": 100,
        "ema_decay": 0.999, "ema_warmup": True, "grad_clip": 1.0, "log_every": 50, "ckpt_every": 250,
    },
}


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
