"""A tokenizer recipe: which trainable kind, which of its settings differ from its defaults, and how it trains.

Data sets pass a recipe to say what tokenizer suits them (e.g. the embedded digits' ``DIGITS_RECIPE`` in
:mod:`purrception.data.embedded_shards`, an image folder's ``FOLDER_RECIPE`` in
:mod:`purrception.data.tokenizer_folder`); :meth:`TokenizerRecipe.cache_key` names the cached tokenizer it makes,
keyed on the kind, the full architecture and the training config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from purrception.hashing import sha256_parts
from purrception.tokenizers.registry import DEFAULT_TRAINABLE_KIND, TokenizerKind, get_trainable_kind
from purrception.tokenizers.train import TokenizerTrainConfig

__all__ = ["TokenizerRecipe"]


def _key(obj: Any) -> str:
    """12 hex digits of the SHA-256 of ``obj`` as sorted-key JSON (the digest cached tokenizer folders are named by)."""
    return sha256_parts(json.dumps(obj, sort_keys=True), length=12)


@dataclass(frozen=True)
class TokenizerRecipe:
    """A trainable kind, the settings of its config that differ from the defaults, and its training config.

    Attributes:
        kind: a trainable kind of :mod:`purrception.tokenizers.registry` (or a legacy name of one).
        overrides: config settings replacing the kind's defaults, e.g. ``{"codebook_size": 512}``.
        train: how it is trained.
    """

    kind: str = DEFAULT_TRAINABLE_KIND
    overrides: Mapping[str, Any] = field(default_factory=dict)
    train: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", dict(self.overrides))  # a copy: the caller's dict cannot change it

    @property
    def entry(self) -> TokenizerKind:
        """The registry entry of :attr:`kind` (a :class:`~purrception.errors.PurrError` if it is not trainable)."""
        return get_trainable_kind(self.kind)

    def model_config(self, check: bool = True) -> Any:
        """The kind's config with :attr:`overrides` applied.

        Args:
            check: run the config's ``check()`` (one-line errors for impossible settings); ``False`` when the image
                format is set later, as :func:`~purrception.data.tokenizer_folder.train_tokenizer_on_folder` does.
        """
        return self.entry.make_config(self.overrides, check=check)

    def with_overrides(self, **settings: Any) -> TokenizerRecipe:
        """This recipe with more config settings replaced (checked when the config is built)."""
        return replace(self, overrides={**self.overrides, **settings})

    def with_train(self, **settings: Any) -> TokenizerRecipe:
        """This recipe with fields of its training config replaced, e.g. ``with_train(steps=300)``."""
        return replace(self, train=replace(self.train, **settings))

    def for_kind(self, kind: str) -> TokenizerRecipe:
        """The same recipe for another trainable kind: the overrides ``kind``'s config also has are kept (the image
        format and the settings common to VQ tokenizers, such as ``codebook_size``), the others dropped."""
        fields = set(get_trainable_kind(kind).config_fields)
        return replace(self, kind=kind, overrides={k: v for k, v in self.overrides.items() if k in fields})

    def cache_key(self) -> str:
        """12 hex digits naming the tokenizer this recipe makes: the digest of the kind's key parts (see
        :meth:`~purrception.tokenizers.registry.TokenizerKind.key_parts`), the full config and the training config.
        For ``conv-vq`` this is the digest of ``[asdict(config), asdict(train)]``, the key of earlier versions."""
        entry = self.entry
        return _key([*entry.key_parts(self.model_config()), asdict(self.train)])
