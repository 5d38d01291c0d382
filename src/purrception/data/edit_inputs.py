"""Reading the images to edit (``purr edit --input``): an image folder, one image file, or an ``.npz``.

- **Folder with class sub-folders** ``ROOT/<class>/**/<image>``: each image gets the class its sub-folder names,
  matched against the generator's class names (the data's own folder names, e.g. ``cat``), else read as a class
  id (``3``); images directly in ``ROOT`` are then ignored (one warning).
- **Flat folder**: the images directly in it (sorted by name), without a class.
- **One image file**: one image without a class.
- **``.npz``**: ``images`` uint8 ``(N, H, W)`` or ``(N, H, W, 3)`` and optionally ``labels`` ``(N,)`` class ids
  (a negative id: no class).

Images are returned as read; :func:`purrception.generation.editing.prepare_images` brings them to the tokenizer's
resolution.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from purrception.data.images import read_image_file
from purrception.errors import PurrError
from purrception.pixels import IMAGE_SUFFIXES, is_image_file, scan_image_files

__all__ = ["EditInputs", "read_edit_inputs"]

log = logging.getLogger(__name__)


@dataclass
class EditInputs:
    """Images to edit and the class each one has.

    Attributes:
        images: PIL images, or a uint8 array ``(N, H, W[, 3])`` (``.npz`` input).
        labels: one class id or ``None`` (no class) per image.
        names: a short name per image (its file's path relative to the input, or ``npz[i]``).
    """

    images: list[Image.Image] | np.ndarray
    labels: list[int | None]
    names: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def _class_id(name: str, class_names: Sequence[str], num_classes: int, folder: Path) -> int:
    if name in class_names:
        return list(class_names).index(name)
    if name.lstrip("-").isdigit() and 0 <= int(name) < num_classes:
        return int(name)
    shown = ", ".join(list(class_names)[:8]) + (", ..." if len(class_names) > 8 else "")
    raise PurrError(f"class folder {folder / name} names no class of this model ({shown}); name sub-folders by "
                    f"class name or id 0..{num_classes - 1}")


def _read_folder(root: Path, class_names: Sequence[str], num_classes: int) -> EditInputs:
    entries = sorted(root.iterdir())
    loose = [p for p in entries if is_image_file(p)]
    classes = [(d, scan_image_files(d, within=root)[0]) for d in entries if d.is_dir() and not d.name.startswith(".")]
    classes = [(d, files) for d, files in classes if files]
    if not classes:
        if not loose:
            raise PurrError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}); give an image folder, an image "
                            "file or an .npz with 'images'")
        return EditInputs([read_image_file(p) for p in loose], [None] * len(loose), [p.name for p in loose])
    if loose:
        log.warning("%d image(s) directly in %s are ignored: with class sub-folders only those are read", len(loose),
                    root)
    images, labels, names = [], [], []
    for d, files in classes:
        label = _class_id(d.name, class_names, num_classes, root)
        for p in files:
            images.append(read_image_file(p))
            labels.append(label)
            names.append(p.relative_to(root).as_posix())
    log.info("%s: %d images in %d class folder(s)", root, len(images), len(classes))
    return EditInputs(images, labels, names)


def _read_npz(path: Path, num_classes: int) -> EditInputs:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data:
                raise PurrError(f"{path} has no 'images' array (it has: {', '.join(data.files) or 'nothing'})")
            images = data["images"]
            raw = data["labels"] if "labels" in data else None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise PurrError(f"cannot read {path}: {err}") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise PurrError(f"{path}: 'images' must be uint8 (N, H, W) or (N, H, W, 3), got {images.dtype} "
                        f"{images.shape}")
    if len(images) == 0:
        raise PurrError(f"{path} holds no images; give at least one")
    labels: list[int | None] = [None] * len(images)
    if raw is not None:
        if raw.shape != (len(images),) or not np.issubdtype(raw.dtype, np.integer):
            raise PurrError(f"{path}: 'labels' must be {len(images)} integer class ids, got {raw.dtype} {raw.shape}")
        if (raw >= num_classes).any():
            raise PurrError(f"{path}: label {int(raw.max())} is out of range; this model knows classes "
                            f"0..{num_classes - 1} (a negative label: no class)")
        labels = [int(v) if v >= 0 else None for v in raw]
    return EditInputs(images, labels, [f"{path.name}[{i}]" for i in range(len(images))])


def read_edit_inputs(path: str | Path, class_names: Sequence[str], num_classes: int) -> EditInputs:
    """The images at ``path`` and their classes (module docstring).

    Args:
        path: a folder, an image file or an ``.npz``.
        class_names: the generator's class names (sub-folders are matched against them).
        num_classes: the generator's number of classes.
    """
    path = Path(path)
    if not path.exists():
        raise PurrError(f"{path} not found; give an image folder, an image file or an .npz with 'images'")
    if path.is_dir():
        return _read_folder(path, class_names, num_classes)
    if path.suffix.lower() == ".npz":
        return _read_npz(path, num_classes)
    return EditInputs([read_image_file(path)], [None], [path.name])
