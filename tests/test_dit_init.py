"""DiT's position-table orientation and the checkpoint / pipeline formats that record it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from purrception import PurrceptionPipeline
from purrception.errors import PurrError
from purrception.generation.generate import generate_codes
from purrception.models.dit import DiT, DiTConfig, sincos_pos_embed_2d
from purrception.sampling.settings import SamplerSettings
from purrception.tokenizers.base import nearest_code
from purrception.training.checkpoint import CHECKPOINT_VERSION, load_checkpoint

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
    return generate_codes(method, model, np.array(record["labels"]), SamplerSettings(**record["sampler"]),
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
    with pytest.raises(PurrError, match=r"v3.pt has checkpoint format version 3, which this library does not read "
                                        r"\(it reads 1 to 2\); upgrade purrception or use another checkpoint$"):
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
    with pytest.raises(PurrError, match=r"edited/config.json has pipeline version 3, which this library does not "
                                        r"read \(it reads 1 to 2\); upgrade purrception or save the pipeline again$"):
        reload_with(version=3)
