"""Loaders for the paper's two pretrained tokenizers from local files, and safe reading of foreign checkpoints.

* ``sd-vq-f8``: the latent-diffusion ``vq-f8.ckpt`` (a PyTorch Lightning checkpoint; weights under
  ``["state_dict"]`` next to training-only ``loss.*`` modules, which are dropped).
* ``llamagen-vq-ds8-c2i``: LlamaGen's ``vq_ds8_c2i.pt`` (a dict with the weights under ``["model"]``, in
  LlamaGen's own key names, renamed here into the LDM layout of :mod:`purrception.tokenizers.ldm_vq`).

After dropping training-only entries the state dict must match the architecture key for key and shape for shape
(``strict=True``); anything else is a :class:`~purrception.errors.PurrError` naming what is wrong.

Reading never executes code from the file. :func:`read_checkpoint` uses ``torch.load(weights_only=True)``, i.e.
torch's restricted unpickler, which builds only tensors, storages and plain containers. Old Lightning files also
pickle Lightning / OmegaConf / argparse objects; for those the globals the pickle names are listed *without
loading them* (``torch.serialization.get_unsafe_globals_in_checkpoint``) and each is replaced by an inert
stand-in class of ours that records its arguments and runs nothing, so the real class is never imported or
called. Globals from ``os``/``sys``/``posix``/``nt`` stay refused by torch.

Every kind is one :class:`~purrception.tokenizers.registry.TokenizerKind` of the tokenizer registry, defined here
(:data:`SD_VQ_F8`, :data:`LLAMAGEN_VQ_DS8_C2I`) and registered at the bottom of this module: its
:class:`~purrception.tokenizers.registry.CheckpointFile` gives the architecture, the file name and a
:class:`VQGANLayout` (where the weights sit in the file, key renames, how to recognise the layout). The loader,
``load_tokenizer(path, kind=...)``, the ``--tokenizer-kind`` choices of every command and the error hints all read
the registry, so a new VQGAN file kind is one entry (plus a key-renaming function if its file is not in the LDM
layout).
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from purrception.errors import PurrError
from purrception.io import why_unreadable
from purrception.tokenizers.ldm_vq import VQGANConfig, VQGANTokenizer
from purrception.tokenizers.registry import CheckpointFile, TokenizerKind, pretrained_kinds, register_kind

__all__ = [
    "VQGANLayout",
    "SD_VQ_F8",
    "LLAMAGEN_VQ_DS8_C2I",
    "VQGAN_PRESETS",
    "get_pretrained_kind",
    "load_sd_vq_f8",
    "load_llamagen_vq_ds8_c2i",
    "load_pretrained_vqgan",
    "read_checkpoint",
    "llamagen_to_ldm_keys",
    "ldm_to_llamagen_keys",
    "InertForeignObject",
    "MODEL_PREFIXES",
]

log = logging.getLogger(__name__)

#: state-dict prefixes of the tokenizer itself; everything else (``loss.*``, EMA copies...) is training-only
MODEL_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")

# ---- safe reading --------------------------------------------------------------------------------------------
class InertForeignObject:
    """Stand-in for an object of a foreign class met in a checkpoint: records its pickle data, runs nothing.

    Attributes:
        foreign_name: ``module.name`` of the global the pickle referred to (class attribute).
        args: constructor / reduce arguments as pickled.
        state: ``__setstate__`` payload as pickled, if any.
        items: items set through ``obj[key] = value`` by the pickle, if any.
    """

    foreign_name = "?"
    dump_patches = False

    def __new__(cls, *args: Any, **kwargs: Any) -> "InertForeignObject":
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, kwargs=kwargs, state=None, items={})
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["items"][key] = value

    def __repr__(self) -> str:
        return f"<inert stand-in for {self.foreign_name}>"


_INERT_CLASSES: dict[str, type] = {}


def _inert_class(full_name: str) -> type:
    if full_name not in _INERT_CLASSES:
        short = re.sub(r"\W", "_", full_name.rsplit(".", 1)[-1]) or "Foreign"
        _INERT_CLASSES[full_name] = type(f"Inert_{short}", (InertForeignObject,), {"foreign_name": full_name})
    return _INERT_CLASSES[full_name]


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> Any:
    """Read a ``torch.save`` file without executing any code from it.

    Args:
        path: the file.
        what: how to name the file in error messages.

    Returns:
        The unpickled object: tensors, plain containers, and :class:`InertForeignObject` stand-ins where the file
        pickled objects of other classes.

    Raises:
        PurrError: missing, truncated or non-torch file, or a pickle that names a refused global.
    """
    path = Path(path)
    if not path.is_file():
        raise PurrError(f"{what} not found: {path}")
    is_zip = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():  # the error below says what matters; torch's advice is never passed on
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as err:
        refusal = err
    except Exception as err:  # truncated zip, not a pickle at all, ...
        raise PurrError(f"cannot read {what} {path}: {why_unreadable(err)} "
                        f"(truncated download or not a PyTorch checkpoint?)") from None
    if not is_zip:
        raise PurrError(f"cannot read {what} {path} safely: {why_unreadable(refusal)} "
                        f"(not a PyTorch zip checkpoint, or a legacy file with foreign objects)")
    try:
        foreign = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as err:
        raise PurrError(f"cannot read {what} {path}: {why_unreadable(err)}") from None
    log.info("%s: %d foreign object type(s) in the pickle are read as inert stand-ins: %s",
             path.name, len(foreign), ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else ""))
    stand_ins = [(_inert_class(name), name) for name in foreign]
    try:
        with torch.serialization.safe_globals(stand_ins), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise PurrError(f"refusing to read {what} {path}: {why_unreadable(err)}") from None


# ---- key layouts ---------------------------------------------------------------------------------------------
_MID_TO_LDM = {"0": "block_1", "1": "attn_1", "2": "block_2"}
_MID_TO_LLAMAGEN = {v: k for k, v in _MID_TO_LDM.items()}


def llamagen_to_ldm_keys(state: Mapping[str, Any], num_levels: int = 4) -> dict[str, Any]:
    """Rename LlamaGen VQ keys into the LDM layout (values untouched).

    ``encoder.conv_blocks.i.res.j`` -> ``encoder.down.i.block.j``; ``mid.0/1/2`` -> ``mid.block_1/attn_1/block_2``;
    ``decoder.conv_blocks.i.*`` -> ``decoder.up.(L-1-i).*`` (LlamaGen lists decoder stages in run order, LDM by
    resolution), ``res`` -> ``block``. Other keys pass through.
    """
    out: dict[str, Any] = {}
    for key, value in state.items():
        new = key
        m = re.match(r"^(encoder|decoder)\.conv_blocks\.(\d+)\.(.*)$", key)
        if m:
            part, i, rest = m.groups()
            level = int(i) if part == "encoder" else num_levels - 1 - int(i)
            rest = re.sub(r"^res\.", "block.", rest)
            new = f"{part}.{'down' if part == 'encoder' else 'up'}.{level}.{rest}"
        m = re.match(r"^(encoder|decoder)\.mid\.([012])\.(.*)$", key)
        if m:
            new = f"{m.group(1)}.mid.{_MID_TO_LDM[m.group(2)]}.{m.group(3)}"
        out[new] = value
    return out


def ldm_to_llamagen_keys(state: Mapping[str, Any], num_levels: int = 4) -> dict[str, Any]:
    """Inverse of :func:`llamagen_to_ldm_keys` (used to write LlamaGen-layout files, e.g. in tests)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        new = key
        m = re.match(r"^(encoder|decoder)\.(down|up)\.(\d+)\.(.*)$", key)
        if m:
            part, _, i, rest = m.groups()
            index = int(i) if part == "encoder" else num_levels - 1 - int(i)
            rest = re.sub(r"^block\.", "res.", rest)
            new = f"{part}.conv_blocks.{index}.{rest}"
        m = re.match(r"^(encoder|decoder)\.mid\.(block_1|attn_1|block_2)\.(.*)$", key)
        if m:
            new = f"{m.group(1)}.mid.{_MID_TO_LLAMAGEN[m.group(2)]}.{m.group(3)}"
        out[new] = value
    return out


