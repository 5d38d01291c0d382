"""VQ tokenizers behind one interface (see :mod:`purrception.tokenizers.base`).

Pretrained kinds are the entries of :data:`purrception.tokenizers.pretrained.PRETRAINED_KINDS`; folders made by
``purr tokenizer train`` are read by :func:`purrception.tokenizers.store.load_tokenizer`.
"""
