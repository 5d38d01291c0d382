"""Start a :class:`~purrception.models.dit.DiT`'s trunk from a facebookresearch/DiT or SiT checkpoint
(``TrainConfig.init_from``).

DiT (Peebles & Xie 2023), SiT and REPA's SiT share one state-dict layout; this module maps it, key by key, onto
ours. Everything that transforms tokens (the *trunk*) is copied and must match exactly; the layers that read the
input or the labels are copied when their shapes match and start fresh otherwise; the output layer never comes
over, since our methods predict other things (``K``-way logits for Purrception, paper eq. 14)::

    theirs                                       ours                                 when shapes differ
    t_embedder.mlp.{0,2}.{weight,bias}           t_embedder.mlp.{0,2}.*               refused
    blocks.N.attn.qkv.{weight,bias}              blocks.N.attn.qkv.*                  refused
    blocks.N.attn.proj.{weight,bias}             blocks.N.attn.proj.*                 refused
    blocks.N.mlp.fc1.{weight,bias}               blocks.N.mlp.0.*                     refused
    blocks.N.mlp.fc2.{weight,bias}               blocks.N.mlp.2.*                     refused
    blocks.N.adaLN_modulation.1.{weight,bias}    blocks.N.adaLN_modulation.1.*        refused
    final_layer.adaLN_modulation.1.{weight,bias} final_norm.adaLN_modulation.1.*      refused
    x_embedder.proj.{weight,bias}                patch_embed.*                        fresh (other d or patch)
    y_embedder.embedding_table.weight            y_embedder.table.weight              fresh (other class count)
    final_layer.linear.{weight,bias}             (not used: head starts fresh)
    pos_embed                                    (checked: the fixed table, not copied)
    projectors.*                                 (not used: REPA's alignment MLPs)

``blocks.N.norm1`` / ``norm2`` and the final norm have no weights in this layout (affine-free LayerNorms), so a
file holding any of them, or any other key not listed, is refused rather than silently dropped. So is a file whose
block count or hidden size differs from the chosen model: pick the preset the checkpoint was trained as (DiT-XL/2:
hidden 1152, 28 blocks, 16 heads). The head count shapes no weight, so it cannot be checked; our presets use DiT's.
Our own extras (``token_embed`` for token-id input, the factorised head) always start fresh.

DiT's null class is the last row of its label table, as ours, so with equal class counts the table (null row
included) comes over whole. DiT's positions are the fixed sin-cos table in DiT's orientation
(:func:`~purrception.models.dit.sincos_pos_embed_2d`); the file's ``pos_embed`` must be that table (for its own
grid), and the model must use that layout.

DiT-XL/2's public 256x256 ImageNet weights read ``32 x 32 x 4`` latents in ``2 x 2`` patches with 1000 classes: the
shape of SD vq-f8 codes (``d = 4``), so a ``DiT-XL/2`` run on vq-f8 ImageNet shards copies everything but the
head. The time inputs of DiT (the diffusion step), SiT and this library (``1000 t`` on the path of paper App. B)
differ in scale or direction, so an imported trunk is a starting point that training adapts, not a sampler.

Files are read with ``torch.load(weights_only=True)`` (:func:`~purrception.tokenizers.pretrained.read_checkpoint`):
a bare state dict (DiT's and SiT's released weights), or a training checkpoint with the weights under ``"ema"``
(preferred: what DiT, SiT and REPA sample with), ``"model"`` or ``"state_dict"``; pickled objects of other classes
in a training checkpoint (its argparse ``args``) are read as inert stand-ins and never run.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from purrception.errors import PurrError
from purrception.models.dit import DiT, sincos_pos_embed_2d
from purrception.tokenizers.pretrained import read_checkpoint

__all__ = ["WEIGHT_ENTRIES", "DiTImportPlan", "read_dit_weights", "plan_dit_import", "import_dit_trunk"]

log = logging.getLogger(__name__)

#: where a training checkpoint keeps its weights, in the order they are looked for
WEIGHT_ENTRIES = ("ema", "model", "state_dict")

#: trunk modules outside the blocks: theirs -> ours (``.weight`` / ``.bias`` follow)
_TRUNK = {"t_embedder.mlp.0": "t_embedder.mlp.0", "t_embedder.mlp.2": "t_embedder.mlp.2",
          "final_layer.adaLN_modulation.1": "final_norm.adaLN_modulation.1"}
#: inside ``blocks.N``: theirs -> ours
_BLOCK = {"attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2",
          "adaLN_modulation.1": "adaLN_modulation.1"}
#: input and label layers: theirs -> ours, copied when the shapes match
_INPUT = {"x_embedder.proj.weight": "patch_embed.weight", "x_embedder.proj.bias": "patch_embed.bias",
          "y_embedder.embedding_table.weight": "y_embedder.table.weight"}
#: keys of the layout that are read but never copied
_UNUSED = re.compile(r"^(final_layer\.linear\.(weight|bias)|pos_embed|projectors\..+)$")
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")


@dataclass
class DiTImportPlan:
    """What an import does: ``copied`` maps our key -> theirs; ``fresh`` names our modules that keep their fresh
    initialisation and why; ``unused`` lists their keys that are not copied."""

    copied: dict[str, str] = field(default_factory=dict)
    fresh: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)


def read_dit_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of a DiT / SiT file and the entry it came from (``""`` for a bare state dict)."""
    obj = read_checkpoint(path, "init_from checkpoint")
    if _is_state_dict(obj):
        return dict(obj), ""
    if isinstance(obj, Mapping):
        for entry in WEIGHT_ENTRIES:
            if _is_state_dict(obj.get(entry)):
                return dict(obj[entry]), entry
    raise PurrError(f"`init_from` {path} holds no state dict of tensors (bare, or under "
                    f"{' / '.join(repr(e) for e in WEIGHT_ENTRIES)}); pass a DiT or SiT checkpoint")


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def plan_dit_import(theirs: Mapping[str, torch.Tensor], model: DiT, source: str | Path = "init_from") -> DiTImportPlan:
    """Check ``theirs`` (DiT key layout) against ``model`` and say what to copy; see the module docstring.

    Only shapes are read, except ``pos_embed``'s values, so ``model`` and ``theirs`` may live on the meta device.

    Raises:
        PurrError: one line naming the problem: an unknown key, a missing trunk key, another block count or hidden
            size, a trunk shape that differs, a ``pos_embed`` that is not DiT's table, or a model with another
            position layout.
    """
    config = model.config
    ours = model.state_dict()
    where = f"`init_from` {source}"
    if config.pos_embed_layout != "dit":
        raise PurrError(f"{where}: the model uses the {config.pos_embed_layout!r} position table, but DiT trunks read "
                        f"DiT's; drop pos_embed_layout from model_overrides")
    unknown = sorted(k for k in theirs if not (k in _INPUT or _UNUSED.match(k) or _trunk_key(k) is not None))
    if unknown:
        raise PurrError(f"{where} holds {len(unknown)} key(s) outside the DiT layout ({', '.join(unknown[:3])}"
                        f"{', ...' if len(unknown) > 3 else ''}); pass a DiT or SiT checkpoint")
    depth = 1 + max((int(m.group(1)) for k in theirs if (m := _BLOCK_KEY.match(k))), default=-1)
    wanted = [f"{a}.{s}" for a in _TRUNK for s in ("weight", "bias")]
    wanted += [f"blocks.{n}.{a}.{s}" for n in range(depth) for a in _BLOCK for s in ("weight", "bias")]
    missing = ([] if depth else ["blocks.0.*"]) + [k for k in wanted + list(_INPUT) if k not in theirs]
    if missing:
        raise PurrError(f"{where} lacks {len(missing)} key(s) of the DiT layout ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''}); pass a complete DiT or SiT checkpoint")
    hidden = theirs["t_embedder.mlp.2.weight"].shape[0]
    if hidden != config.hidden_size:
        raise PurrError(f"{where} has hidden size {hidden} but the model has {config.hidden_size}; choose the model "
                        f"preset the checkpoint was trained as")
    if depth != config.depth:
        raise PurrError(f"{where} has {depth} blocks but the model has {config.depth}; choose the model preset the "
                        f"checkpoint was trained as")
    plan = DiTImportPlan()
    for key in wanted:
        mine = _trunk_key(key)
        if theirs[key].shape != ours[mine].shape:
            raise PurrError(f"{where}: {key} is {_shape(theirs[key])} but the model's {mine} is "
                            f"{_shape(ours[mine])}; choose the model preset (and mlp_ratio) the checkpoint was "
                            f"trained as")
        plan.copied[mine] = key
    _plan_inputs(theirs, ours, plan)
    _check_positions(theirs, model, where)
    plan.unused += sorted(k for k in theirs if _UNUSED.match(k))
    for key in ours:
        if key not in plan.copied:
            module = key.split(".")[0]
            plan.fresh.setdefault(module, "the output head of this method" if module == "head" else
                                  "not in the DiT layout")
    return plan


