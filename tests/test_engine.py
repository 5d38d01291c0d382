"""The training engine at scale, tested for real on CPU: 2 gloo processes equal 1, a SIGKILLed `purr train` resumes
to the uninterrupted run bit for bit, checkpoint retention, divergence guards, presets, logs and sample grids."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import TIMINGS, TINY_MODEL, tiny_config

from purrception.checkpoint import latest_checkpoint, load_checkpoint
from purrception.data.shards import TokenShards
from purrception.errors import PurrError
from purrception.training.config import TRAIN_PRESETS, TrainConfig, resolve_config
from purrception.training.loop import build_model_for, slots_of_rank, train


def _curve(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in lines]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, config: TrainConfig, shards: str, run_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from purrception.distributed import cleanup_distributed

    try:
        train(config, shards, run_dir, progress=False, device="cpu")
    finally:
        cleanup_distributed()


def test_slots_split_the_global_batch_over_ranks():
    config = tiny_config(batch_size=8, micro_batch_size=2)
    assert slots_of_rank(config, 1, 0) == (2, 4, range(0, 4))
    assert [slots_of_rank(config, 2, r)[2] for r in range(2)] == [range(0, 2), range(2, 4)]
    assert slots_of_rank(tiny_config(batch_size=8), 2, 1) == (4, 2, range(1, 2))  # micro 0 = batch / world
    with pytest.raises(PurrError, match="multiple of 3"):
        slots_of_rank(config, 3, 0)


def test_two_gloo_processes_match_one_process(tiny_shards_dir, tmp_path):
    # 4 micro-batch slots per step: one process accumulates all 4, two processes take 2 each (no_sync on the first)
    config = tiny_config(steps=3, batch_size=8, micro_batch_size=2, ckpt_every=3, log_every=1)
    single = train(config, tiny_shards_dir, tmp_path / "one", progress=False)
    mp.spawn(_ddp_worker, args=(2, _free_port(), config, str(tiny_shards_dir), str(tmp_path / "two")), nprocs=2)
    a = load_checkpoint(single.checkpoint).state
    b = load_checkpoint(tmp_path / "two" / "checkpoints" / "step_00000003.pt").state
    assert b.world_size == 2 and len(b.rng) == 2
    moved = 0.0
    for key in a.model:
        torch.testing.assert_close(b.model[key], a.model[key], rtol=1e-5, atol=1e-6, msg=key)
        torch.testing.assert_close(b.ema[key], a.ema[key], rtol=1e-5, atol=1e-6, msg=key)
    torch.manual_seed(config.seed)  # the engine's initial weights
    init = build_model_for(config, load_checkpoint(single.checkpoint).build_method(), TokenShards.open(tiny_shards_dir))
    for key, value in init.state_dict().items():
        moved = max(moved, float((a.model[key] - value).abs().max()))
    assert moved > 1e-4  # the runs really trained (the comparison is not between two untouched inits)
    for ra, rb in zip(_curve(tmp_path / "one"), _curve(tmp_path / "two"), strict=True):
        assert ra.keys() == rb.keys() and ra["step"] == rb["step"]
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), k


@pytest.fixture
def one_thread():
    """Bit-exact comparisons need the same intra-op thread count in the killed process and in this one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_sigkilled_cli_run_resumes_to_the_uninterrupted_run(tiny_shards_dir, tmp_path, one_thread):
    steps = 24
    sets = {"model": "DiT-T/1", "model_overrides": {**TINY_MODEL, "hidden_size": 64, "depth": 2}, "steps": steps,
            "batch_size": 32, "lr": 1e-3, "warmup_steps": 5, "ema_decay": 0.9, "log_every": 1, "ckpt_every": 3,
            "keep_last": 1, "seed": 3}
    argv = ["train", "--shards", str(tiny_shards_dir), "--device", "cpu", "--no-progress", "--preset", "digits-demo"]
    argv += [arg for k, v in sets.items() for arg in ("--set", f"{k}={json.dumps(v)}")]
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "purrception", *argv, "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while latest_checkpoint(run) is None:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    killed_at = load_checkpoint(latest_checkpoint(run)).step
    assert killed_at < steps, "the run finished before it could be killed"

    from purrception.cli import main

    assert main([*argv, "--out", str(run), "--resume"]) == 0
    reference = train(resolve_config("digits-demo", overrides=[f"{k}={json.dumps(v)}" for k, v in sets.items()]),
                      tiny_shards_dir, tmp_path / "reference", progress=False)
    a = load_checkpoint(reference.checkpoint).state
    b = load_checkpoint(latest_checkpoint(run)).state
    assert b.step == steps and b.data_position == {"step": steps, "samples_seen": 32 * steps, "seed": 3}
    for part in ("model", "ema"):
        for key in getattr(a, part):
            assert torch.equal(getattr(a, part)[key], getattr(b, part)[key]), (part, key)
    assert _curve(run) == _curve(tmp_path / "reference")
    assert [c["step"] for c in _curve(run)] == list(range(1, steps + 1))


def test_keep_last_and_keep_every(tiny_shards_dir, tmp_path):
    train(tiny_config(steps=10, batch_size=4, ckpt_every=1, keep_last=2, keep_every=4), tiny_shards_dir,
          tmp_path / "run", progress=False)
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == [f"step_{s:08d}.pt" for s in (4, 8, 9, 10)]


def test_checkpoint_and_run_folder_carry_the_resolved_config(tiny_shards_dir, tmp_path):
    config = tiny_config(steps=2, batch_size=4, ckpt_every=2)
    train(config, tiny_shards_dir, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "run")).state
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert ckpt.config == config.to_dict() == saved["train"]
    assert set(ckpt.rng[0]) == {"python", "numpy", "torch"}
    assert ckpt.data_position == {"step": 2, "samples_seen": 8, "seed": 0}


