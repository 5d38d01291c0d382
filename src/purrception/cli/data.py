"""``purr data export --data NAME --out DIR``: an embedded data set as a class-sub-folder image folder.

The folder is what ``purr tokenizer train --images``, ``purr encode --images`` and ``purr eval --reference``
read (see :mod:`purrception.data.export_folder`).
"""

from __future__ import annotations

import argparse

from purrception.cli.common import positive_int
from purrception.data.datasets import DATASET_ALIASES, DATASETS, get_dataset
from purrception.data.export_folder import export_image_folder

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="write a registered data set (digits, emoji, ...) as an image folder")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    e = sub.add_parser(
        "export", help="write an embedded data set as DIR/<class>/<index>.png plus DIR/classes.json",
        description="Write an embedded data set as a class-sub-folder image folder, the layout purr tokenizer "
                    "train --images, purr encode --images and purr eval --reference read. The folder is written "
                    "atomically: an interrupted export leaves nothing under DIR.")
    e.add_argument("--data", required=True, choices=[*DATASETS, *DATASET_ALIASES], metavar="NAME",
                   help="; ".join(f"{d.name}: {d.summary}" + (f" (pip install 'purrception[{d.extra}]')"
                                                               if d.extra else "") for d in DATASETS.values())
                   + "; exported at their native size unless --size")
    e.add_argument("--out", required=True, metavar="DIR", help="folder to create (it must not exist, or be empty)")
    e.add_argument("--size", type=positive_int, default=None, metavar="S",
                   help="resize (shorter side) and centre-crop every image to SxS (default: the native size)")
    e.add_argument("--split", default=None,
                   help="a split of a data set that has them: digits has train (4,000), heldout (1,000) and all "
                        "(5,000; the default)")
    e.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    data = get_dataset(args.data).load(args.split)
    export_image_folder(data.images, data.labels, data.class_names, args.out, size=args.size)
    return 0
