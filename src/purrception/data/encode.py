"""Images -> token shards with a frozen tokenizer (``purr encode``): resumable, optionally multi-process.

The work is cut into parts of ``part_size`` images; each part is encoded in batches that never straddle parts and
written atomically to ``OUT/.parts/`` (see :mod:`purrception.data.shards`). A re-run with the same inputs skips the
parts already on disk, so an interrupted encode resumes where it stopped and produces byte-identical shards.
Under ``torchrun`` every rank encodes parts ``rank, rank + world, ...``; rank 0 merges them once all ranks are
done (the output folder must be visible to every rank). Codes are ``c = argmin_k ||q(x) - E_k||`` (paper eq. 9).

With ``flip=True`` every image is stored twice, original then its horizontal mirror (items ``2i`` and ``2i+1``).

The plan of an unfinished encode (``OUT/.parts/plan.json``) is format version :data:`PLAN_VERSION`. Version 1 plans
(no ``version``) were written before the preprocessing composited transparency on white and scaled 16-bit grey to
8 bits, and their ``preprocessing`` may lack ``alpha``: :func:`_plan_from_v1` reads them in today's layout, and the
resume re-encodes only the parts that hold an image the two rules treat differently (transparent or 16-bit grey),
so the result is byte-identical to a fresh encode.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm.auto import tqdm

from purrception import distributed
from purrception.data.images import WIDE_GREY_MODES, ImageSource, embedded_source, folder_source
from purrception.data.reading import read_batches
from purrception.data.shards import (
    MANIFEST,
    PARTS_DIR,
    codes_dtype_for,
    merge_token_parts,
    part_path,
    parts_dir,
    write_token_part,
)
from purrception.errors import PurrError
from purrception.formats import read_version
from purrception.io import atomic_save_json, load_json
from purrception.locks import folder_lock, is_lock_file
from purrception.pixels import images_to_tensor
from purrception.tokenizers.base import VQTokenizer
from purrception.tokenizers.store import load_tokenizer

__all__ = ["EncodeOptions", "encode_source", "encode_images", "preprocessing_record"]

log = logging.getLogger(__name__)

PLAN_NAME = "plan.json"
#: format version of ``plan.json`` (version 1: no ``version`` entry, written before transparency was composited)
PLAN_VERSION = 2


@dataclass(frozen=True)
class EncodeOptions:
    """How to encode.

    Attributes:
        flip: also store the horizontal mirror of every image.
        batch_size: images per forward pass (per process).
        part_size: images per part file (the unit of resumption); batches never straddle parts.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (under torchrun, ``cuda`` means ``cuda:LOCAL_RANK``).
        workers: DataLoader worker processes for reading and resizing images (see
            :func:`purrception.data.reading.read_batches`).
        progress: show a progress bar (rank 0 only).
        tokenizer_path: where the tokenizer was read from; recorded so that training and sampling on these shards
            find the decoder without being told.
    """

    flip: bool = False
    batch_size: int = 32
    part_size: int = 1024
    device: str = "cpu"
    workers: int = 0
    progress: bool = True
    tokenizer_path: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.part_size < 1:
            raise PurrError("`batch_size` and `part_size` must be positive")


def preprocessing_record(tokenizer: VQTokenizer, flip: bool) -> dict[str, Any]:
    """What the manifest records about the pixels the tokenizer saw."""
    return {
        "image_size": int(tokenizer.image_size),
        "channels": int(tokenizer.image_channels),
        "resize": "shorter side to image_size (2x box reductions, then bicubic); unchanged if already that size",
        "crop": "center",
        "alpha": "composited on white",
        "range": [-1.0, 1.0],
        "flip": bool(flip),
        "flip_layout": "item 2i = image i, item 2i+1 = its horizontal mirror" if flip else None,
    }


# ---- distributed helpers ---------------------------------------------------------------------------------------
def _agree(rank: int, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (so that no rank waits forever for one that refused)."""
    if not distributed.is_distributed():
        return value
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---- the encode loop -------------------------------------------------------------------------------------------
def _part_ranges(n: int, part_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + part_size, n)) for s in range(0, n, part_size)]


