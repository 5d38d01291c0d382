"""Image sources for encoding (an image folder or the embedded data) and the preprocessing to a tokenizer's input.

Folder layouts:

* class sub-folders: ``ROOT/<class name>/**/<image>``; classes are the sorted sub-folder names, label = index.
* flat folder + labels file: every line ``<path relative to ROOT><sep><label>`` with ``sep`` a comma, a tab or
  spaces (``#`` comments, blank lines and a ``filename,label`` header are skipped). Labels are integers
  (``num_classes = max + 1``) or class names (sorted, label = index). Items keep the file's order.

Preprocessing (Pillow only): convert to RGB (or grey for a one-channel tokenizer), resize the shorter side to the
tokenizer's resolution (repeated 2x box reductions, then bicubic, as in ADM/DiT) and center-crop a square; pixels
map to ``[-1, 1]``. Square images already at the resolution are left untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from purrception.errors import PurrError
from purrception.hashing import sha256_lines, sha256_parts
from purrception.pixels import IMAGE_SUFFIXES, images_to_tensor, list_image_files

__all__ = ["ImageSource", "folder_source", "embedded_source", "resize_center_crop", "image_to_tensor"]

log = logging.getLogger(__name__)


@dataclass
class ImageSource:
    """A list of images with labels, read one at a time.

    Attributes:
        files: image paths (folder sources) or ``None`` (array sources).
        arrays: uint8 images ``(N, H, W)`` / ``(N, H, W, C)`` (array sources) or ``None``.
        labels: int64 ``(N,)``.
        num_classes: number of classes.
        description: what the manifest records about the data, including a ``fingerprint`` of the listing.
    """

    labels: np.ndarray
    num_classes: int
    description: dict[str, Any]
    files: list[Path] | None = None
    arrays: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def load(self, index: int) -> Image.Image:
        """The ``index``-th image as a PIL image (errors name the file)."""
        if self.arrays is not None:
            return Image.fromarray(self.arrays[index])
        path = self.files[index]
        try:
            with Image.open(path) as img:
                img.load()
                return img
        except (OSError, ValueError) as err:
            raise PurrError(f"cannot read image {path}: {err}; remove or fix the file") from None


def _read_labels_file(root: Path, labels_file: Path) -> tuple[list[Path], list[str]]:
    if not labels_file.is_file():
        raise PurrError(f"labels file not found: {labels_file}")
    files, raw = [], []
    for lineno, line in enumerate(labels_file.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sep = "," if "," in line else ("\t" if "\t" in line else None)
        parts = line.rsplit(sep, 1)
        if len(parts) != 2:
            raise PurrError(f"{labels_file}:{lineno}: expected '<image path>,<label>', got {line!r}")
        name, label = parts[0].strip(), parts[1].strip()
        if not files and label.lower() in ("label", "class", "y"):
            continue  # header
        path = root / name
        if not path.is_file():
            raise PurrError(f"{labels_file}:{lineno}: image {path} not found")
        files.append(path)
        raw.append(label)
    if not files:
        raise PurrError(f"{labels_file} lists no images")
    return files, raw


def folder_source(root: str | Path, labels_file: str | Path | None = None) -> ImageSource:
    """List an image folder: class sub-folders, or a flat folder plus a labels file.

    Args:
        root: the folder.
        labels_file: ``<path>,<label>`` lines for a flat folder (see the module docstring).

    Returns:
        The source; its ``description`` names the layout, the classes and a fingerprint of the listing.
    """
    root = Path(root)
    if not root.is_dir():
        raise PurrError(f"image folder not found: {root}")
    if labels_file is not None:
        files, raw = _read_labels_file(root, Path(labels_file))
        if all(r.lstrip("-").isdigit() for r in raw):
            labels = np.array([int(r) for r in raw], dtype=np.int64)
            if labels.min() < 0:
                raise PurrError(f"negative label in {labels_file}; labels must be 0 .. num_classes-1")
            class_names = [str(i) for i in range(int(labels.max()) + 1)]
        else:
            class_names = sorted(set(raw))
            index = {name: i for i, name in enumerate(class_names)}
            labels = np.array([index[r] for r in raw], dtype=np.int64)
        layout = "flat+labels"
    else:
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise PurrError(f"{root} has no class sub-folders; put images in ROOT/<class>/ or pass --labels FILE")
        files, label_list, class_names = [], [], []
        for d in class_dirs:
            images = list_image_files(d)
            if not images:
                log.warning("class folder %s holds no images; skipped", d)
                continue
            class_names.append(d.name)
            files.extend(images)
            label_list.extend([len(class_names) - 1] * len(images))
        if not files:
            raise PurrError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
        labels = np.array(label_list, dtype=np.int64)
        layout = "class-folders"
    listing = [f"{p.relative_to(root).as_posix()}\t{y}\t{p.stat().st_size}" for p, y in zip(files, labels)]
    description = {
        "type": "image-folder",
        "layout": layout,
        "root": str(root.resolve()),
        "labels_file": str(Path(labels_file).resolve()) if labels_file is not None else None,
        "num_images": len(files),
        "class_names": class_names,
        "fingerprint": sha256_lines(listing, length=16),
    }
    log.info("%s: %d images in %d classes (%s)", root, len(files), len(class_names), layout)
    return ImageSource(labels=labels, num_classes=len(class_names), description=description, files=files,
                       class_names=class_names)


def embedded_source(split: str) -> ImageSource:
    """The embedded MNIST digits (``train``, ``heldout`` or ``all``) as a source of 28x28 grey images."""
    from purrception.data.embedded import NUM_CLASSES, load_embedded_mnist

    data = load_embedded_mnist(split)
    digest = sha256_parts(data.images, data.labels, length=16)
    description = {"type": "embedded-mnist", "split": split, "num_images": len(data), "fingerprint": digest}
    return ImageSource(labels=data.labels, num_classes=NUM_CLASSES, description=description, arrays=data.images,
                       class_names=[str(i) for i in range(NUM_CLASSES)])


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (2x box reductions while possible, then bicubic), then a centred square crop."""
    if img.size == (size, size):
        return img
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.Resampling.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(max(size, round(s * scale)) for s in img.size), resample=Image.Resampling.BICUBIC)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def image_to_tensor(img: Image.Image, size: int, channels: int) -> torch.Tensor:
    """PIL image -> float ``(channels, size, size)`` in ``[-1, 1]`` after :func:`resize_center_crop`."""
    if channels not in (1, 3):
        raise PurrError(f"tokenizers with {channels} image channels are not supported by the image reader")
    img = img.convert("L" if channels == 1 else "RGB")
    img = resize_center_crop(img, size)
    return images_to_tensor(np.array(img, dtype=np.uint8)[None])[0]
