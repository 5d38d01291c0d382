"""VQ tokenizers behind one interface (see :mod:`purrception.tokenizers.base`).

Every kind, pretrained checkpoint file or trainable architecture, is one entry of the registry in
:mod:`purrception.tokenizers.registry`; :func:`purrception.tokenizers.store.load_tokenizer` reads a kind's file or a
folder made by ``purr tokenizer train``, :mod:`purrception.tokenizers.train` trains any trainable kind, and
:class:`purrception.tokenizers.recipe.TokenizerRecipe` says which tokenizer a data set wants.
"""

# every kind's module registers its kinds: importing them here makes the registry complete whatever is imported first;
# the order is the order help texts list them in
from purrception.tokenizers import pretrained  # noqa: E402, F401

# isort: split
from purrception.tokenizers import conv_vq  # noqa: E402, F401
