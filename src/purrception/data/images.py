"""Image sources for encoding (an image folder or the embedded data) and the preprocessing to a tokenizer's input.

Folder layouts:

* class sub-folders: ``ROOT/<class name>/**/<image>``; classes are the sorted sub-folder names, label = index.
* flat folder + labels file: every line ``<path relative to ROOT><sep><label>`` with ``sep`` a comma, a tab or
  spaces (``#`` comments, blank lines and a ``filename,label`` header are skipped). Labels are integers
  (``num_classes = max + 1``) or class names (sorted, label = index). Items keep the file's order.

In class sub-folders, files without an image suffix (``notes.txt``, ``.DS_Store``, ...) are skipped with one log
line counting them, as are images directly in ``ROOT`` (a warning) and empty class folders (a warning; they get no
label). A single class is accepted with a warning: the generator trained on it is effectively unconditional.

Preprocessing (Pillow only, :func:`prepare_image`): transparent images (RGBA, LA, PA, or a palette / colour key with
transparency) are composited on white first, so that transparent pixels become white rather than the colour they
happen to store (often black), and 16-bit grey is scaled to 8 bits; then convert to RGB (or grey for a one-channel
tokenizer), resize the shorter side to the tokenizer's resolution (repeated 2x box reductions, then bicubic, as in
ADM/DiT) and center-crop a square; pixels map to ``[-1, 1]``. Square images already at the resolution are left
untouched.
:class:`ConversionLog` says once per distinct input (size, mode) what the preprocessing does to it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from purrception.errors import PurrError
from purrception.hashing import sha256_lines, sha256_parts
from purrception.pixels import IMAGE_SUFFIXES, images_to_tensor, is_image_file, scan_image_files

__all__ = ["read_image_file", "ImageSource", "folder_source", "embedded_source", "resize_center_crop",
           "convert_channels", "GREY_MODES", "WIDE_GREY_MODES", "prepare_image", "image_to_tensor", "ImageOrigin",
           "image_origin", "describe_conversion", "ConversionLog"]

log = logging.getLogger(__name__)


def read_image_file(path: Path) -> Image.Image:
    """One image file, loaded; an unreadable one is a :class:`PurrError` naming the file.

    An image claiming more pixels than Pillow decodes safely (``Image.MAX_IMAGE_PIXELS``, about 89 M: a
    decompression bomb, or a header that lies) is refused from its header, before any pixel is decoded.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return img
    except UnidentifiedImageError:  # its own message repeats the path
        raise PurrError(f"cannot read image {path}: Pillow does not recognise it as an image; "
                        f"remove or fix the file") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PurrError(f"cannot read image {path}: it claims {_claimed_size(path)} pixels, more than "
                        f"{Image.MAX_IMAGE_PIXELS} (a decompression bomb?); remove or shrink the file") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise PurrError(f"cannot read image {path}: {err}; remove or fix the file") from None


def _claimed_size(path: Path) -> str:
    """``WxH`` as an image file's header states it (nothing decoded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path) as img:
                return f"{img.size[0]}x{img.size[1]}"
        finally:
            Image.MAX_IMAGE_PIXELS = saved


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
        return read_image_file(self.files[index])


def _lies_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (symbolic links and ``..`` resolved) lies inside the folder ``root``."""
    return path.resolve().is_relative_to(root.resolve())


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
        if not _lies_inside(path, root):
            raise PurrError(f"{labels_file}:{lineno}: image {name!r} lies outside the image folder {root}; list "
                            f"paths inside the folder, relative to it")
        if not path.is_file():
            raise PurrError(f"{labels_file}:{lineno}: image {path} not found")
        files.append(path)
        raw.append(label)
    if not files:
        raise PurrError(f"{labels_file} lists no images")
    return files, raw


