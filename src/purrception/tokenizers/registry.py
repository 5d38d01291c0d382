"""The one registry of tokenizer kinds: pretrained checkpoint files and trainable architectures alike.

Every kind is one :class:`TokenizerKind`: its name (recorded in tokenizer folders, token shards and checkpoints),
how it loads (a foreign checkpoint file described by :class:`CheckpointFile`, or else a folder written by
:func:`~purrception.tokenizers.store.save_tokenizer`), its config and model classes, older names it answers to, and
a one-line summary. Everything that names or builds a tokenizer reads this registry:
:func:`~purrception.tokenizers.store.load_tokenizer`, :func:`~purrception.tokenizers.store.save_tokenizer`'s folders,
:func:`~purrception.tokenizers.store.load_matching_tokenizer`, :func:`known_kinds` in error messages, the
``--tokenizer-kind`` choices of every command, ``purr tokenizer train --kind``, the generic trainer
(:mod:`purrception.tokenizers.train`, which finds the kind from its config's class) and the cached tokenizers of
the data sets (:class:`~purrception.tokenizers.recipe.TokenizerRecipe`).

Folder kinds are the trainable ones: their model class is a
:class:`~purrception.tokenizers.base.TrainableTokenizer` (its docstring lists what the config and model must
provide), and they are trained by the one generic trainer.

Adding a trainable architecture is **one module plus one import**: write the module (a config dataclass, a
``TrainableTokenizer`` subclass with ``training_loss``, and at its bottom ``register_kind(TokenizerKind(...),
builtin=True)``), then import it in ``tokenizers/__init__.py``, as ``conv_vq`` and ``pretrained`` are. Code outside
the package (a plug-in, a test) calls :func:`register_kind` itself and :func:`unregister_kind` when done;
:func:`register_kind` checks the entry and refuses clashes in one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from purrception.errors import PurrError
from purrception.tokenizers.base import TrainableTokenizer, VQTokenizer

__all__ = [
    "TokenizerKind",
    "CheckpointFile",
    "DEFAULT_TRAINABLE_KIND",
    "TRAINABLE_CONFIG_FIELDS",
    "register_kind",
    "unregister_kind",
    "get_kind",
    "find_kind",
    "all_kinds",
    "pretrained_kinds",
    "trainable_kinds",
    "get_trainable_kind",
    "kind_for_config",
    "known_kinds",
]

#: the kind ``purr tokenizer train`` and the data sets' recipes train unless told otherwise
DEFAULT_TRAINABLE_KIND = "conv-vq"
#: fields every trainable kind's config must have (see :class:`~purrception.tokenizers.base.TrainableTokenizer`)
TRAINABLE_CONFIG_FIELDS = ("image_size", "image_channels", "downsample")


@dataclass(frozen=True)
class CheckpointFile:
    """How a pretrained kind is read: one foreign checkpoint file holding the weights of a fixed architecture.

    Attributes:
        file_name: the file to pass, e.g. ``vq-f8.ckpt``.
        origin: where that file comes from (for error messages; may be empty).
        config: the architecture the file's weights fit.
        read: ``read(path, kind_name)`` -> the tokenizer in eval mode (never executes code from the file).
        layout: what ``read`` needs to know about the file's layout (for the VQGAN files:
            :class:`~purrception.tokenizers.pretrained.VQGANLayout`).
    """

    file_name: str
    origin: str
    config: Any
    read: Callable[[Path, str], VQTokenizer]
    layout: Any = None

    @property
    def file_hint(self) -> str:
        """``file_name (origin)``, for error messages."""
        return f"{self.file_name} ({self.origin})" if self.origin else self.file_name


@dataclass(frozen=True)
class TokenizerKind:
    """One tokenizer kind: everything the loaders, the trainer, the caches and the command line know about it.

    Attributes:
        name: the kind, as recorded in tokenizer folders, shards and checkpoints.
        model_class: the :class:`~purrception.tokenizers.base.VQTokenizer` it builds; for a trainable kind a
            :class:`~purrception.tokenizers.base.TrainableTokenizer` whose ``kind`` is ``name``.
        config_class: the architecture's config; for a trainable kind a dataclass with a default for every field.
        summary: one line for ``--help`` texts.
        file: how a pretrained kind's checkpoint file is read; ``None`` for a trainable kind (saved as a folder).
        legacy_names: older names of the kind; a folder saved under one loads as this kind and keeps its recorded
            name, so that the identities of codes made with it still match.
        keyed_by_name: whether cache keys and resumable training states record ``name`` beside the config. Only
            ``conv-vq``, whose keys were made before the registry existed, leaves it out (so no cache retrains).
    """

    name: str
    model_class: type[VQTokenizer]
    config_class: type
    summary: str
    file: CheckpointFile | None = None
    legacy_names: tuple[str, ...] = ()
    keyed_by_name: bool = True

    @property
    def pretrained(self) -> bool:
        """Loaded from a checkpoint file of a fixed architecture (never trained here)."""
        return self.file is not None

    @property
    def trainable(self) -> bool:
        """Trained by :func:`~purrception.tokenizers.train.train_tokenizer` and saved as a folder."""
        return self.file is None

    @property
    def config_fields(self) -> tuple[str, ...]:
        """The names of the config's settings."""
        return tuple(f.name for f in dataclasses.fields(self.config_class))

    def make_config(self, settings: Mapping[str, Any], check: bool = True) -> Any:
        """The config of this kind: its defaults with ``settings`` replaced.

        Args:
            settings: config fields to replace.
            check: run the config's ``check()``; ``False`` for a config whose image format is set later (the
                trainers check it then).

        Raises:
            PurrError: a setting this kind does not have, or one its architecture cannot take.
        """
        unknown = sorted(set(settings) - set(self.config_fields))
        if unknown:
            raise PurrError(f"tokenizer kind {self.name} has no setting {', '.join(unknown)}; "
                            f"its settings: {', '.join(self.config_fields)}")
        config = self.config_class(**settings)
        if check and hasattr(config, "check"):
            config.check()
        return config

    def key_parts(self, config: Any) -> list[Any]:
        """What cache keys and resumable training states record of a config of this kind (JSON-serialisable)."""
        return [self.name, asdict(config)] if self.keyed_by_name else [asdict(config)]


