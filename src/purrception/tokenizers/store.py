"""Saving and loading tokenizers: a folder with ``config.json`` + ``model.safetensors``.

Pretrained foreign checkpoints (SD ``vq-f8``, LlamaGen ``vq-ds8-c2i``) are read by
:func:`~purrception.tokenizers.pretrained.load_pretrained_vqgan`, one kind per entry of
:data:`~purrception.tokenizers.pretrained.PRETRAINED_KINDS`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from purrception.errors import PurrError
from purrception.io import atomic_save_json, atomic_write, load_json
from purrception.tokenizers.base import TokenizerIdentity, VQTokenizer
from purrception.tokenizers.conv_vq import ConvVQ, ConvVQConfig
from purrception.tokenizers.pretrained import PRETRAINED_KINDS, load_pretrained_vqgan

__all__ = ["save_tokenizer", "load_tokenizer", "load_matching_tokenizer", "TRAINABLE_KINDS", "known_kinds"]

log = logging.getLogger(__name__)

#: kinds saved by :func:`save_tokenizer` as a folder: kind -> (class, config class)
TRAINABLE_KINDS: dict[str, tuple[type[VQTokenizer], type]] = {"conv-vq": (ConvVQ, ConvVQConfig)}
#: older names of a trainable kind; a folder saved under one loads as its kind and keeps its recorded name, so that
#: the identities of codes made with it still match
LEGACY_KINDS = {"small-vq": "conv-vq"}

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_tokenizer(tokenizer: VQTokenizer, folder: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    """Write ``folder/model.safetensors`` then ``folder/config.json`` (the config last: it marks completion)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in tokenizer.state_dict().items()}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(state, tmp))
    atomic_save_json(folder / CONFIG_NAME, {
        "format": "purrception-tokenizer",
        "kind": tokenizer.kind,
        "config": tokenizer.config_dict(),
        "identity": tokenizer.identity().to_dict(),
        "metrics": metrics or {},
    })
    return folder


def known_kinds() -> str:
    """Every tokenizer kind, for error messages: the pretrained files', then the folders'."""
    return (f"{', '.join(PRETRAINED_KINDS)} (pretrained checkpoint files), "
            f"{', '.join(TRAINABLE_KINDS)} (folders made by `purr tokenizer train`)")


def load_tokenizer(path: str | Path, kind: str | None = None) -> VQTokenizer:
    """Load a tokenizer folder written by :func:`save_tokenizer`, or a pretrained checkpoint file of ``kind``.

    Args:
        path: a tokenizer folder, or a checkpoint file.
        kind: a name in :data:`~purrception.tokenizers.pretrained.PRETRAINED_KINDS` for a checkpoint file;
            ``None`` (or a folder kind such as ``"conv-vq"``) for a folder.

    Returns:
        The tokenizer, in eval mode with gradients disabled (tokenizers are frozen, paper App. C).
    """
    path = Path(path)
    if kind is not None and kind not in PRETRAINED_KINDS and kind not in TRAINABLE_KINDS and kind not in LEGACY_KINDS:
        raise PurrError(f"unknown tokenizer kind {kind!r}; known: {known_kinds()}")
    if not path.exists():
        raise PurrError(f"tokenizer not found: {path}")
    if kind in PRETRAINED_KINDS:
        tokenizer = load_pretrained_vqgan(path, kind)
    elif path.is_dir():
        tokenizer = _load_folder(path)
        if kind is not None and tokenizer.kind != kind:
            raise PurrError(f"{path} holds a {tokenizer.kind} tokenizer, not {kind}; drop the kind or fix the path")
    else:
        raise PurrError(f"{path} is a file: name its kind with `tokenizer_kind` ({', '.join(PRETRAINED_KINDS)}), "
                        f"or pass a tokenizer folder made by `purr tokenizer train`")
    tokenizer.eval().requires_grad_(False)
    return tokenizer


def load_matching_tokenizer(path: str | Path, expected: TokenizerIdentity, kind: str | None = None) -> VQTokenizer:
    """Load the tokenizer at ``path`` and check it is the one that made ``expected``'s codes.

    A pretrained file's kind defaults to the kind recorded in ``expected`` (a checkpoint's or shards' identity).
    """
    if kind is None and expected.kind in PRETRAINED_KINDS:
        kind = expected.kind
    tokenizer = load_tokenizer(path, kind)
    if tokenizer.identity() != expected:
        raise PurrError(f"tokenizer {path} is {tokenizer.identity().describe()}, but the codes were made by "
                        f"{expected.describe()}; pass the matching `tokenizer=PATH`")
    return tokenizer


def _load_folder(folder: Path) -> VQTokenizer:
    meta = load_json(folder / CONFIG_NAME, "tokenizer config")
    if not isinstance(meta, dict) or meta.get("format") != "purrception-tokenizer":
        raise PurrError(f"{folder / CONFIG_NAME} is not a purrception tokenizer config")
    recorded = meta.get("kind")
    kind = LEGACY_KINDS.get(recorded, recorded)
    if kind not in TRAINABLE_KINDS:
        raise PurrError(f"unknown tokenizer kind {recorded!r} in {folder}; known: {', '.join(TRAINABLE_KINDS)}")
    cls, config_cls = TRAINABLE_KINDS[kind]
    try:
        model = cls(config_cls(**meta["config"]))
    except TypeError as err:
        raise PurrError(f"tokenizer config in {folder} does not match this version: {err}") from None
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise PurrError(f"tokenizer weights missing: {weights}")
    try:
        state = load_file(str(weights))
    except Exception as err:
        raise PurrError(f"cannot read tokenizer weights {weights}: {err}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise PurrError(f"tokenizer weights in {weights} do not fit its config: {str(err).splitlines()[0]}") from None
    if recorded != kind:
        model.kind = recorded
    return model

