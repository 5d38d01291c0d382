"""The training loop: loss goes down, checkpoints carry configs, resume is exact, bad runs stop clearly."""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
import pytest
import torch
from conftest import TIMINGS, TINY_MODEL, tiny_config

from purrception.checkpoint import latest_checkpoint, load_checkpoint
from purrception.errors import PurrError
from purrception.training.config import TrainConfig
from purrception.training.loop import train


def test_short_training_lowers_the_loss(tiny_shards_dir, tmp_path):
    config = tiny_config(steps=60, batch_size=32, lr=3e-3, log_every=10, ckpt_every=60)
    train(config, tiny_shards_dir, tmp_path / "run", progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.3, losses


def test_checkpoint_carries_everything_needed_to_sample(tiny_checkpoint, tiny_tokenizer_dir):
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt.method_name == "purrception" and ckpt.step == 4
    assert ckpt.tokenizer_path == str(tiny_tokenizer_dir)
    model, method = ckpt.build_model(), ckpt.build_method()
    assert model.config.out_channels == 32 and method.codebook_size == 32
    with pytest.raises(PurrError, match="trained with method 'purrception'"):
        load_checkpoint(tiny_checkpoint, expect_method="cfm")


def test_resume_reproduces_the_uninterrupted_run(tiny_shards_dir, tmp_path):
    full = train(tiny_config(steps=6, ckpt_every=3), tiny_shards_dir, tmp_path / "full", progress=False)
    train(tiny_config(steps=3, ckpt_every=3), tiny_shards_dir, tmp_path / "split", progress=False)
    # a run stopped after step 3 resumes to the full config's step count
    train(tiny_config(steps=6, ckpt_every=3), tiny_shards_dir, tmp_path / "split", resume=True, progress=False)
    a = load_checkpoint(full.checkpoint).state
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "step_00000006.pt").state
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key
    curve_a = (tmp_path / "full" / "metrics.jsonl").read_text()
    curve_b = (tmp_path / "split" / "metrics.jsonl").read_text()
    strip = lambda text: [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}  # noqa: E731
                          for line in text.splitlines()]
    assert strip(curve_a) == strip(curve_b)


def test_existing_run_is_never_overwritten(tiny_shards_dir, tmp_path):
    train(tiny_config(steps=2, ckpt_every=2), tiny_shards_dir, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "checkpoints" / "step_00000002.pt").read_bytes()
    with pytest.raises(PurrError, match="pass `resume=True` to continue it or choose another `run_dir`"):
        train(tiny_config(steps=2), tiny_shards_dir, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoints" / "step_00000002.pt").read_bytes() == before


def test_nan_loss_stops_with_a_clear_message(tiny_shards_dir, tmp_path):
    with pytest.raises(PurrError, match="loss became (nan|inf)"):
        train(tiny_config(steps=3, lr=1e20, ckpt_every=1), tiny_shards_dir, tmp_path / "run", progress=False)


def test_adamw_is_fused_where_possible_and_matches_the_default_update(monkeypatch):
    from purrception.training.optimizer import adamw

    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(3)]

    def trained(make):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = make(params)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        return opt, params

    hyper = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01)
    fused, a = trained(lambda ps: adamw(ps, **hyper))
    _, b = trained(lambda ps: torch.optim.AdamW(ps, **hyper))
    try:
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], fused=True)
        cpu_has_fused = True
    except RuntimeError:  # older torch: fused AdamW was CUDA-only
        cpu_has_fused = False
    assert bool(fused.defaults["fused"]) == cpu_has_fused
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)

    real = torch.optim.AdamW

    def no_fused_kernel(params, fused=None, **kw):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused_kernel)
    fallback, c = trained(lambda ps: adamw(ps, **hyper))
    assert not fallback.defaults["fused"]
    for pc, pb in zip(c, b):
        torch.testing.assert_close(pc, pb)


#: the top-level keys every checkpoint written so far holds (format version 1)
ORIGINAL_KEYS = {"format", "version", "config", "model_config", "method", "tokenizer", "codebook", "num_classes",
                 "latent_shape", "step", "data_position", "model", "ema", "ema_updates", "optimizer", "rng",
                 "world_size", "train_seconds"}


def test_checkpoint_state_writes_the_original_keys_the_loss_and_the_thread_count(tiny_checkpoint):
    on_disk = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert set(on_disk) == ORIGINAL_KEYS | {"loss", "cpu_threads"} and math.isfinite(on_disk["loss"])
    assert on_disk["cpu_threads"] == int(os.environ["PURR_THREADS"])  # conftest fixes the count
    assert set(load_checkpoint(tiny_checkpoint).state.to_dict()) == ORIGINAL_KEYS | {"loss", "cpu_threads"}