#: every registered kind by name, in registration order (the package's own first: tokenizers/__init__.py imports
#: their modules, each of which registers its kinds)
_KINDS: dict[str, TokenizerKind] = {}
_BUILTIN: set[str] = set()


def _check_trainable(kind: TokenizerKind) -> None:
    if not (isinstance(kind.model_class, type) and issubclass(kind.model_class, TrainableTokenizer)):
        raise PurrError(f"tokenizer kind {kind.name}: a kind without a checkpoint file is trained and saved as a "
                        f"folder, so its model class must subclass TrainableTokenizer")
    if getattr(kind.model_class, "kind", None) != kind.name:
        raise PurrError(f"tokenizer kind {kind.name}: its model class records kind "
                        f"{getattr(kind.model_class, 'kind', None)!r}; set {kind.model_class.__name__}.kind = "
                        f"{kind.name!r}")
    if not dataclasses.is_dataclass(kind.config_class):
        raise PurrError(f"tokenizer kind {kind.name}: its config class must be a dataclass")
    missing = [f for f in TRAINABLE_CONFIG_FIELDS if f not in kind.config_fields]
    if missing:
        raise PurrError(f"tokenizer kind {kind.name}: its config lacks {', '.join(missing)}; a trainable config "
                        f"has {', '.join(TRAINABLE_CONFIG_FIELDS)}")
    try:
        kind.config_class()
    except TypeError as err:
        raise PurrError(f"tokenizer kind {kind.name}: every config setting needs a default ({err})") from None
    for other in _KINDS.values():
        if other.trainable and other.config_class is kind.config_class:
            raise PurrError(f"tokenizer kind {kind.name}: config class {kind.config_class.__name__} already belongs "
                            f"to kind {other.name}; give each trainable kind its own config class")