def _trunk_key(key: str) -> str | None:
    """Our name for one of their trunk keys, or None when ``key`` is not a trunk key."""
    m = _BLOCK_KEY.match(key)
    if m and m.group(2) in _BLOCK:
        return f"blocks.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"
    stem, _, suffix = key.rpartition(".")
    if stem in _TRUNK and suffix in ("weight", "bias"):
        return f"{_TRUNK[stem]}.{suffix}"
    return None


def _plan_inputs(theirs: Mapping[str, torch.Tensor], ours: Mapping[str, torch.Tensor], plan: DiTImportPlan) -> None:
    """Copy the patch and label embeddings whose shapes match; say why the others start fresh."""
    pw, lw = theirs["x_embedder.proj.weight"], theirs["y_embedder.embedding_table.weight"]
    mine = ours["patch_embed.weight"]
    if pw.shape == mine.shape and theirs["x_embedder.proj.bias"].shape == ours["patch_embed.bias"].shape:
        plan.copied.update({"patch_embed.weight": "x_embedder.proj.weight", "patch_embed.bias": "x_embedder.proj.bias"})
    else:
        plan.fresh["patch_embed"] = (
            f"the checkpoint reads {pw.shape[1]} channels in {pw.shape[2]}x{pw.shape[3]} patches, the model "
            f"{mine.shape[1]} in {mine.shape[2]}x{mine.shape[3]}" if pw.dim() == 4
            else f"the checkpoint's patch embedding is {_shape(pw)}, the model's {_shape(mine)}")
        plan.unused += ["x_embedder.proj.weight", "x_embedder.proj.bias"]
    table = ours["y_embedder.table.weight"]
    if lw.shape == table.shape:
        plan.copied["y_embedder.table.weight"] = "y_embedder.embedding_table.weight"
    else:
        plan.fresh["y_embedder"] = (f"the checkpoint has {lw.shape[0]} label rows, the model {table.shape[0]} "
                                    f"({table.shape[0] - 1} classes and the null class)")
        plan.unused.append("y_embedder.embedding_table.weight")


