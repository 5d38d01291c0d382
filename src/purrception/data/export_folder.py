"""Write labelled image arrays as a class-sub-folder image folder, the layout every folder reader takes.

``OUT/<class folder>/<index>.png`` plus ``OUT/classes.json``, which maps each folder to its class name and label.
Class folders are filesystem-safe names (``"Smileys & Emotion"`` -> ``"smileys-and-emotion"``); file names are the
item's zero-padded index in the arrays, so a folder reader lists items in the arrays' order within each class.

The folder is written atomically: into a hidden temporary sibling (``.OUT.<random>.tmp``), renamed onto ``OUT`` at
the end, so an interrupted export leaves nothing under ``OUT`` (a process killed outright leaves only the hidden
sibling). An existing non-empty ``OUT`` is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from purrception.data.images import resize_center_crop
from purrception.errors import PurrError
from purrception.io import current_umask, disk_full_error

__all__ = ["exported_class_names", "export_image_folder", "safe_folder_name", "CLASSES_FILE"]

log = logging.getLogger(__name__)

#: the file in the exported folder that maps class folders to class names and labels
CLASSES_FILE = "classes.json"


def safe_folder_name(name: str) -> str:
    """A lower-case folder name of letters, digits and ``-``: ``"Smileys & Emotion"`` -> ``"smileys-and-emotion"``."""
    safe = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("&", " and ")).strip("-")
    if not safe:
        raise PurrError(f"class name {name!r} has no letter or digit to name a folder with; rename the class")
    return safe


def _class_folders(class_names: Sequence[str]) -> list[str]:
    folders = [safe_folder_name(name) for name in class_names]
    if len(set(folders)) != len(folders):
        clash = next(f for f in folders if folders.count(f) > 1)
        raise PurrError(f"two class names map to the folder name {clash!r}; rename one of the classes")
    return folders


def _refuse_non_empty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PurrError(f"{out} already exists and is not an empty folder; choose another `out` or remove it "
                        "(nothing was overwritten)")


def _write_images(root: Path, images: np.ndarray, labels: np.ndarray, folders: list[str], size: int | None) -> None:
    width = len(str(max(len(labels) - 1, 0)))
    for folder in folders:
        (root / folder).mkdir()
    for index, (array, label) in enumerate(zip(images, labels)):
        img = Image.fromarray(array)
        if size is not None:
            img = resize_center_crop(img, size)
        img.save(root / folders[label] / f"{index:0{width}d}.png")


def export_image_folder(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], out: str | Path,
                        size: int | None = None) -> Path:
    """Write ``images`` as ``out/<class folder>/<index>.png`` and ``out/classes.json``, atomically.

    Args:
        images: uint8 ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` (RGB).
        labels: int64 ``(N,)`` indexing ``class_names``.
        class_names: one name per class; every class must have at least one image.
        out: the folder to create; it must not exist, or be empty.
        size: resize (shorter side) and centre-crop every image to ``size`` x ``size``; ``None`` keeps the size.

    Returns:
        ``out``.
    """
    out = Path(out)
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels):
        raise PurrError(f"{len(images)} images but {len(labels)} labels; pass one label per image")
    counts = np.bincount(labels, minlength=len(class_names)) if len(labels) else np.zeros(len(class_names), int)
    if len(counts) != len(class_names) or labels.min(initial=0) < 0:
        raise PurrError(f"labels must be 0 .. {len(class_names) - 1} (one per class name)")
    if not counts.all():
        raise PurrError(f"class {class_names[int(np.argmin(counts))]!r} has no image; drop it from class_names")
    folders = _class_folders(class_names)
    _refuse_non_empty(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's folder is private; the export is an ordinary folder
        _write_images(tmp, images, labels, folders, size)
        classes = [{"label": i, "name": name, "folder": folder, "images": int(n)}
                   for i, (name, folder, n) in enumerate(zip(class_names, folders, counts))]
        (tmp / CLASSES_FILE).write_text(json.dumps({"classes": classes}, indent=2) + "\n")
        _refuse_non_empty(out)  # again: something may have appeared there meanwhile
        os.replace(tmp, out)  # onto a missing or empty folder
    except BaseException as err:  # nothing of the export is left: the folder appears whole or not at all
        shutil.rmtree(tmp, ignore_errors=True)
        full = disk_full_error(out, err)
        if full is not None:
            raise full from None
        raise
    log.info("wrote %d images in %d class folders to %s", len(labels), len(class_names), out)
    return out


def exported_class_names(folder: str | Path, folders: Sequence[str]) -> list[str] | None:
    """The class names an export recorded in ``folder/classes.json`` for the class sub-folders ``folders`` (in that
    order), or None when the folder has no such record (or it does not name every one of them)."""
    record = Path(folder) / CLASSES_FILE
    if not record.is_file():
        return None
    try:
        names = {c["folder"]: str(c["name"]) for c in json.loads(record.read_text())["classes"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [names[f] for f in folders] if all(f in names for f in folders) else None
