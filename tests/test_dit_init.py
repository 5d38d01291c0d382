"""DiT's position-table orientation, the checkpoint / pipeline formats that record it, and ``init_from``: starting a
run's trunk from a checkpoint in facebookresearch/DiT's key layout."""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_config

from purrception import PurrceptionPipeline
from purrception.checkpoint import CHECKPOINT_VERSION, load_checkpoint
from purrception.errors import PurrError
from purrception.flows.base import get_method
from purrception.generation.generate import generate_codes
from purrception.models.dit import DiT, DiTConfig, sincos_pos_embed_2d
from purrception.models.dit_import import import_dit_trunk, plan_dit_import, read_dit_weights
from purrception.sampling.settings import SamplerSettings
from purrception.tokenizers.base import nearest_code
from purrception.training.config import TrainConfig
from purrception.training.loop import build_model_for, train

DATA = Path(__file__).parent / "data"
LEGACY_CKPT = DATA / "legacy_dit_v1.pt"
LEGACY_PIPELINE = DATA / "legacy_dit_v1_pipeline"


# ---- DiT's table, written out as MAE / DiT write it (numpy, meshgrid(grid_w, grid_h)) ------------------------------


def mae_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(dim // 2, dtype=np.float64)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def mae_2d(dim: int, grid_size: int) -> np.ndarray:
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    return np.concatenate([mae_1d(dim // 2, grid[0]), mae_1d(dim // 2, grid[1])], axis=1)


def dit_table(dim: int, grid: int) -> torch.Tensor:
    return torch.from_numpy(mae_2d(dim, grid)).float()  # DiT: .float() of the numpy table


@pytest.mark.parametrize("dim,grid", [(8, 3), (32, 7), (128, 4), (1152, 16)])
def test_the_position_table_is_dits_for_the_same_width_and_grid(dim, grid):
    assert torch.equal(sincos_pos_embed_2d(dim, grid), dit_table(dim, grid))
    assert torch.equal(sincos_pos_embed_2d(dim, grid, "dit"), dit_table(dim, grid))


def test_a_new_dit_uses_dits_table_and_the_legacy_one_is_its_transpose():
    model = DiT(DiTConfig(input_size=7, hidden_size=32, depth=1, num_heads=2))
    assert model.config.pos_embed_layout == "dit"
    assert torch.equal(model.pos_embed[0], dit_table(32, 7))
    legacy = sincos_pos_embed_2d(32, 7, "row-major")
    assert torch.equal(legacy.reshape(7, 7, 32).transpose(0, 1).reshape(49, 32), dit_table(32, 7))
    assert not torch.equal(legacy, dit_table(32, 7))
    # token 5 of a 3x3 grid is row 1, column 2; with dim 8 the first channel is sin(first coordinate * 1)
    assert sincos_pos_embed_2d(8, 3, "dit")[5, 0] == torch.tensor(np.sin(2.0), dtype=torch.float32)
    assert sincos_pos_embed_2d(8, 3, "row-major")[5, 0] == torch.tensor(np.sin(1.0), dtype=torch.float32)


def test_dit_config_without_a_layout_is_legacy_and_a_new_one_is_dits():
    assert DiTConfig().pos_embed_layout == "dit"
    assert DiTConfig.from_dict({"hidden_size": 32}).pos_embed_layout == "row-major"
    assert DiTConfig.from_dict(DiTConfig(hidden_size=32).to_dict()) == DiTConfig(hidden_size=32)
    with pytest.raises(ValueError, match="pos_embed_layout 'xy' is not one of dit, row-major"):
        DiTConfig(pos_embed_layout="xy")


# ---- what was trained before the change samples as it did -----------------------------------------------------


def _legacy_record() -> dict:
    return json.loads((DATA / "legacy_dit_v1_codes.json").read_text())


def _codes(method, model, codebook, record) -> torch.Tensor:
    # the record was written by the code before the change, whose SamplerSettings called sample_steps "steps"
    knobs = {("sample_steps" if k == "steps" else k): v for k, v in record["sampler"].items()}
    return generate_codes(method, model, np.array(record["labels"]), SamplerSettings(**knobs),
                          record["seed"], lambda z: nearest_code(z, codebook), batch_size=len(record["labels"]))


def test_a_version_1_checkpoint_samples_exactly_the_codes_it_sampled_before():
    on_disk = torch.load(LEGACY_CKPT, map_location="cpu", weights_only=True)
    assert on_disk["version"] == 1 and "pos_embed_layout" not in on_disk["model_config"]
    record = _legacy_record()
    ckpt = load_checkpoint(LEGACY_CKPT)
    assert ckpt.model_config.pos_embed_layout == "row-major"
    method, model = ckpt.build_method(), ckpt.build_model(ema=True)
    assert torch.equal(_codes(method, model, ckpt.codebook, record), torch.tensor(record["codes"]))
    # the same weights under DiT's table sample other codes: the layout is what this test is about
    dit = DiT(DiTConfig(**{**ckpt.model_config.to_dict(), "pos_embed_layout": "dit"}))
    dit.load_state_dict(ckpt.state.ema)
    assert (_codes(method, dit.eval(), ckpt.codebook, record) != torch.tensor(record["codes"])).sum() > 50


def test_a_version_1_pipeline_folder_samples_exactly_the_codes_it_sampled_before():
    assert json.loads((LEGACY_PIPELINE / "config.json").read_text())["version"] == 1
    record = _legacy_record()
    pipe = PurrceptionPipeline.from_pretrained(LEGACY_PIPELINE)
    assert pipe.model.config.pos_embed_layout == "row-major"
    s = record["sampler"]
    out = pipe(class_labels=record["labels"], num_inference_steps=s["steps"], tau=s["tau"],
               guidance_scale=s["cfg_scale"], solver=s["solver"], seed=record["seed"])
    assert torch.equal(out.codes, torch.tensor(record["codes"]))


def test_checkpoint_versions_map_to_their_layout_explicitly(tmp_path):
    entries = torch.load(LEGACY_CKPT, map_location="cpu", weights_only=True)
    entries["model_config"] = {**entries["model_config"], "pos_embed_layout": "dit"}
    torch.save(entries, tmp_path / "v1.pt")  # version 1 means the legacy table, whatever the dict says
    assert load_checkpoint(tmp_path / "v1.pt").model_config.pos_embed_layout == "row-major"
    torch.save({**entries, "version": 2}, tmp_path / "v2.pt")
    assert load_checkpoint(tmp_path / "v2.pt").model_config.pos_embed_layout == "dit"
    del entries["model_config"]["pos_embed_layout"]
    torch.save({**entries, "version": 2}, tmp_path / "v2-bare.pt")
    with pytest.raises(PurrError, match=r"v2-bare.pt is not a complete checkpoint of this library \(its "
                                        r"model_config lacks pos_embed_layout\); use another checkpoint$"):
        load_checkpoint(tmp_path / "v2-bare.pt")
    torch.save({**entries, "version": 3}, tmp_path / "v3.pt")
    with pytest.raises(PurrError, match=r"v3.pt is checkpoint format version 3 \(this purrception reads 1 to 2\): "
                                        r"written by a newer purrception; upgrade purrception to read it$"):
        load_checkpoint(tmp_path / "v3.pt")


def test_a_fresh_checkpoint_and_its_pipeline_folder_round_trip_with_dits_layout(tiny_checkpoint, tmp_path):
    on_disk = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert on_disk["version"] == CHECKPOINT_VERSION == 2 and on_disk["model_config"]["pos_embed_layout"] == "dit"
    ckpt = load_checkpoint(tiny_checkpoint)
    model = ckpt.build_model()
    assert model.config.pos_embed_layout == "dit" and torch.equal(model.pos_embed[0], dit_table(32, 7))
    record = {"labels": [1, 4, 9], "seed": 3, "sampler": {"steps": 3}}
    expected = _codes(ckpt.build_method(), model, ckpt.codebook, record)

    folder = PurrceptionPipeline.from_pretrained(tiny_checkpoint).save_pretrained(tmp_path / "pipe")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["version"] == 2 and saved["model"]["pos_embed_layout"] == "dit"
    pipe = PurrceptionPipeline.from_pretrained(folder)
    assert pipe.model.config.pos_embed_layout == "dit"
    assert torch.equal(pipe(class_labels=[1, 4, 9], num_inference_steps=3, seed=3).codes, expected)

    def reload_with(**changes):
        shutil.rmtree(tmp_path / "edited", ignore_errors=True)
        shutil.copytree(folder, tmp_path / "edited")
        config = {**saved, **changes}
        (tmp_path / "edited" / "config.json").write_text(json.dumps(config))
        return PurrceptionPipeline.from_pretrained(tmp_path / "edited")

    assert reload_with(version=1).model.config.pos_embed_layout == "row-major"  # version 1: legacy, explicitly
    bare = {k: v for k, v in saved["model"].items() if k != "pos_embed_layout"}
    with pytest.raises(PurrError, match=r"edited/config.json is incomplete \('model.pos_embed_layout'\); "
                                        r"save the pipeline again$"):
        reload_with(model=bare)
    with pytest.raises(PurrError, match=r"edited/config.json is pipeline format version 3 \(this purrception reads 1 "
                                        r"to 2\): written by a newer purrception; upgrade purrception to read it$"):
        reload_with(version=3)


# ---- init_from: a trunk in DiT's key layout ---------------------------------------------------------------------


def dit_state(hidden: int = 32, depth: int = 2, in_channels: int = 4, patch: int = 1, label_rows: int = 11,
              grid: int = 7, mlp_ratio: float = 4.0, seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A state dict in facebookresearch/DiT's key layout and shapes (learn_sigma: 2 * in_channels outputs)."""
    g = torch.Generator().manual_seed(seed)
    mlp = int(hidden * mlp_ratio)
    shapes = {"x_embedder.proj.weight": (hidden, in_channels, patch, patch), "x_embedder.proj.bias": (hidden,),
              "t_embedder.mlp.0.weight": (hidden, 256), "t_embedder.mlp.0.bias": (hidden,),
              "t_embedder.mlp.2.weight": (hidden, hidden), "t_embedder.mlp.2.bias": (hidden,),
              "y_embedder.embedding_table.weight": (label_rows, hidden),
              "final_layer.linear.weight": (patch * patch * 2 * in_channels, hidden),
              "final_layer.linear.bias": (patch * patch * 2 * in_channels,),
              "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
              "final_layer.adaLN_modulation.1.bias": (2 * hidden,)}
    for n in range(depth):
        shapes.update({f"blocks.{n}.attn.qkv.weight": (3 * hidden, hidden), f"blocks.{n}.attn.qkv.bias": (3 * hidden,),
                       f"blocks.{n}.attn.proj.weight": (hidden, hidden), f"blocks.{n}.attn.proj.bias": (hidden,),
                       f"blocks.{n}.mlp.fc1.weight": (mlp, hidden), f"blocks.{n}.mlp.fc1.bias": (mlp,),
                       f"blocks.{n}.mlp.fc2.weight": (hidden, mlp), f"blocks.{n}.mlp.fc2.bias": (hidden,),
                       f"blocks.{n}.adaLN_modulation.1.weight": (6 * hidden, hidden),
                       f"blocks.{n}.adaLN_modulation.1.bias": (6 * hidden,)})
    if device == "meta":
        state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    else:
        state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    state["pos_embed"] = dit_table(hidden, grid)[None]
    return state


#: where each of DiT's keys must land in ours (written out, not derived from the module under test)
def expected_landing(depth: int = 2) -> dict[str, str]:
    out = {"t_embedder.mlp.0.weight": "t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias": "t_embedder.mlp.0.bias",
           "t_embedder.mlp.2.weight": "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias": "t_embedder.mlp.2.bias",
           "final_norm.adaLN_modulation.1.weight": "final_layer.adaLN_modulation.1.weight",
           "final_norm.adaLN_modulation.1.bias": "final_layer.adaLN_modulation.1.bias",
           "patch_embed.weight": "x_embedder.proj.weight", "patch_embed.bias": "x_embedder.proj.bias",
           "y_embedder.table.weight": "y_embedder.embedding_table.weight"}
    for n in range(depth):
        for ours, theirs in [("attn.qkv", "attn.qkv"), ("attn.proj", "attn.proj"), ("mlp.0", "mlp.fc1"),
                             ("mlp.2", "mlp.fc2"), ("adaLN_modulation.1", "adaLN_modulation.1")]:
            for s in ("weight", "bias"):
                out[f"blocks.{n}.{ours}.{s}"] = f"blocks.{n}.{theirs}.{s}"
    return out


TRUNK_MODEL = {"hidden_size": 32, "depth": 2, "num_heads": 2}


def test_init_from_puts_every_trunk_weight_where_dit_had_it_and_training_runs(tiny_shards_dir, tmp_path, caplog):
    theirs = dit_state()
    # a DiT / SiT training checkpoint: raw weights under "model", EMA under "ema" (preferred), argparse args
    torch.save({"model": dit_state(seed=1), "ema": theirs, "opt": {"step": torch.tensor(3)},
                "args": argparse.Namespace(model="DiT-XL/2")}, tmp_path / "dit.pt")
    config = tiny_config(model_overrides=TRUNK_MODEL, init_from=str(tmp_path / "dit.pt"), lr=0.0, steps=1,
                         ckpt_every=1)
    with caplog.at_level(logging.INFO, logger="purrception.models.dit_import"):
        result = train(config, tiny_shards_dir, tmp_path / "run", progress=False)
    assert np.isfinite(result.last_loss)
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.state.config["init_from"] == str(tmp_path / "dit.pt")
    weights = ckpt.state.model  # lr 0: one AdamW step leaves every weight as it started
    landing = expected_landing()
    for ours, key in landing.items():
        assert torch.equal(weights[ours], theirs[key]), ours
    assert set(weights) - set(landing) == {"head.weight", "head.bias"}
    assert not weights["head.weight"].any() and not weights["head.bias"].any()  # fresh: zero-initialised
    assert re.search(r"init_from \S+dit.pt \(its 'ema' weights\): copied 29 tensors: the trunk \(2 blocks\), "
                     r"patch_embed, y_embedder; fresh: head \(the output head of this method\)$", caplog.text, re.M)


def test_init_from_starts_mismatched_input_and_label_layers_fresh(tiny_shards_dir, tmp_path, caplog):
    torch.save(dit_state(patch=2, label_rows=1001, grid=16), tmp_path / "xl-like.pt")  # a bare state dict
    config = tiny_config(model_overrides=TRUNK_MODEL, init_from=str(tmp_path / "xl-like.pt"))
    shards = SimpleNamespace(latent_shape=(7, 7), num_classes=10)
    method = get_method("purrception")(torch.randn(32, 4))
    torch.manual_seed(0)
    fresh = build_model_for(config, method, shards)
    model = build_model_for(config, method, shards)
    model.load_state_dict(fresh.state_dict())
    with caplog.at_level(logging.INFO, logger="purrception.models.dit_import"):
        plan = import_dit_trunk(model, tmp_path / "xl-like.pt")
    assert plan.fresh == {
        "patch_embed": "the checkpoint reads 4 channels in 2x2 patches, the model 4 in 1x1",
        "y_embedder": "the checkpoint has 1001 label rows, the model 11 (10 classes and the null class)",
        "head": "the output head of this method"}
    for key in ("patch_embed.weight", "y_embedder.table.weight", "head.weight"):
        assert torch.equal(model.state_dict()[key], fresh.state_dict()[key]), key
    assert torch.equal(model.state_dict()["blocks.1.mlp.0.weight"], read_dit_weights(tmp_path / "xl-like.pt")[0][
        "blocks.1.mlp.fc1.weight"])
    assert "positions are the fixed table of the model's 7x7 token grid (the checkpoint's is 16x16)" in caplog.text
    assert "fresh: patch_embed (the checkpoint reads 4 channels in 2x2 patches" in caplog.text


def _model(**overrides) -> DiT:
    return DiT(DiTConfig(**{"input_size": 7, "in_channels": 4, "out_channels": 32, "num_classes": 10,
                            **TRUNK_MODEL, **overrides}))


@pytest.mark.parametrize("change,message", [
    (lambda s: s.pop("blocks.1.mlp.fc2.weight"),
     r"`init_from` f.pt lacks 1 key\(s\) of the DiT layout \(blocks.1.mlp.fc2.weight\); pass a complete DiT or SiT "
     r"checkpoint"),
    (lambda s: s.update({"blocks.0.norm1.weight": torch.ones(32)}),
     r"`init_from` f.pt holds 1 key\(s\) outside the DiT layout \(blocks.0.norm1.weight\); pass a DiT or SiT "
     r"checkpoint"),
    (lambda s: s.update({k.replace("blocks.0.", "blocks.3."): v for k, v in list(s.items())
                         if k.startswith("blocks.0.")}),
     r"`init_from` f.pt lacks 10 key\(s\) of the DiT layout \(blocks.2.attn.qkv.weight, blocks.2.attn.qkv.bias, "
     r"blocks.2.attn.proj.weight, ...\); pass a complete DiT or SiT checkpoint"),
    (lambda s: s.update({"pos_embed": sincos_pos_embed_2d(32, 7, "row-major")[None]}),
     r"`init_from` f.pt: its pos_embed \(1x49x32\) is not DiT's fixed 2-D sin-cos table; pass a DiT or SiT checkpoint "
     r"with fixed positions"),
    (lambda s: s.update({"blocks.0.mlp.fc1.weight": torch.zeros(64, 32)}),
     r"`init_from` f.pt: blocks.0.mlp.fc1.weight is 64x32 but the model's blocks.0.mlp.0.weight is 128x32; choose the "
     r"model preset \(and mlp_ratio\) the checkpoint was trained as"),
])
def test_init_from_refuses_a_file_that_does_not_fit_in_one_line(change, message):
    state = dit_state()
    change(state)
    with pytest.raises(PurrError, match=f"^{message}$"):
        plan_dit_import(state, _model(), "f.pt")


def test_init_from_refuses_another_block_count_hidden_size_or_position_layout(tmp_path):
    with pytest.raises(PurrError, match=r"^`init_from` f.pt has 3 blocks but the model has 2; choose the model preset "
                                        r"the checkpoint was trained as$"):
        plan_dit_import(dit_state(depth=3), _model(), "f.pt")
    with pytest.raises(PurrError, match=r"^`init_from` f.pt has hidden size 64 but the model has 32; choose the model "
                                        r"preset the checkpoint was trained as$"):
        plan_dit_import(dit_state(hidden=64), _model(), "f.pt")
    with pytest.raises(PurrError, match=r"^`init_from` f.pt: the model uses the 'row-major' position table, but DiT "
                                        r"trunks read DiT's; drop pos_embed_layout from model_overrides$"):
        plan_dit_import(dit_state(), _model(pos_embed_layout="row-major"), "f.pt")
    torch.save({"step": torch.tensor(1), "model": {"w": [1, 2]}}, tmp_path / "odd.pt")
    with pytest.raises(PurrError, match=r"^`init_from` \S+odd.pt holds no state dict of tensors \(bare, or under 'ema' "
                                        r"/ 'model' / 'state_dict'\); pass a DiT or SiT checkpoint$"):
        read_dit_weights(tmp_path / "odd.pt")


def test_dit_xl2_on_vq_f8_codes_takes_everything_but_the_head():
    """DiT-XL/2's 256x256 ImageNet weights (32x32x4 latents, 1000 classes) on SD vq-f8 shards (32x32 codes,
    d = 4, K = 16384): shapes only, on the meta device."""
    theirs = dit_state(hidden=1152, depth=28, patch=2, label_rows=1001, grid=16, device="meta")
    config = TrainConfig(model="DiT-XL/2", init_from="DiT-XL-2-256x256.pt")
    method = get_method("purrception")(torch.randn(16384, 4))
    with torch.device("meta"):
        model = build_model_for(config, method, SimpleNamespace(latent_shape=(32, 32), num_classes=1000))
    plan = plan_dit_import(theirs, model, "DiT-XL-2-256x256.pt")
    assert plan.copied == expected_landing(28)
    assert plan.fresh == {"head": "the output head of this method"}
    assert sorted(plan.unused) == ["final_layer.linear.bias", "final_layer.linear.weight", "pos_embed"]


def test_resume_does_not_read_init_from_again_and_pins_it(tiny_shards_dir, tmp_path):
    torch.save(dit_state(), tmp_path / "dit.pt")
    config = tiny_config(model_overrides=TRUNK_MODEL, init_from=str(tmp_path / "dit.pt"), steps=2, ckpt_every=2)
    train(config, tiny_shards_dir, tmp_path / "run", progress=False)
    (tmp_path / "dit.pt").unlink()  # the run's own weights continue; the file is not needed any more
    more = train(tiny_config(model_overrides=TRUNK_MODEL, init_from=str(tmp_path / "dit.pt"), steps=3),
                 tiny_shards_dir, tmp_path / "run", resume=True, progress=False, explicit={"steps", "init_from"})
    assert more.step == 3 and more.start_step == 2
    with pytest.raises(PurrError, match=r"^cannot resume: init_from is \S+dit.pt\" in the checkpoint but \"other.pt\" "
                                        r"was asked; drop the override or train into a new `run_dir`$"):
        train(tiny_config(model_overrides=TRUNK_MODEL, init_from="other.pt", steps=4), tiny_shards_dir,
              tmp_path / "run", resume=True, progress=False, explicit={"steps", "init_from"})


def test_cli_init_from_records_the_absolute_path_and_names_the_flag(tiny_shards_dir, tmp_path, capsys, monkeypatch):
    from purrception.cli import main

    torch.save(dit_state(), tmp_path / "dit.pt")
    monkeypatch.chdir(tmp_path)
    base = ["train", "--shards", str(tiny_shards_dir), "--no-progress", "--device", "cpu", "--set", "steps=1",
            "--set", "batch_size=8", "--set", f"model_overrides={json.dumps(TRUNK_MODEL)}"]
    assert main([*base, "--out", str(tmp_path / "run"), "--init-from", "dit.pt"]) == 0
    ckpt = load_checkpoint(json.loads(capsys.readouterr().out.splitlines()[-1])["checkpoint"])
    assert ckpt.state.config["init_from"] == str(tmp_path / "dit.pt")
    torch.save(dit_state(depth=3), tmp_path / "deep.pt")
    assert main([*base, "--out", str(tmp_path / "run2"), "--init-from", "deep.pt"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"purr: error: --init-from {tmp_path / 'deep.pt'} has 3 blocks but the model has 2; choose the "
                    f"model preset the checkpoint was trained as")