def _refuse_foreign(out: Path) -> str | None:
    """An error message when ``out`` exists and is neither empty nor an encode's own output, else ``None``.

    Called when ``out`` has no manifest and no plan: then only ``.parts/`` (debris of an encode killed before its
    plan was on disk) may be there. Anything else belongs to someone else (e.g. a folder of samples).
    """
    if not out.exists():
        return None
    if not out.is_dir():
        return f"`out` {out} is a file, not a folder; choose another `out` (nothing was written)"
    foreign = sorted(p.name for p in out.iterdir() if p.name != PARTS_DIR and not is_lock_file(p))
    if foreign:
        return (f"{out} is not empty and holds no unfinished encode ({len(foreign)} other entries, e.g. "
                f"{foreign[0]!r}); choose a new or empty `out` (nothing was written)")
    return None


def _check_plan(out: Path, plan: dict[str, Any], source: ImageSource,
                ranges: list[tuple[int, int]]) -> str | None:
    """Create or compare ``OUT/.parts/plan.json``; return an error message or ``None``.

    An unfinished encode of the same inputs and settings is resumed. One whose only difference is the images of the
    same folder (its fingerprint of names, labels and sizes) is the debris of a run that failed on a bad image since
    repaired or removed: its parts are stale, so they are discarded (logged) and the encode starts afresh. Other
    settings (tokenizer, preprocessing, part size) are refused, so a mistyped command never throws away another
    encode's work. A version 1 plan that matches once read in today's layout is resumed: the parts it made that
    today's preprocessing would encode differently are removed (to be encoded again) and the plan is rewritten.
    """
    plan_file = parts_dir(out) / PLAN_NAME
    if plan_file.is_file():
        old = load_json(plan_file, "encode plan")
        if not isinstance(old, dict):
            return f"{plan_file} is not an encode plan; delete {parts_dir(out)} or choose another `out`"
        version = read_version(old, "encode plan", plan_file, PLAN_VERSION,
                               f"delete {parts_dir(out)} to encode from the start, or choose another `out`")
        if version == 1:
            old = _plan_from_v1(old)
        if old != plan and _only_images_changed(old, plan):
            log.info("%s: the input images changed since the unfinished encode there stopped; discarding its %d "
                     "stale part(s) and starting afresh", out, len(list(parts_dir(out).glob("part-*.npz"))))
            shutil.rmtree(parts_dir(out))
            atomic_save_json(plan_file, plan)
            return None
        if old != plan:
            diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
            return (f"{out} holds an unfinished encode of different inputs or settings ({', '.join(diff)} differ); "
                    f"delete {parts_dir(out)} or choose another `out`")
        if version == 1:
            _drop_parts_made_differently(out, source, ranges)
            atomic_save_json(plan_file, plan)
        return None
    atomic_save_json(plan_file, plan)
    return None


def _only_images_changed(old: Any, plan: dict[str, Any]) -> bool:
    """Whether two plans differ only in the contents of the same image folder (its listing and part count)."""
    if not isinstance(old, dict) or not isinstance(old.get("source"), dict):
        return False
    settings = [{k: v for k, v in p.items() if k not in ("source", "num_parts")} for p in (old, plan)]
    folder = [{k: p["source"].get(k) for k in ("type", "root", "labels_file")} for p in (old, plan)]
    return settings[0] == settings[1] and folder[0] == folder[1] and folder[1]["type"] == "image-folder"


def _plan_from_v1(old: dict[str, Any]) -> dict[str, Any]:
    """A version 1 plan in the version 2 layout: ``version`` added, and ``preprocessing.alpha`` where it lacks it.

    The parts such a plan made may differ from today's for transparent and 16-bit grey images, which
    :func:`_drop_parts_made_differently` re-encodes; for every other image the two rules give the same pixels.
    """
    preprocessing = old.get("preprocessing")
    if isinstance(preprocessing, dict):
        preprocessing = {"alpha": "composited on white", **preprocessing}
    return {**old, "version": PLAN_VERSION, "preprocessing": preprocessing}


def _drop_parts_made_differently(out: Path, source: ImageSource, ranges: list[tuple[int, int]]) -> None:
    """Remove the parts of a version 1 plan holding an image that today's preprocessing treats differently.

    Version 1 encodes converted every image with ``Image.convert``: transparent pixels kept the colour they store
    and 16-bit grey was clipped. Only image headers are read (mode and transparency); an image that cannot be
    opened drops its part too, so that the resume reports it as a fresh encode would.
    """
    if source.files is None:  # array sources are plain 8-bit images: both rules agree
        return
    dropped = []
    for index, (start, stop) in enumerate(ranges):
        path = part_path(out, index)
        if path.is_file() and any(_converts_differently_in_v1(source.files[i]) for i in range(start, stop)):
            path.unlink()
            dropped.append(index)
    log.info("%s: resuming an encode planned by an older purrception; %d part(s) hold transparent or 16-bit grey "
             "images, which are now preprocessed differently, and are encoded again%s", out, len(dropped),
             f" ({', '.join(map(str, dropped))})" if dropped else "")


