"""The Python front door: load a trained generator from anywhere it lives, sample it, save it as a plain folder.

``PurrceptionPipeline.from_pretrained(PATH)`` takes a run folder (its newest checkpoint), a checkpoint file, or a
folder written by :meth:`PurrceptionPipeline.save_pretrained`; calling the pipeline generates images for class
labels with the sampler's knobs (:class:`~purrception.sampling.settings.SamplerSettings`: integration steps,
temperature ``tau`` of eq. 15, guidance scale, solver) and returns :class:`PipelineOutput`. The call takes two of
them under diffusers' keyword names, ``num_inference_steps`` (``sample_steps``) and ``guidance_scale``
(``cfg_scale``), the convention of diffusers pipelines; everything else in the library, :meth:`sampler` included,
uses ``sample_steps`` and ``cfg_scale``. Image ``i`` depends only on ``(seed, i)``, exactly as in ``purr sample``,
whatever the batch size or device.

A saved pipeline folder holds no pickle: ``model.safetensors`` (the EMA weights used for sampling),
``codebook.safetensors`` (the codebook the flow was trained over), ``config.json`` (model, method, options,
classes, tokenizer identity), the tokenizer (its own folder, ``tokenizer/``, when it is one of this library's, else
a pointer to its local file with its codebook hash) and a ``README.md`` model card. ``config.json``'s ``version``
is :data:`PIPELINE_VERSION`; version 1 folders predate ``model.pos_embed_layout`` and are read with the legacy
position table they were trained with (:data:`~purrception.models.dit.LEGACY_POS_EMBED_LAYOUT`).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from purrception.checkpoint import Checkpoint, resolve_checkpoint
from purrception.distributed import DistInfo
from purrception.errors import PurrError, positive_int
from purrception.evaluation.evaluate import EvalSettings, evaluate_generator
from purrception.flows.base import FlowMethod, get_method
from purrception.formats import read_version
from purrception.generation.editing import EditOutput, edit_images
from purrception.generation.generate import check_images_fit, check_labels, generate_codes
from purrception.generation.generator import Generator
from purrception.generation.uncertainty import UncertaintyTrace, candidate_codes, trace_labels
from purrception.hashing import sha256_file
from purrception.io import atomic_copy, atomic_save_json, atomic_write, load_json
from purrception.locks import folder_lock, is_lock_file
from purrception.model_card import model_card
from purrception.models.dit import LEGACY_POS_EMBED_LAYOUT, DiT, DiTConfig
from purrception.pixels import tensor_to_images
from purrception.sampling.settings import Knob, SamplerSettings
from purrception.tokenizers.base import TokenizerIdentity, VQTokenizer
from purrception.tokenizers.store import CONFIG_NAME as TOKENIZER_CONFIG
from purrception.tokenizers.store import load_matching_tokenizer
from purrception.training.config import RUN_CONFIG_VERSION

__all__ = ["PurrceptionPipeline", "PipelineOutput", "PIPELINE_FORMAT", "PIPELINE_VERSION", "is_saved_pipeline"]

log = logging.getLogger(__name__)

PIPELINE_FORMAT = "purrception-pipeline"
#: 2: ``config.json``'s ``model`` records ``pos_embed_layout``; 1: it does not (legacy position table)
PIPELINE_VERSION = 2
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CODEBOOK_NAME = "codebook.safetensors"
TOKENIZER_DIR = "tokenizer"


@dataclass
class PipelineOutput:
    """What one call of :class:`PurrceptionPipeline` produced.

    Attributes:
        images: one PIL image per sample.
        pixels: the same images as uint8 ``(N, H, W)`` (grey) or ``(N, H, W, C)``.
        codes: the generated codes ``(N, h, w)``.
        labels: the requested class of each sample ``(N,)``.
        uncertainty: the posterior read along the trajectories (``uncertainty_times`` / ``topk``), else ``None``.
        candidates: uint8 ``(N, k, H, W[, C])``: each image decoded with the code at ``position`` replaced by each
            of the final posterior's top-``k`` codes (``topk > 0``), else ``None``.
    """

    images: list[Image.Image]
    pixels: np.ndarray
    codes: torch.Tensor
    labels: np.ndarray
    uncertainty: UncertaintyTrace | None = None
    candidates: np.ndarray | None = None


class PurrceptionPipeline:
    """A trained generator with its tokenizer, ready to sample.

    Args:
        method: the flow method (its codebook on the pipeline's device).
        model: the backbone with the EMA weights, in eval mode.
        tokenizer: the tokenizer that decodes the codes (its identity matches the model's).
        info: what the pipeline knows about itself: ``step``, ``class_names``, ``train``, ``data``, ``source``,
            ``tokenizer`` (identity, kind and path), written into ``config.json`` and the model card.
    """

    def __init__(self, method: FlowMethod, model: DiT, tokenizer: VQTokenizer, info: dict[str, Any] | None = None):
        self.method = method
        self.model = model.eval()
        self.tokenizer = tokenizer.eval()
        self.info = dict(info or {})
        self.device = next(model.parameters()).device

    # -- loading --------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", tokenizer: str | Path | None = None,
                        tokenizer_kind: str | None = None, method: str | None = None) -> "PurrceptionPipeline":
        """Load from a run folder, a checkpoint file, or a folder written by :meth:`save_pretrained`.

        Args:
            path: where the generator lives.
            device: where to run it.
            tokenizer: the tokenizer's path, when not the one recorded (e.g. the run moved machines).
            tokenizer_kind: the kind of a pretrained tokenizer file (default: the recorded kind).
            method: if given, refuse a generator trained with another method.
        """
        p = Path(path)
        if not p.exists():
            raise PurrError(f"{p} not found; pass a run folder, a checkpoint or a saved pipeline folder")
        if is_saved_pipeline(p):
            return cls._from_folder(p, device, tokenizer, tokenizer_kind, method)
        return cls.from_checkpoint(resolve_checkpoint(p, method), device, tokenizer, tokenizer_kind)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, device: str | torch.device = "cpu", tokenizer: str | Path | None = None,
                        tokenizer_kind: str | None = None) -> "PurrceptionPipeline":
        """A pipeline from a loaded training checkpoint (EMA weights) and its tokenizer."""
        tok = ckpt.load_tokenizer(tokenizer, tokenizer_kind)
        tok_path = tokenizer or ckpt.tokenizer_path
        run = _run_description(ckpt.path)
        info = {"step": ckpt.step, "source": str(ckpt.path), "train": dict(ckpt.state.config),
                "train_seconds": ckpt.train_seconds, "data": run.get("data"), "class_names": run.get("class_names"),
                "tokenizer": {"identity": ckpt.tokenizer_identity.to_dict(), "kind": tokenizer_kind or tok.kind,
                              "path": str(Path(tok_path).resolve())}}
        return cls(ckpt.build_method(), ckpt.build_model(ema=True), tok, info).to(device)

    @classmethod
    def _from_folder(cls, folder: Path, device: str | torch.device, tokenizer: str | Path | None,
                     tokenizer_kind: str | None, method: str | None) -> "PurrceptionPipeline":
        config = load_json(folder / CONFIG_NAME, "pipeline config")
        if not isinstance(config, dict):
            raise PurrError(f"{folder / CONFIG_NAME} is not a pipeline config; save the pipeline again")
        version = read_version(config, "pipeline", folder / CONFIG_NAME, PIPELINE_VERSION, "save the pipeline again")
        try:
            model_entry = dict(config["model"])
            if version == 1:  # saved before the layout was recorded, when every DiT used the legacy table
                model_entry["pos_embed_layout"] = LEGACY_POS_EMBED_LAYOUT
            elif "pos_embed_layout" not in model_entry:
                raise KeyError("model.pos_embed_layout")
            model_config = DiTConfig.from_dict(model_entry)
            method_name, options = str(config["method"]["name"]), dict(config["method"]["options"])
            tok_entry = dict(config["tokenizer"])
            identity = TokenizerIdentity.from_dict(tok_entry["identity"])
        except (KeyError, TypeError, ValueError) as err:
            raise PurrError(f"{folder / CONFIG_NAME} is incomplete ({err}); save the pipeline again") from None
        if method is not None and method_name != method:
            raise PurrError(f"pipeline {folder} was trained with method {method_name!r}, not {method!r}")
        weights = _read_safetensors(folder / WEIGHTS_NAME, "pipeline weights")
        codebook = _read_safetensors(folder / CODEBOOK_NAME, "pipeline codebook")["codebook"]
        model = DiT(model_config)
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as err:
            raise PurrError(f"{folder / WEIGHTS_NAME} does not fit {folder / CONFIG_NAME}: "
                            f"{str(err).splitlines()[0]}") from None
        if tokenizer is not None:
            tok_path = Path(tokenizer)
        elif (folder / TOKENIZER_DIR / TOKENIZER_CONFIG).is_file():
            tok_path = folder / TOKENIZER_DIR
        elif tok_entry.get("path"):
            tok_path = Path(tok_entry["path"])
        else:
            raise PurrError(f"pipeline {folder} has no tokenizer folder and records no tokenizer path; "
                            "pass `tokenizer=PATH`")
        kind = tokenizer_kind or (None if tok_path.is_dir() else tok_entry.get("kind"))
        tok = load_matching_tokenizer(tok_path, identity, kind)
        info = {k: v for k, v in config.items() if k not in ("format", "version", "model", "method")}
        info["source"] = str(folder)
        info["tokenizer"] = {**tok_entry, "path": str(tok_path.resolve())}
        info["tokenizer"].pop("folder", None)
        return cls(get_method(method_name)(codebook, **options), model.eval(), tok, info).to(device)

    def to(self, device: str | torch.device) -> "PurrceptionPipeline":
        """Move the model, codebook and tokenizer to ``device``."""
        self.model.to(device)
        self.method.to(device)
        self.tokenizer.to(device)
        self.device = torch.device(device)
        return self

    # -- what it is -----------------------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return int(self.model.config.num_classes)

    @property
    def class_names(self) -> list[str]:
        """One name per class: the data's own where it had them (folder names), else the class ids."""
        names = self.info.get("class_names")
        if isinstance(names, list) and len(names) == self.num_classes:
            return [str(n) for n in names]
        return [str(i) for i in range(self.num_classes)]

    @property
    def has_posterior(self) -> bool:
        """Can uncertainty be read along the trajectories (Purrception's categorical posterior)?"""
        return bool(self.method.has_posterior and self.method.has_endpoint)

    # -- sampling -------------------------------------------------------------------------------------------------

    def labels_for(self, class_labels: Sequence[int] | None, num_per_class: int) -> np.ndarray:
        """``class_labels`` each repeated ``num_per_class`` times (``None``: every class), checked against the
        model's classes."""
        num_per_class = positive_int(num_per_class, "num_per_class")
        classes = np.arange(self.num_classes) if class_labels is None else np.asarray(list(class_labels))
        if classes.size == 0:
            raise PurrError("`class_labels` is empty; give class ids like [0, 3, 7] or None for every class")
        if not np.issubdtype(classes.dtype, np.integer):
            raise PurrError(f"`class_labels` must be integers, got {list(class_labels)!r}")
        check_labels(classes, self.num_classes)
        self.check_fits(classes.size * num_per_class, "num_per_class")
        return np.repeat(classes.astype(np.int64), num_per_class)

    def check_fits(self, num_images: int, param: str = "num_images") -> None:
        """Refuse a request of ``num_images`` images that memory cannot hold at once (before allocating any):
        codes, pixels and a label per image (:func:`~purrception.generation.generate.check_images_fit`)."""
        h, w = self.tokenizer.latent_shape
        side, channels = self.tokenizer.image_size, self.tokenizer.image_channels
        check_images_fit(num_images, 8 * h * w + side * side * channels + 8, param)

    def sampler(self, sample_steps: int = 100, tau: Knob = 1.0, cfg_scale: Knob = 1.0,
                solver: str = "euler") -> SamplerSettings:
        """The :class:`SamplerSettings` for these knobs (it checks them; messages name the fields). Whether this
        pipeline's method takes a temperature is checked when it samples (``FlowMethod.check_sampler``)."""
        return SamplerSettings(sample_steps=sample_steps, tau=tau, cfg_scale=cfg_scale, solver=solver)

    @torch.no_grad()
    def __call__(self, class_labels: Sequence[int] | None = None, num_per_class: int = 1,
                 num_inference_steps: int = 100, tau: Knob = 1.0, guidance_scale: Knob = 1.0, solver: str = "euler",
                 seed: int = 0, batch_size: int = 64, first_index: int = 0,
                 uncertainty_times: Sequence[float] | None = None, topk: int = 0,
                 position: tuple[int, int] | None = None, progress: bool = False) -> PipelineOutput:
        """Generate ``num_per_class`` images for each of ``class_labels``.

        ``num_inference_steps`` and ``guidance_scale`` are diffusers' keyword names, kept as this pipeline's
        documented convention; they are :class:`SamplerSettings`' ``sample_steps`` and ``cfg_scale``, and errors
        about them name those fields.

        Args:
            class_labels: class ids (``None``: every class); the samples come in this order.
            num_per_class: images per entry of ``class_labels``.
            num_inference_steps: integration steps ``T`` on the grid ``t_i = i / T`` (``sample_steps``).
            tau: posterior temperature (eq. 15): a number, a :class:`~purrception.sampling.schedules.Schedule`, or a
                spec like ``"linear:1.2:0.6"``; methods without logits take only 1.
            guidance_scale: classifier-free guidance ``s`` in ``l_u + s (l_c - l_u)`` (1 = off), number or schedule
                (``cfg_scale``).
            solver: ``euler`` (the paper's), ``heun``, ``midpoint``, or an adaptive ``NAME:TOL`` (torchdiffeq).
            seed: image ``first_index + k`` uses the noise of ``(seed, first_index + k)``.
            batch_size: images per forward pass (does not change the images).
            first_index: noise index of the first image (regenerate image ``i`` alone with ``first_index=i``).
            uncertainty_times: read the posterior's per-position entropy at these times in ``[0, 1]``.
            topk: also read the final posterior's top-``k`` codes at ``position`` and decode each alternative.
            position: ``(row, col)`` in the code grid, with ``topk``.
            progress: show a progress bar.
        """
        sampler = self.sampler(num_inference_steps, tau, guidance_scale, solver)
        labels = self.labels_for(class_labels, num_per_class)
        batch_size = positive_int(batch_size, "batch_size")
        if (topk > 0) != (position is not None):
            raise PurrError("`topk` and `position` go together: give both or neither")
        device = str(self.device)
        trace = None
        if uncertainty_times is not None or topk > 0:
            trace = trace_labels(self.method, self.model, labels, sampler, seed, self.tokenizer.snap,
                                 list(uncertainty_times or []), topk, position, batch_size, device, progress,
                                 first_index=first_index)
            codes = trace.codes
        else:
            codes = generate_codes(self.method, self.model, labels, sampler, seed, self.tokenizer.snap, batch_size,
                                   first_index, device, progress)
        pixels = self.decode(codes, batch_size)
        candidates = None
        if trace is not None and topk > 0:
            swapped = candidate_codes(trace.codes, position, trace.topk_codes).flatten(0, 1)     # (N*k, h, w)
            candidates = self.decode(swapped, batch_size).reshape(len(labels), topk, *pixels.shape[1:])
        return PipelineOutput([Image.fromarray(p) for p in pixels], pixels, codes, labels, trace, candidates)

    # -- editing (generation/editing.py) ---------------------------------------------------------------------------

    def inpaint(self, images: Any, keep: Any, class_labels: Any = None, num_per_image: int = 1,
                num_inference_steps: int = 100, tau: Knob = 1.0, guidance_scale: Knob = 1.0, solver: str = "euler",
                seed: int = 0, batch_size: int = 64, first_index: int = 0, progress: bool = False) -> EditOutput:
        """Regenerate what ``keep`` does not keep, with the kept codes clamped (inpainting, outpainting).

        Args:
            images: uint8 ``(N, H, W[, C])`` or a list of PIL images / arrays; brought to the tokenizer's
                resolution as ``purr encode`` does.
            keep: what to keep: a boolean pixel mask ``(H, W)`` or ``(N, H, W)`` at the tokenizer's resolution, a
                mask image (white = keep), or a region (``top``, ``bottom``, ``left``, ``right``, ``centre``, a pixel
                box ``"x0,y0,x1,y1"``, ``"not:REGION"``); a code is kept only if its whole footprint is.
            class_labels: ``None`` (unconditional), one class id, or one id (or ``None``) per image.
            num_per_image: completions per image; completion ``k`` uses the noise of ``(seed, first_index + k)``.
            num_inference_steps, tau, guidance_scale, solver, seed, batch_size, first_index, progress: as for
                :meth:`__call__`.
        """
        return edit_images(self.method, self.model, self.tokenizer, images,
                           self.sampler(num_inference_steps, tau, guidance_scale, solver), keep=keep,
                           class_labels=class_labels, num_per_image=num_per_image, seed=seed,
                           batch_size=positive_int(batch_size, "batch_size"), first_index=first_index,
                           device=str(self.device), progress=progress)

    def variations(self, images: Any, strength: float, class_labels: Any = None, num_per_image: int = 1,
                   num_inference_steps: int = 100, tau: Knob = 1.0, guidance_scale: Knob = 1.0,
                   solver: str = "euler", seed: int = 0, batch_size: int = 64, first_index: int = 0,
                   keep: Any = None, progress: bool = False) -> EditOutput:
        """Variations of ``images`` (SDEdit for flows): the last ``floor(strength * num_inference_steps)`` grid
        steps from the images' codes noised to ``t = 1 - strength`` (generation/editing.py); ``strength = 1`` is
        ordinary sampling, a strength near 0 returns the images' codes. ``class_labels`` may name other classes;
        ``keep`` optionally clamps a region as :meth:`inpaint` does; the other arguments are :meth:`inpaint`'s."""
        if strength is None:
            raise PurrError("`strength` must be a number in (0, 1], got None")
        return edit_images(self.method, self.model, self.tokenizer, images,
                           self.sampler(num_inference_steps, tau, guidance_scale, solver), keep=keep,
                           strength=strength, class_labels=class_labels, num_per_image=num_per_image, seed=seed,
                           batch_size=positive_int(batch_size, "batch_size"), first_index=first_index,
                           device=str(self.device), progress=progress)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """Codes ``(N, h, w)`` -> uint8 images ``(N, H, W)`` or ``(N, H, W, C)`` through the tokenizer."""
        parts = [tensor_to_images(self.tokenizer.decode(codes[i:i + batch_size].to(self.device)))
                 for i in range(0, len(codes), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0,), dtype=np.uint8)

    # -- scoring ------------------------------------------------------------------------------------------------

    def generator(self) -> Generator:
        """What :func:`~purrception.evaluation.evaluate.evaluate_generator` samples from: this pipeline's method,
        network and classes, recorded in the report by where they were loaded from."""
        source = Path(self.info.get("source") or "")
        weights = source / WEIGHTS_NAME if source.is_dir() else source
        return Generator(self.method, self.model, self.num_classes,
                         {"path": str(source), "step": self.info.get("step"), "method": self.method.name,
                          "sha256": sha256_file(weights, length=16) if weights.is_file() else None,
                          "weights": "ema", "num_classes": self.num_classes})

    def evaluate(self, settings: EvalSettings | None = None, **fields: Any) -> dict[str, Any]:
        """Score this generator in one process (FID, class accuracy, precision / recall; the protocol's report).

        Args:
            settings: an :class:`~purrception.evaluation.evaluate.EvalSettings`; or give its fields as keywords,
                e.g. ``pipe.evaluate(protocol="folder", reference="my_images/", num_samples=500)``.
        """
        settings = replace(settings or EvalSettings(), **fields)
        info = DistInfo(rank=0, world_size=1, local_rank=0, device=self.device)
        report = evaluate_generator(self.generator(), self.tokenizer, settings, info)
        assert report is not None  # one process: it is rank 0
        return report

    # -- saving ---------------------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        """Write a pickle-free folder that :meth:`from_pretrained` reads (see the module docstring).

        Args:
            folder: a new or empty folder (an existing non-empty one is refused; nothing is overwritten).
            metrics: measured scores to record in ``config.json`` and the model card (e.g. a ``purr eval`` report's
                ``metrics``).
        """
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise PurrError(f"{folder} exists and is not an empty folder; choose another (nothing was overwritten)")
        with folder_lock(folder, param="folder"):  # one writer; the emptiness check sees no other writer's files
            if any(not is_lock_file(p) for p in folder.iterdir()):
                raise PurrError(f"{folder} exists and is not an empty folder; choose another "
                                "(nothing was overwritten)")
            self._write_folder(folder, metrics)
        log.info("saved pipeline to %s", folder)
        return folder

    def _write_folder(self, folder: Path, metrics: dict[str, Any] | None) -> None:
        """The files of :meth:`save_pretrained` (config.json last: it marks the folder complete)."""
        weights = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(weights, tmp))
        codebook = {"codebook": self.method.codebook.detach().contiguous().cpu()}
        atomic_write(folder / CODEBOOK_NAME, lambda tmp: save_file(codebook, tmp))
        tok_entry = self._save_tokenizer(folder)
        info = {**self.info, "tokenizer": tok_entry}
        info.pop("source", None)
        if metrics:
            info["metrics"] = metrics
        config = {"format": PIPELINE_FORMAT, "version": PIPELINE_VERSION, **_jsonable(info),
                  "model": self.model.config.to_dict(),
                  "method": {"name": self.method.name, "options": self.method.options()},
                  "num_classes": self.num_classes, "class_names": self.class_names}
        card = model_card(config)
        atomic_write(folder / "README.md", lambda tmp: Path(tmp).write_text(card))
        atomic_save_json(folder / CONFIG_NAME, config)          # last: it marks the folder complete

    def _save_tokenizer(self, folder: Path) -> dict[str, Any]:
        """Copy a tokenizer folder of this library into ``folder/tokenizer``; point to any other by path."""
        entry = dict(self.info.get("tokenizer") or {})
        entry["identity"] = self.tokenizer.identity().to_dict()
        entry.setdefault("kind", self.tokenizer.kind)
        source = Path(entry["path"]) if entry.get("path") else None
        if source is None:
            raise PurrError("this pipeline does not know where its tokenizer lives; load it with `tokenizer=PATH`")
        if (source / TOKENIZER_CONFIG).is_file():
            shutil.copytree(source, folder / TOKENIZER_DIR, copy_function=atomic_copy,
                            ignore=lambda _, names: [n for n in names if is_lock_file(n) or n.endswith(".tmp")])
            entry["path"], entry["folder"] = None, TOKENIZER_DIR
        return entry


def is_saved_pipeline(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :meth:`PurrceptionPipeline.save_pretrained`."""
    config = Path(path) / CONFIG_NAME
    if not config.is_file():
        return False
    data = load_json(config, "config")
    return isinstance(data, dict) and data.get("format") == PIPELINE_FORMAT


def _read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PurrError(f"{what} missing: {path}; save the pipeline again")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for malformed files
        raise PurrError(f"cannot read {what} {path}: {str(err).splitlines()[0]}") from None


def _run_description(ckpt_path: Path) -> dict[str, Any]:
    """The data a checkpoint was trained on, from its run folder's ``config.json`` and the shards' manifest."""
    run_config = ckpt_path.parent.parent / "config.json"
    if ckpt_path.parent.name != "checkpoints" or not run_config.is_file():
        return {}
    try:
        config = load_json(run_config, "run config")
        read_version(config, "run config", run_config, RUN_CONFIG_VERSION, "describe the data by hand")
        shards = config.get("shards")
        manifest = load_json(Path(shards) / "manifest.json", "shard manifest") if shards else {}
    except PurrError:
        return {}
    source = manifest.get("source", {}) if isinstance(manifest, dict) else {}
    names = source.get("class_names") if isinstance(source, dict) else None
    data = {"shards": shards, "num_images": manifest.get("num_items") or manifest.get("num_images"),
            "source": {k: v for k, v in source.items() if k != "class_names"} if isinstance(source, dict) else {}}
    return {"data": data, "class_names": names}


def _jsonable(value: Any) -> Any:
    """Plain JSON values (tuples to lists, paths and unknown objects to strings)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
