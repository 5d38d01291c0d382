"""VQ tokenizers behind one interface (see :mod:`purrception.tokenizers.base`)."""

# Importing the pretrained loaders registers the kinds "sd-vq-f8" and "llamagen-vq-ds8-c2i" in
# purrception.tokenizers.store.FOREIGN_LOADERS.
from purrception.tokenizers import pretrained as _pretrained  # noqa: F401