def test_non_finite_gradient_norm_stops_and_keeps_the_last_good_checkpoint(tiny_shards_dir, tmp_path, monkeypatch):
    import purrception.training.loop as loop

    def poisoned(config, method, shards):
        model = build_model_for(config, method, shards)
        calls = {"n": 0}

        def hook(grad):  # finite loss, infinite gradient from the 3rd backward on
            calls["n"] += 1
            return grad if calls["n"] <= 2 else torch.full_like(grad, float("inf"))

        next(model.parameters()).register_hook(hook)
        return model

    monkeypatch.setattr(loop, "build_model_for", poisoned)
    last_good = r"gradient norm became inf at step 2; the last good checkpoint is .*step_00000002"
    with pytest.raises(PurrError, match=last_good):
        train(tiny_config(steps=5, batch_size=4, ckpt_every=1), tiny_shards_dir, tmp_path / "run", progress=False)
    assert latest_checkpoint(tmp_path / "run").name == "step_00000002.pt"


def test_bf16_autocast_trains_on_cpu(tiny_shards_dir, tmp_path):
    result = train(tiny_config(steps=2, batch_size=4, precision="bf16"), tiny_shards_dir, tmp_path / "run",
                   progress=False)
    assert torch.isfinite(torch.tensor(result.last_loss))
    assert all(v.dtype == torch.float32 for v in load_checkpoint(result.checkpoint).state.model.values())


def test_periodic_sample_grids(tiny_shards_dir, tiny_tokenizer_dir, tmp_path):
    from PIL import Image

    config = tiny_config(steps=4, batch_size=4, ckpt_every=4, sample_every=2, sample_images=4, sample_steps=2)
    train(config, tiny_shards_dir, tmp_path / "run", tokenizer_path=str(tiny_tokenizer_dir), progress=False)
    grids = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())
    assert grids == ["step_00000002.png", "step_00000004.png"]
    assert Image.open(tmp_path / "run" / "samples" / grids[0]).size == (2 + 2 * 30, 2 + 2 * 30)  # 2x2 of 28 px
    anonymous = tmp_path / "shards"  # shards that do not record their tokenizer's path
    shutil.copytree(tiny_shards_dir, anonymous)
    manifest = json.loads((anonymous / "manifest.json").read_text())
    manifest["source"].pop("tokenizer_path")
    (anonymous / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PurrError, match="`sample_every` needs the tokenizer"):
        train(config, anonymous, tmp_path / "no-tok", progress=False)


def test_tensorboard_logs_or_says_how_to_install(tiny_shards_dir, tmp_path):
    config = tiny_config(steps=1, batch_size=4, tensorboard=True)
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(PurrError, match="pip install tensorboard"):
            train(config, tiny_shards_dir, tmp_path / "run", progress=False)
    else:
        train(config, tiny_shards_dir, tmp_path / "run", progress=False)
        assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_paper_presets_mirror_appendix_c():
    for name, model in (("paper-dit-b2", "DiT-B/2"), ("paper-dit-l2", "DiT-L/2"), ("paper-dit-xl2", "DiT-XL/2")):
        c = resolve_config(name)
        assert (c.model, c.batch_size, c.lr, c.weight_decay, c.betas, c.eps, c.ema_decay, c.precision, c.method) == \
            (model, 256, 1e-4, 0.01, (0.9, 0.999), 1e-6, 0.9999, "bf16", "purrception")
        assert c.warmup_steps == 0 and not c.ema_warmup
    assert {"digits-demo", "digits-study"} <= set(TRAIN_PRESETS)


def test_the_cpu_presets_read_2x2_patches_and_the_folder_one_trains_longer():
    demo, folder = resolve_config("digits-demo").to_dict(), resolve_config("folder-cpu").to_dict()
    assert demo["model"] == folder["model"] == "DiT-T/2" and demo["lr"] == 3e-3
    assert (demo.pop("steps"), folder.pop("steps")) == (800, 3500) and folder == demo


def test_config_resolution_order_and_type_checks(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 3.0e-4\nsteps: 7\nprecision: bf16\n")
    (tmp_path / "c.toml").write_text("lr = 5e-4\ncompile = true\n")
    c = resolve_config("paper-dit-b2", tmp_path / "c.yaml", ["steps=9"])
    assert (c.lr, c.steps, c.precision, c.model) == (3e-4, 9, "bf16", "DiT-B/2")
    c = resolve_config("digits-demo", tmp_path / "c.toml")
    assert (c.lr, c.compile) == (5e-4, True)
    with pytest.raises(PurrError, match="config field `compile` must be bool"):
        resolve_config(None, None, ["compile=yes"])
    with pytest.raises(PurrError, match="`precision` 'fp16'"):
        resolve_config(None, None, ["precision=fp16"])
    with pytest.raises(PurrError, match="`steps` must be a positive integer"):
        resolve_config(None, None, ["steps=0"])



def test_a_patch_that_does_not_divide_the_code_grid_trains_on_a_padded_grid(tiny_shards_dir, tmp_path):
    side = TokenShards.open(tiny_shards_dir).latent_shape[0]
    patch = next(p for p in (2, 3, 4) if side % p)
    result = train(tiny_config(model=f"DiT-T/{patch}", steps=2), tiny_shards_dir, tmp_path / "run", progress=False)
    model = load_checkpoint(result.checkpoint).build_model()
    assert model.config.input_size == side and model.grid == -(-side // patch)