def test_checkpoint_in_the_original_layout_loads_and_resumes_exactly(tiny_shards_dir, tiny_tokenizer_dir, tmp_path):
    config = tiny_config(steps=4, ckpt_every=2, keep_last=0)
    # a format-1 run trained with the legacy position table, which format 1 does not record
    legacy = tiny_config(steps=4, ckpt_every=2, keep_last=0,
                         model_overrides={**TINY_MODEL, "pos_embed_layout": "row-major"})
    full = train(legacy, tiny_shards_dir, tmp_path / "full", progress=False)
    s = load_checkpoint(tmp_path / "full" / "checkpoints" / "step_00000002.pt").state  # values only
    original = {  # materialised key by key, as the writer laid them out before the state dataclass
        "format": "purrception-checkpoint", "version": 1, "config": config.to_dict(),
        "model_config": {k: v for k, v in s.model_config.items() if k != "pos_embed_layout"},
        "method": {"name": "purrception", "options": s.method["options"]},
        "tokenizer": {"identity": s.tokenizer["identity"], "path": str(tiny_tokenizer_dir)},
        "codebook": s.codebook, "num_classes": 10, "latent_shape": [7, 7], "step": 2,
        "data_position": {"step": 2, "samples_seen": 16, "seed": 0}, "model": s.model, "ema": s.ema,
        "ema_updates": 2, "optimizer": s.optimizer, "rng": s.rng, "world_size": 1, "train_seconds": 0.5,
    }
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    torch.save(original, tmp_path / "old" / "checkpoints" / "step_00000002.pt")
    ckpt = load_checkpoint(tmp_path / "old" / "checkpoints" / "step_00000002.pt")
    assert (ckpt.step, ckpt.method_name, ckpt.num_classes, ckpt.train_seconds) == (2, "purrception", 10, 0.5)
    assert ckpt.tokenizer_path == str(tiny_tokenizer_dir) and TrainConfig.from_dict(ckpt.state.config) == config
    assert ckpt.model_config.pos_embed_layout == "row-major"
    assert ckpt.build_model(ema=False).state_dict().keys() == s.model.keys()
    assert ckpt.build_method().name == "purrception"
    train(config, tiny_shards_dir, tmp_path / "old", resume=True, progress=False)
    a = load_checkpoint(full.checkpoint).state
    b = load_checkpoint(tmp_path / "old" / "checkpoints" / "step_00000004.pt").state
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]), key


def test_incomplete_or_foreign_checkpoint_dicts_are_refused_by_name(tiny_checkpoint, tmp_path):
    from purrception.checkpoint import CheckpointState

    entries = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    del entries["ema"]
    torch.save(entries, tmp_path / "no-ema.pt")
    with pytest.raises(PurrError, match=r"no-ema.pt is not a complete checkpoint of this library \(missing ema\)"):
        load_checkpoint(tmp_path / "no-ema.pt")
    with pytest.raises(PurrError, match="is not a checkpoint of this library"):
        CheckpointState.from_dict({"model": {}}, "weights.pt")


def test_resume_takes_steps_and_cadence_from_the_caller(tiny_shards_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(steps=2, ckpt_every=2), tiny_shards_dir, run, progress=False)
    more = train(tiny_config(steps=6, ckpt_every=3, log_every=2), tiny_shards_dir, run, resume=True, progress=False)
    assert (more.step, more.start_step) == (6, 2) and math.isfinite(more.last_loss)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000003.pt", "step_00000006.pt"]
    resumed = TrainConfig.from_dict(load_checkpoint(more.checkpoint).state.config)
    assert resumed == tiny_config(steps=6, ckpt_every=3, log_every=2)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 4, 6]


def test_resume_refuses_an_asked_for_change_of_what_defines_the_run(tiny_shards_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(steps=2, ckpt_every=2), tiny_shards_dir, run, progress=False)
    with pytest.raises(PurrError, match=r"^cannot resume: lr is 0.001 in the checkpoint but 0.01 was asked; "
                                        r"drop the override or train into a new `run_dir`$"):
        train(tiny_config(steps=4, lr=1e-2), tiny_shards_dir, run, resume=True, progress=False)
    # the same config, with only steps asked for by name: the run's own lr stays, nothing is refused
    result = train(tiny_config(steps=3, lr=1e-2), tiny_shards_dir, run, resume=True, progress=False,
                   explicit={"steps"})
    assert result.step == 3 and load_checkpoint(result.checkpoint).state.config["lr"] == 1e-3


