"""purrception: train, sample and evaluate Purrception image generators (variational flow matching over VQ latents).

The names below are the public API; each is imported on first use, so ``import purrception`` (and the ``purr``
command's start-up) stays light::

    from purrception import PurrceptionPipeline

    pipe = PurrceptionPipeline.from_pretrained("runs/demo", device="cpu")
    out = pipe(class_labels=[3, 7], num_per_class=4, num_inference_steps=50, tau=0.9, seed=0)
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("purrception")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

#: public name -> the module that defines it
_EXPORTS = {
    # sampling a trained generator
    "PurrceptionPipeline": "purrception.pipeline",
    "PipelineOutput": "purrception.pipeline",
    "SamplerSettings": "purrception.sampling.settings",
    "Schedule": "purrception.sampling.schedules",
    # training
    "train": "purrception.training.loop",
    "TrainConfig": "purrception.training.config",
    "load_checkpoint": "purrception.checkpoint",
    # evaluation
    "evaluate_checkpoint": "purrception.evaluation.evaluate",
    "evaluate_generator": "purrception.evaluation.evaluate",
    "Generator": "purrception.evaluation.evaluate",
    "EvalSettings": "purrception.evaluation.evaluate",
    # tokenizers
    "VQTokenizer": "purrception.tokenizers.base",
    "load_tokenizer": "purrception.tokenizers.store",
    "save_tokenizer": "purrception.tokenizers.store",
    # methods
    "METHODS": "purrception.flows",
    "get_method": "purrception.flows",
    "FlowMethod": "purrception.flows",
    "Purrception": "purrception.flows",
    "CFM": "purrception.flows",
    "CFMEndpoint": "purrception.flows",
    "DFM": "purrception.flows",
    # errors
    "PurrError": "purrception.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'purrception' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