# ---- file layouts --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VQGANLayout:
    """How a VQGAN checkpoint file of one kind lays out its weights (the ``layout`` of its
    :class:`~purrception.tokenizers.registry.CheckpointFile`).

    Attributes:
        family: how hints name a file laid out like this one, e.g. ``"an LDM / SD VQ file"``.
        container_keys: where the file keeps its weights, in order of preference (else the file is the weights).
        looks_like: does a file's key list look like this kind's layout? (for "use `tokenizer_kind=X`" hints)
        to_ldm_keys: renames the file's keys into the LDM layout of :mod:`~purrception.tokenizers.ldm_vq`, called
            as ``to_ldm_keys(state, num_levels)``; ``None`` when the file already uses it.
    """

    family: str
    container_keys: tuple[str, ...]
    looks_like: Callable[[Iterable[str]], bool]
    to_ldm_keys: Callable[[Mapping[str, Any], int], dict[str, Any]] | None = None

    def rename(self, state: Mapping[str, Any], config: VQGANConfig) -> dict[str, Any]:
        """The file's state dict in the LDM key layout (values untouched)."""
        return self.to_ldm_keys(state, len(config.ch_mult)) if self.to_ldm_keys else dict(state)


def _has_ldm_levels(keys: Iterable[str]) -> bool:
    return any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys)