def _list_class_folders(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Files, labels and class names of ``ROOT/<class>/**/<image>``; says what it skips (one line per kind)."""
    entries = sorted(root.iterdir())
    class_dirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    loose = [p for p in entries if is_image_file(p)]
    if not class_dirs:
        if loose:
            raise PurrError(f"{root} has no class sub-folders; put images in ROOT/<class>/ or pass `labels_file=FILE`")
        raise PurrError(f"{root} holds no class sub-folders and no images; put images in ROOT/<class>/, one "
                        f"sub-folder per class")
    if loose:
        log.warning("%d image(s) directly in %s (e.g. %r) are ignored: only ROOT/<class>/ sub-folders are read; "
                    "move them into a class folder", len(loose), root, loose[0].name)
    files, label_list, class_names, skipped, empty = [], [], [], [], []
    for d in class_dirs:
        images, others = scan_image_files(d, within=root)
        skipped.extend(others)
        if not images:
            empty.append(d.name)
            continue
        class_names.append(d.name)
        files.extend(images)
        label_list.extend([len(class_names) - 1] * len(images))
    if skipped:
        log.info("skipped %d non-image file(s) under %s (e.g. %r); only %s files are read", len(skipped), root,
                 skipped[0].relative_to(root).as_posix(), ", ".join(IMAGE_SUFFIXES))
    if not files:
        raise PurrError(f"the class folders of {root} ({', '.join(empty[:3])}{', ...' if len(empty) > 3 else ''}) "
                        f"hold no images ({', '.join(IMAGE_SUFFIXES)}); put images in ROOT/<class>/")
    if empty:
        log.warning("class folder(s) %s under %s hold no images; skipped (they get no label)", ", ".join(empty), root)
    return files, np.array(label_list, dtype=np.int64), class_names


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
        files, labels, class_names = _list_class_folders(root)
        layout = "class-folders"
    if len(class_names) == 1:
        log.warning("%s has one class (%r): a generator trained on it is effectively unconditional (the label "
                    "carries no information); add classes if you want a class-conditional model", root,
                    class_names[0])
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


def _target_mode(channels: int) -> str:
    if channels not in (1, 3):
        raise PurrError(f"tokenizers with {channels} image channels are not supported by the image reader")
    return "L" if channels == 1 else "RGB"


#: integer grey modes holding 16-bit values (16-bit PNGs open as ``I;16``; some readers give 32-bit ``I``)
WIDE_GREY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
#: every PIL mode whose pixels carry no colour: one channel (bilevel, 8-bit, 16/32-bit integer, float), with or
#: without alpha
GREY_MODES = frozenset({"1", "L", "LA", "La", "F", *WIDE_GREY_MODES})


def _grey_to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit grey image as ``L``: ``round(v / 257)``, so 0 and 65535 map to 0 and 255 (values outside clipped)."""
    values = np.asarray(img, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8))


def convert_channels(img: Image.Image, channels: int) -> Image.Image:
    """``img`` as grey (``L``, 1 channel) or ``RGB`` (3), transparency composited on white first.

    Transparent pixels become white rather than the colour they happen to store (often black), which matters for
    emoji-like PNGs; 16-bit grey (a 16-bit PNG opens as ``I;16``) is scaled to 8 bits, where ``Image.convert``
    would clip everything above 255 to white; other images convert as ``Image.convert`` does.
    """
    mode = _target_mode(channels)
    if img.mode in WIDE_GREY_MODES:
        img = _grey_to_8bit(img)
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert(mode)


def prepare_image(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """The one preprocessing rule: PIL image -> uint8 ``(size, size)`` (1 channel) or ``(size, size, 3)``.

    :func:`convert_channels` (transparency composited on white, then grey or RGB), then :func:`resize_center_crop`.
    """
    return np.array(resize_center_crop(convert_channels(img, channels), size), dtype=np.uint8)


def image_to_tensor(img: Image.Image, size: int, channels: int) -> torch.Tensor:
    """PIL image -> float ``(channels, size, size)`` in ``[-1, 1]`` after :func:`prepare_image`."""
    return images_to_tensor(prepare_image(img, size, channels)[None])[0]


class ImageOrigin(NamedTuple):
    """What an image was before :func:`prepare_image`: enough to say what the preprocessing did to it."""

    width: int
    height: int
    mode: str
    transparent: bool


def image_origin(img: Image.Image) -> ImageOrigin:
    """The :class:`ImageOrigin` of ``img`` (read before preprocessing)."""
    return ImageOrigin(img.size[0], img.size[1], img.mode, bool(img.has_transparency_data))


def describe_conversion(origin: ImageOrigin, size: int, channels: int) -> str | None:
    """What :func:`prepare_image` does to images like ``origin``, as one phrase; ``None`` if it leaves them be.

    E.g. ``resizing 72x72 RGBA images to 32x32 RGB (shorter side to 32, centre crop; transparency composited on
    white)``.
    """
    target = _target_mode(channels)
    resized = (origin.width, origin.height) != (size, size)
    if not resized and origin.mode == target and not origin.transparent:
        return None
    how = []
    if resized:
        how.append(f"shorter side to {size}" + (", centre crop" if origin.width != origin.height else ""))
    if origin.mode in WIDE_GREY_MODES:
        how.append("16-bit grey scaled to 8 bits")
    if origin.transparent:
        how.append("transparency composited on white")
    verb = "resizing" if resized else "converting"
    detail = f" ({'; '.join(how)})" if how else ""
    return f"{verb} {origin.width}x{origin.height} {origin.mode} images to {size}x{size} {target}{detail}"


class ConversionLog:
    """Logs (INFO) each distinct conversion :func:`prepare_image` makes, the first time it is seen.

    One per pass over a source: encoding or reading a folder of mixed images logs one line per distinct
    ``(size, mode, transparency)``, not one per image; images already at the target size and mode log nothing.
    Fed in the main process with the origins that DataLoader workers carry out with each batch.
    """

    def __init__(self, size: int, channels: int):
        _target_mode(channels)
        self.size, self.channels = size, channels
        self._seen: set[ImageOrigin] = set()

    def note(self, origins: list[ImageOrigin]) -> None:
        """Log the conversions of ``origins`` not seen before."""
        for origin in origins:
            if origin in self._seen:
                continue
            self._seen.add(origin)
            message = describe_conversion(origin, self.size, self.channels)
            if message is not None:
                log.info("%s", message)