def _check_positions(theirs: Mapping[str, torch.Tensor], model: DiT, where: str) -> None:
    """A ``pos_embed`` in the file must be DiT's fixed table for its own grid (it is never copied: ours is fixed).
    On the meta device only its shape is checked."""
    pos = theirs.get("pos_embed")
    if pos is None:
        return
    tokens, width = pos.shape[-2], pos.shape[-1]
    grid = math.isqrt(tokens)
    fits = grid * grid == tokens and width == model.config.hidden_size and pos.numel() == tokens * width
    if fits and not pos.is_meta:
        fits = torch.allclose(pos.reshape(tokens, width).float(), sincos_pos_embed_2d(width, grid, "dit"),
                              rtol=0.0, atol=1e-5)
    if not fits:
        raise PurrError(f"{where}: its pos_embed ({_shape(pos)}) is not DiT's fixed 2-D sin-cos table; pass a DiT or "
                        f"SiT checkpoint with fixed positions")
    if grid != model.grid:
        log.info("%s: positions are the fixed table of the model's %dx%d token grid (the checkpoint's is %dx%d)",
                 where, model.grid, model.grid, grid, grid)


def import_dit_trunk(model: DiT, path: str | Path) -> DiTImportPlan:
    """Copy a DiT / SiT checkpoint's trunk into ``model`` in place (see the module docstring); log what stays fresh.

    Raises:
        PurrError: an unreadable file or one that does not fit ``model`` (:func:`plan_dit_import`).
    """
    theirs, entry = read_dit_weights(path)
    plan = plan_dit_import(theirs, model, path)
    ours = model.state_dict()
    with torch.no_grad():
        for mine, key in plan.copied.items():
            ours[mine].copy_(theirs[key])
    log.info("init_from %s%s: copied %d tensors: the trunk (%d blocks)%s; fresh: %s", path,
             f" (its {entry!r} weights)" if entry else "", len(plan.copied), model.config.depth,
             "".join(f", {m}" for m in ("patch_embed", "y_embedder") if m not in plan.fresh),
             "; ".join(f"{m} ({why})" for m, why in plan.fresh.items()))
    return plan