def _has_llamagen_blocks(keys: Iterable[str]) -> bool:
    return any(".conv_blocks." in k for k in keys)


def get_pretrained_kind(name: str) -> TokenizerKind:
    """The registry entry of the pretrained kind ``name``; an unknown name is a :class:`PurrError` listing them."""
    kinds = pretrained_kinds()
    if name not in kinds:
        raise PurrError(f"unknown pretrained tokenizer kind {name!r}; known: {', '.join(kinds)}")
    return kinds[name]


def _vqgan_kind(name: str) -> tuple[TokenizerKind, VQGANLayout]:
    kind = get_pretrained_kind(name)
    if not isinstance(kind.file.layout, VQGANLayout):
        raise PurrError(f"tokenizer kind {name} is not a VQGAN checkpoint; load it with load_tokenizer")
    return kind, kind.file.layout


# ---- loading -------------------------------------------------------------------------------------------------
def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _find_state_dict(obj: Any, path: Path, kind: TokenizerKind, layout: VQGANLayout) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in layout.container_keys:
            if key in obj and _is_tensor_dict(obj[key]):
                return dict(obj[key])
        if _is_tensor_dict(obj):
            return dict(obj)
        entries = ", ".join(repr(k) for k in list(obj)[:8])
        raise PurrError(f"{path} holds no {kind.name} weights (entries: {entries}); "
                        f"expected {kind.file.file_hint} with weights under {layout.container_keys[0]!r}")
    raise PurrError(f"{path} is not a {kind.name} checkpoint (it holds a {type(obj).__name__}); "
                    f"expected {kind.file.file_hint}")


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` (DDP) or ``first_stage_model.`` (a whole LDM) prefix in front of the tokenizer keys."""
    for prefix in ("module.", "first_stage_model."):
        if not any(k.startswith(MODEL_PREFIXES) for k in state) and any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _kind_hint(raw_keys: Iterable[str], kind: TokenizerKind) -> str:
    """``"; it looks like a ... file: use `tokenizer_kind=OTHER`"`` when another kind recognises the keys."""
    keys = list(raw_keys)
    for other in pretrained_kinds().values():
        layout = other.file.layout
        if other.name != kind.name and isinstance(layout, VQGANLayout) and layout.looks_like(keys):
            return f"; it looks like {layout.family}: use `tokenizer_kind={other.name}`"
    return ""


_EXPECTED_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {}


def _expected_shapes(kind: TokenizerKind) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the ``kind`` architecture (computed once per process)."""
    if kind.name not in _EXPECTED_SHAPES:
        model = VQGANTokenizer(kind.file.config, kind.name)
        _EXPECTED_SHAPES[kind.name] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _EXPECTED_SHAPES[kind.name]


def _check_keys_and_shapes(state: dict[str, torch.Tensor], path: Path, kind: TokenizerKind,
                           raw_keys: Iterable[str]) -> None:
    """Every key of the architecture present with its shape, and nothing else; else a PurrError saying what."""
    expected = _expected_shapes(kind)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {shape}" for k, shape in expected.items()
             if k in state and tuple(state[k].shape) != shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} wrong shape(s) (e.g. {wrong[0]} expected)")
        raise PurrError(f"{path} does not match the {kind.name} architecture: {'; '.join(parts)}"
                        f"{_kind_hint(raw_keys, kind)}")


def load_pretrained_vqgan(path: str | Path, kind: str) -> VQGANTokenizer:
    """Build the ``kind`` architecture and load a local checkpoint into it with strict key and shape checks.

    Args:
        path: the checkpoint file (``vq-f8.ckpt``, ``vq_ds8_c2i.pt``: see :data:`SD_VQ_F8`,
            :data:`LLAMAGEN_VQ_DS8_C2I`).
        kind: the name of a pretrained VQGAN kind of the registry.

    Returns:
        The tokenizer in eval mode with gradients disabled.
    """
    entry, layout = _vqgan_kind(kind)
    path = Path(path)
    if path.is_dir():
        raise PurrError(f"{path} is a folder; `tokenizer_kind={kind}` expects the checkpoint file "
                        f"{entry.file.file_hint}")
    obj = read_checkpoint(path, f"{kind} checkpoint")
    raw = _strip_prefix(_find_state_dict(obj, path, entry, layout))
    state = layout.rename(raw, entry.file.config)
    dropped = sorted({k.split(".")[0] for k in state if not k.startswith(MODEL_PREFIXES)})
    state = {k: v for k, v in state.items() if k.startswith(MODEL_PREFIXES)}
    if dropped:
        log.info("%s: dropped training-only entries under %s", path.name, ", ".join(p + ".*" for p in dropped))
    _check_keys_and_shapes(state, path, entry, raw)  # before building: a wrong file fails fast
    model = VQGANTokenizer(entry.file.config, kind)
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False)
    log.info("loaded %s tokenizer from %s (K=%d, d=%d)", kind, path, model.codebook_size, model.latent_dim)
    return model


def load_sd_vq_f8(path: str | Path) -> VQGANTokenizer:
    """Latent-diffusion / SD ``vq-f8.ckpt`` -> tokenizer (K=16384, d=4, 256x256 -> 32x32 codes)."""
    return load_pretrained_vqgan(path, "sd-vq-f8")


def load_llamagen_vq_ds8_c2i(path: str | Path) -> VQGANTokenizer:
    """LlamaGen ``vq_ds8_c2i.pt`` -> tokenizer (K=16384, d=8 unit-norm rows, 256x256 -> 32x32 codes)."""
    return load_pretrained_vqgan(path, "llamagen-vq-ds8-c2i")


# ---- the registry entries ----------------------------------------------------------------------------------------
#: latent-diffusion's ``vq-f8`` (paper Sec. 4 / App. E)
SD_VQ_F8 = TokenizerKind(
    name="sd-vq-f8", model_class=VQGANTokenizer, config_class=VQGANConfig,
    summary="latent-diffusion / SD vq-f8 checkpoint (K=16384, d=4)",
    file=CheckpointFile(file_name="vq-f8.ckpt", origin="from the latent-diffusion vq-f8 model.zip",
                        config=VQGANConfig(z_channels=4, embed_dim=4, n_embed=16384), read=load_pretrained_vqgan,
                        layout=VQGANLayout(family="an LDM / SD VQ file", container_keys=("state_dict", "model"),
                                           looks_like=_has_ldm_levels)))
#: LlamaGen's ``vq-ds8-c2i`` (paper Sec. 4 / App. E)
LLAMAGEN_VQ_DS8_C2I = TokenizerKind(
    name="llamagen-vq-ds8-c2i", model_class=VQGANTokenizer, config_class=VQGANConfig,
    summary="LlamaGen vq_ds8_c2i checkpoint (K=16384, d=8, unit-norm rows)",
    file=CheckpointFile(file_name="vq_ds8_c2i.pt", origin="",
                        config=VQGANConfig(z_channels=256, embed_dim=8, n_embed=16384, l2_normalize=True,
                                           usage_buffer=65536),
                        read=load_pretrained_vqgan,
                        layout=VQGANLayout(family="a LlamaGen VQ file", container_keys=("model", "state_dict", "ema"),
                                           looks_like=_has_llamagen_blocks, to_ldm_keys=llamagen_to_ldm_keys)))

register_kind(SD_VQ_F8, builtin=True)
register_kind(LLAMAGEN_VQ_DS8_C2I, builtin=True)

#: the architectures of the paper's two pretrained kinds
VQGAN_PRESETS: dict[str, VQGANConfig] = {kind.name: kind.file.config for kind in (SD_VQ_F8, LLAMAGEN_VQ_DS8_C2I)}