def test_resume_at_or_past_the_asked_steps_reports_the_run_as_it_is(tiny_shards_dir, tmp_path, caplog):
    run = tmp_path / "run"
    first = train(tiny_config(steps=2, ckpt_every=2), tiny_shards_dir, run, progress=False)
    with caplog.at_level(logging.INFO, logger="purrception.training.loop"):
        again = train(tiny_config(steps=1), tiny_shards_dir, run, resume=True, progress=False)
    assert (again.checkpoint, again.step, again.start_step) == (first.checkpoint, 2, 2)
    assert again.last_loss == first.last_loss and math.isfinite(again.last_loss)
    assert "already at step 2 (1 steps asked); nothing to train" in caplog.text
    entries = torch.load(first.checkpoint, map_location="cpu", weights_only=True)
    del entries["loss"]  # written before checkpoints stored the loss: the step's metrics line has it
    torch.save(entries, first.checkpoint)
    assert train(tiny_config(steps=2), tiny_shards_dir, run, resume=True, progress=False).last_loss == first.last_loss


def test_cli_resume_compares_only_what_the_command_line_asks_for(tiny_shards_dir, tmp_path, capsys):
    from purrception.cli import main

    run = tmp_path / "run"
    base = ["train", "--shards", str(tiny_shards_dir), "--out", str(run), "--no-progress", "--device", "cpu"]
    tiny = ["--set", "batch_size=8", "--set", "lr=0.001", "--set", f"model_overrides={json.dumps(TINY_MODEL)}"]
    assert main([*base, *tiny, "--set", "steps=2"]) == 0
    # the preset's batch_size, lr and model size differ from the run's but were not asked for: the run's stay
    assert main([*base, "--resume", "--set", "steps=3"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["step"] == 3
    kept = TrainConfig.from_dict(load_checkpoint(run / "checkpoints" / "step_00000003.pt").state.config)
    assert (kept.batch_size, kept.lr, kept.model_overrides, kept.steps) == (8, 1e-3, TINY_MODEL, 3)
    (tmp_path / "c.json").write_text(json.dumps({"steps": 4, "seed": 5}))
    assert main([*base, "--resume", "--config", str(tmp_path / "c.json")]) == 2
    assert "cannot resume: seed is 0 in the checkpoint but 5 was asked" in capsys.readouterr().err
    assert main([*base, "--resume", "--set", "steps=4", "--set", "lr=0.002"]) == 2
    assert "cannot resume: lr is 0.001 in the checkpoint but 0.002 was asked" in capsys.readouterr().err
    assert load_checkpoint(latest_checkpoint(run)).step == 3


def test_resume_field_sets_cover_the_config_once():
    from dataclasses import fields

    from purrception.training.config import TrainConfig, explicit_fields

    pinned, adjustable = set(TrainConfig.PINNED), set(TrainConfig.ADJUSTABLE)
    assert not pinned & adjustable and pinned | adjustable == {f.name for f in fields(TrainConfig)}
    assert explicit_fields(None, ["steps=3", "lr=1e-3"]) == {"steps", "lr"}


def test_resume_ignores_and_removes_a_checkpoint_write_cut_short(tiny_shards_dir, tmp_path, caplog):
    run = tmp_path / "run"
    first = train(tiny_config(steps=2, ckpt_every=2), tiny_shards_dir, run, progress=False)
    partial = run / "checkpoints" / ".step_00000004.pt.k9x2_a.tmp"  # atomic_write's temporary, cut by a kill -9
    partial.write_bytes(first.checkpoint.read_bytes()[:1000])
    with caplog.at_level(logging.INFO, logger="purrception"):  # the run folder's lock removes it (io)
        result = train(tiny_config(steps=4, ckpt_every=2), tiny_shards_dir, run, resume=True, progress=False)
    assert (result.start_step, result.step) == (2, 4) and not partial.exists()
    assert f"removed {partial}" in caplog.text
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002.pt", "step_00000004.pt"]


class _Foreign:
    """A class this library never pickles: a torch.save of one is a foreign file."""

    def __init__(self):
        self.payload = [1, 2, 3]


@pytest.mark.parametrize("kind", ["random bytes", "foreign objects"])
def test_unreadable_checkpoints_are_refused_in_our_words(tmp_path, capsys, recwarn, kind):
    from purrception.cli import main

    path = tmp_path / "step_00000001.pt"
    if kind == "random bytes":  # a pickle-protocol prefix: torch warns about it before failing
        path.write_bytes(b"\x80\x04" + np.random.default_rng(0).bytes(4096))
    else:
        torch.save({"model": _Foreign()}, path)
    with pytest.raises(PurrError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert message.startswith(f"cannot read checkpoint {path}: it is not a checkpoint of this library (")
    assert ("foreign objects: pickled classes this library never writes, test_training._Foreign" in message) == \
        (kind == "foreign objects")
    for leaked in ("weights_only", "Traceback", "\n", "trust", "still be loaded"):
        assert leaked not in message
    assert main(["sample", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"purr: error: {message}"
    assert [str(w.message) for w in recwarn] == []
