"""Saving and loading tokenizers: a folder with ``config.json`` + ``model.safetensors``, or a pretrained file.

Which kinds exist, how each loads and which classes build it is the tokenizer registry's
(:mod:`purrception.tokenizers.registry`): a folder is rebuilt as ``model_class(config_class(**config))`` of the
trainable kind it records; a pretrained foreign checkpoint (SD ``vq-f8``, LlamaGen ``vq-ds8-c2i``) is read by its
kind's :class:`~purrception.tokenizers.registry.CheckpointFile`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from purrception.errors import PurrError
from purrception.formats import read_version
from purrception.io import atomic_save_json, atomic_write, load_json
from purrception.tokenizers.base import TokenizerIdentity, VQTokenizer
from purrception.tokenizers.registry import find_kind, get_kind, known_kinds, pretrained_kinds, trainable_kinds

__all__ = ["save_tokenizer", "load_tokenizer", "load_matching_tokenizer", "known_kinds", "CONFIG_NAME", "WEIGHTS_NAME"]

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: format version of a tokenizer folder's ``config.json`` (read by :func:`purrception.formats.read_version`)
TOKENIZER_VERSION = 1


def save_tokenizer(tokenizer: VQTokenizer, folder: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    """Write ``folder/model.safetensors`` then ``folder/config.json`` (the config last: it marks completion)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in tokenizer.state_dict().items()}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(state, tmp))
    atomic_save_json(folder / CONFIG_NAME, {
        "format": "purrception-tokenizer",
        "version": TOKENIZER_VERSION,
        "kind": tokenizer.kind,
        "config": tokenizer.config_dict(),
        "identity": tokenizer.identity().to_dict(),
        "metrics": metrics or {},
    })
    return folder


def load_tokenizer(path: str | Path, kind: str | None = None) -> VQTokenizer:
    """Load a tokenizer folder written by :func:`save_tokenizer`, or a pretrained checkpoint file of ``kind``.

    Args:
        path: a tokenizer folder, or a checkpoint file.
        kind: a pretrained kind of the registry for a checkpoint file; ``None`` (or the folder's own trainable kind,
            e.g. ``"conv-vq"``, checked against it) for a folder.

    Returns:
        The tokenizer, in eval mode with gradients disabled (tokenizers are frozen, paper App. C).
    """
    path = Path(path)
    entry = get_kind(kind) if kind is not None else None
    if not path.exists():
        raise PurrError(f"tokenizer not found: {path}")
    if entry is not None and entry.pretrained:
        tokenizer = entry.file.read(path, entry.name)
    elif path.is_dir():
        tokenizer = _load_folder(path)
        if kind is not None and tokenizer.kind != kind:
            raise PurrError(f"{path} holds a {tokenizer.kind} tokenizer, not {kind}; drop the kind or fix the path")
    else:
        raise PurrError(f"{path} is a file: name its kind with `tokenizer_kind` ({', '.join(pretrained_kinds())}), "
                        f"or pass a tokenizer folder made by `purr tokenizer train`")
    tokenizer.eval().requires_grad_(False)
    return tokenizer


def load_matching_tokenizer(path: str | Path, expected: TokenizerIdentity, kind: str | None = None) -> VQTokenizer:
    """Load the tokenizer at ``path`` and check it is the one that made ``expected``'s codes.

    A pretrained file's kind defaults to the kind recorded in ``expected`` (a checkpoint's or shards' identity).
    """
    if kind is None and expected.kind in pretrained_kinds():
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
    read_version(meta, "tokenizer config", folder / CONFIG_NAME, TOKENIZER_VERSION,
                 "train the tokenizer again with `purr tokenizer train`")
    recorded = meta.get("kind")
    entry = find_kind(recorded) if isinstance(recorded, str) else None
    if entry is None or not entry.trainable:
        raise PurrError(f"unknown tokenizer kind {recorded!r} in {folder}; known: {', '.join(trainable_kinds())}")
    try:
        model = entry.model_class(entry.config_class(**meta["config"]))
    except TypeError as err:
        raise PurrError(f"tokenizer config in {folder} does not match this version: {err}") from None
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise PurrError(f"tokenizer weights missing: {weights}")
    if not weights.resolve().is_relative_to(folder.resolve()):
        raise PurrError(f"tokenizer weights {weights} link to {weights.resolve()}, outside the tokenizer folder; "
                        f"copy the file into the folder")
    try:
        state = load_file(str(weights))
    except Exception as err:
        raise PurrError(f"cannot read tokenizer weights {weights}: {err}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise PurrError(f"tokenizer weights in {weights} do not fit its config: {str(err).splitlines()[0]}") from None
    if recorded != entry.name:
        model.kind = recorded
    return model