def _add(kind: TokenizerKind) -> None:
    if not kind.name or kind.name != kind.name.strip():
        raise PurrError(f"tokenizer kind name {kind.name!r} must be a non-empty word")
    taken = {name: other.name for other in _KINDS.values() for name in (other.name, *other.legacy_names)}
    for name in (kind.name, *kind.legacy_names):
        if name in taken:
            raise PurrError(f"tokenizer kind name {name!r} is taken by kind {taken[name]}; choose another name")
    if kind.trainable:
        _check_trainable(kind)
    _KINDS[kind.name] = kind


def register_kind(kind: TokenizerKind, builtin: bool = False) -> TokenizerKind:
    """Add ``kind`` to the registry and return it.

    Args:
        kind: the entry.
        builtin: a kind the package ships (registered by its own module; it cannot be unregistered).

    Raises:
        PurrError: its name or a legacy name is taken, or a trainable kind's classes do not provide what
            :class:`~purrception.tokenizers.base.TrainableTokenizer` asks for.
    """
    _add(kind)
    if builtin:
        _BUILTIN.add(kind.name)
    return kind


def unregister_kind(name: str) -> None:
    """Remove a kind added by :func:`register_kind` (the built-in kinds stay)."""
    kinds = _KINDS
    if name in _BUILTIN:
        raise PurrError(f"tokenizer kind {name} is built in and cannot be unregistered")
    if name not in kinds:
        raise PurrError(f"unknown tokenizer kind {name!r}; known: {known_kinds()}")
    del kinds[name]


def find_kind(name: str) -> TokenizerKind | None:
    """The kind called ``name`` (or with ``name`` among its legacy names), or ``None``."""
    kinds = _KINDS
    if name in kinds:
        return kinds[name]
    return next((kind for kind in kinds.values() if name in kind.legacy_names), None)


def get_kind(name: str) -> TokenizerKind:
    """Like :func:`find_kind`; an unknown name is a :class:`PurrError` listing the known kinds."""
    kind = find_kind(name)
    if kind is None:
        raise PurrError(f"unknown tokenizer kind {name!r}; known: {known_kinds()}")
    return kind


def all_kinds() -> dict[str, TokenizerKind]:
    """Every registered kind by name, built-in ones first (a copy: registering later does not change it)."""
    return dict(_KINDS)


def pretrained_kinds() -> dict[str, TokenizerKind]:
    """The kinds read from a checkpoint file, by name."""
    return {name: kind for name, kind in _KINDS.items() if kind.pretrained}


def trainable_kinds() -> dict[str, TokenizerKind]:
    """The kinds trained here and saved as folders, by name."""
    return {name: kind for name, kind in _KINDS.items() if kind.trainable}


def get_trainable_kind(name: str) -> TokenizerKind:
    """The trainable kind called ``name`` (or a legacy name of it); else a :class:`PurrError` listing them."""
    kind = find_kind(name)
    if kind is None or not kind.trainable:
        what = "a pretrained kind (loaded from its checkpoint file)" if kind is not None else "unknown"
        raise PurrError(f"tokenizer kind {name!r} is {what}, not a trainable one; trainable kinds: "
                        f"{', '.join(trainable_kinds())}")
    return kind


def kind_for_config(config: Any) -> TokenizerKind:
    """The trainable kind whose config class ``config`` is an instance of (each trainable kind has its own)."""
    for kind in _KINDS.values():
        if kind.trainable and type(config) is kind.config_class:
            return kind
    raise PurrError(f"{type(config).__name__} is the config of no trainable tokenizer kind; pass the config of one "
                    f"of: {', '.join(trainable_kinds())}")


def known_kinds() -> str:
    """Every tokenizer kind, for error messages: the pretrained files', then the folders'."""
    return (f"{', '.join(pretrained_kinds())} (pretrained checkpoint files), "
            f"{', '.join(trainable_kinds())} (folders made by `purr tokenizer train`)")
