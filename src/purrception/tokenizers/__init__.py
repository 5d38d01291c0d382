"""VQ tokenizers behind one interface (see :mod:`purrception.tokenizers.base`).

Every kind, pretrained checkpoint file or trainable architecture, is one entry of the registry in
:mod:`purrception.tokenizers.registry`; :func:`purrception.tokenizers.store.load_tokenizer` reads a kind's file or a
folder made by ``purr tokenizer train``, :mod:`purrception.tokenizers.train` trains any trainable kind, and
:class:`purrception.tokenizers.recipe.TokenizerRecipe` says which tokenizer a data set wants.
"""