def _converts_differently_in_v1(file: Path) -> bool:
    try:
        with Image.open(file) as img:
            return bool(img.has_transparency_data) or img.mode in WIDE_GREY_MODES
    except Exception:  # unreadable: encode it again, so that its error is reported as in any encode
        return True


def _batches(ranges: list[tuple[int, int]], parts: list[int], batch_size: int) -> list[list[int]]:
    out = []
    for p in parts:
        start, stop = ranges[p]
        out.extend(list(range(s, min(s + batch_size, stop))) for s in range(start, stop, batch_size))
    return out


@torch.inference_mode()
def _encode_batch(tokenizer: VQTokenizer, x: torch.Tensor, flip: bool) -> np.ndarray:
    if flip:
        b = x.shape[0]
        codes = tokenizer.encode(torch.cat([x, x.flip(-1)]))  # (2B, h, w)
        codes = torch.stack([codes[:b], codes[b:]], dim=1).flatten(0, 1)  # interleave: image, mirror, ...
    else:
        codes = tokenizer.encode(x)
    return codes.cpu().numpy()


def encode_source(tokenizer: VQTokenizer, source: ImageSource, out: str | Path,
                  options: EncodeOptions = EncodeOptions()) -> Path:
    """Encode every image of ``source`` with ``tokenizer`` into the shard folder ``out`` (resumable).

    Args:
        tokenizer: the frozen tokenizer (moved to ``options.device``).
        source: the images and labels.
        out: the shard folder to create (missing or empty); an unfinished encode there with the same plan is
            resumed.
        options: batch / part sizes, flip copies, device, workers.

    Returns:
        ``out``, holding ``codes.npy``, ``labels.npy``, ``codebook.npy`` and ``manifest.json``.

    Raises:
        PurrError: ``out`` holds other shards, an unfinished encode of other inputs, or files no encode wrote.
    """
    out = Path(out)
    joined_here = not dist.is_initialized()
    info = distributed.init_distributed(options.device)
    try:
        return _encode(tokenizer, source, out, options, info)
    finally:
        if joined_here:
            distributed.cleanup_distributed()


def _encode(tokenizer: VQTokenizer, source: ImageSource, out: Path, options: EncodeOptions,
            info: distributed.DistInfo) -> Path:
    with contextlib.ExitStack() as lock:  # rank 0 holds ``out``'s lock until the merge is done
        return _encode_locked(tokenizer, source, out, options, info, lock)


def _encode_locked(tokenizer: VQTokenizer, source: ImageSource, out: Path, options: EncodeOptions,
                   info: distributed.DistInfo, lock: contextlib.ExitStack) -> Path:
    rank, world, device = info.rank, info.world_size, info.device
    identity = tokenizer.identity()
    preprocessing = preprocessing_record(tokenizer, options.flip)
    copies = 2 if options.flip else 1
    ranges = _part_ranges(len(source), options.part_size)
    plan = {"version": PLAN_VERSION, "tokenizer": identity.to_dict(), "source": source.description,
            "preprocessing": preprocessing, "part_size": options.part_size, "num_parts": len(ranges)}
    source_record = dict(source.description, num_items=len(source) * copies, tokenizer_path=options.tokenizer_path)

    error = None
    finished = False
    if rank == 0:
        try:
            lock.enter_context(folder_lock(out, param="out"))
            if (out / MANIFEST).is_file():
                manifest = load_json(out / MANIFEST, "shard manifest")
                same = (isinstance(manifest, dict) and manifest.get("tokenizer") == plan["tokenizer"]
                        and manifest.get("source") == source_record
                        and manifest.get("preprocessing") == preprocessing)
                if same:
                    finished = True
                else:
                    error = f"{out} already holds token shards of other inputs; choose another `out` or delete it"
            elif (parts_dir(out) / PLAN_NAME).is_file():
                error = _check_plan(out, plan, source, ranges)
            else:
                error = _refuse_foreign(out) or _check_plan(out, plan, source, ranges)
        except (PurrError, OSError) as err:  # told to every rank below, so none waits forever
            error = str(err)
    error, finished = _agree(rank, (error, finished))
    if error:
        raise PurrError(error)
    if finished:
        log.info("%s is already complete; nothing to do", out)
        return out

    mine = list(range(rank, len(ranges), world))
    todo = [p for p in mine if not part_path(out, p).is_file()]
    done_items = sum(ranges[p][1] - ranges[p][0] for p in mine if p not in todo)
    if len(todo) < len(mine):
        log.info("rank %d: resuming, %d of %d part(s) already on disk", rank, len(mine) - len(todo), len(mine))

    tokenizer = tokenizer.to(device).eval()
    batches = _batches(ranges, todo, options.batch_size)
    loader = read_batches(source, tokenizer.image_size, tokenizer.image_channels, batches, workers=options.workers)
    my_total = sum(ranges[p][1] - ranges[p][0] for p in mine)
    bar = tqdm(total=my_total * copies, initial=done_items * copies, unit="img", desc=f"encode {out.name}",
               disable=not options.progress or rank != 0, dynamic_ncols=True)
    part_iter = _collect_parts(loader, batches, ranges, options.part_size, tokenizer, device, options.flip, bar)
    for p, codes, labels in part_iter:
        write_token_part(out, p, codes, labels, identity.codebook_size)
        log.debug("rank %d wrote part %d (%d items)", rank, p, len(labels))
    bar.close()

    distributed.barrier()  # every part is on disk
    if rank == 0:
        sizes = [(stop - start) * copies for start, stop in ranges]
        codebook = tokenizer.codebook.detach().float().cpu().numpy()
        merge_token_parts(out, sizes, tokenizer.latent_shape, codebook, identity, source.num_classes,
                          source_record, preprocessing)
        log.info("wrote %d items (%s codes, %d classes) to %s", sum(sizes),
                 codes_dtype_for(identity.codebook_size), source.num_classes, out)
    distributed.barrier()
    return out


def _collect_parts(loader: Iterator[tuple[np.ndarray, np.ndarray]], batches: list[list[int]],
                   ranges: list[tuple[int, int]], part_size: int, tokenizer: VQTokenizer, device: torch.device,
                   flip: bool, bar: tqdm) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(part index, codes, labels)`` as each part covered by ``batches`` (read by ``loader``) is complete."""
    copies = 2 if flip else 1
    pending: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for indices, (images, y) in zip(batches, loader):
        p = indices[0] // part_size
        codes = _encode_batch(tokenizer, images_to_tensor(images).to(device), flip)
        labels = np.repeat(y, copies)
        chunks = pending.setdefault(p, ([], []))
        chunks[0].append(codes)
        chunks[1].append(labels)
        bar.update(len(labels))
        if indices[-1] == ranges[p][1] - 1:
            codes_list, labels_list = pending.pop(p)
            yield p, np.concatenate(codes_list), np.concatenate(labels_list)


def encode_images(tokenizer_path: str | Path, out: str | Path, *, tokenizer_kind: str | None = None,
                  images: str | Path | None = None, labels_file: str | Path | None = None,
                  embedded: str | None = None, options: EncodeOptions = EncodeOptions()) -> Path:
    """Load a tokenizer and encode an image folder or the embedded data into token shards (``purr encode``).

    Args:
        tokenizer_path: a tokenizer folder, or a pretrained checkpoint file with ``tokenizer_kind``.
        out: the shard folder.
        tokenizer_kind: a pretrained kind of ``tokenizers.registry``, for pretrained checkpoint files.
        images: an image folder (class sub-folders, or flat with ``labels_file``).
        labels_file: ``<path>,<label>`` lines for a flat folder.
        embedded: ``"train"``, ``"heldout"`` or ``"all"`` to encode the embedded MNIST digits instead.
        options: see :class:`EncodeOptions`.
    """
    if (images is None) == (embedded is None):
        raise PurrError("give exactly one of `images` (a folder) or `embedded` (a split)")
    if labels_file is not None and images is None:
        raise PurrError("`labels_file` goes with `images` (a flat image folder)")
    if images is not None:
        try:
            source = folder_source(images, labels_file)
        except PurrError as err:
            raise PurrError(f"{err} (nothing was written)") from None
    else:
        source = embedded_source(embedded)
    tokenizer = load_tokenizer(tokenizer_path, kind=tokenizer_kind)
    return encode_source(tokenizer, source, out, options)
