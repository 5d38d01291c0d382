"""Shared tiny fixtures: a briefly trained embedded tokenizer, its token shards and a tiny checkpoint.

Everything is sized for 2 CPU cores: the whole session setup takes seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from purrception.data.embedded import load_embedded_mnist
from purrception.data.embedded_shards import write_embedded_shards
from purrception.tokenizers.conv_vq import ConvVQConfig
from purrception.tokenizers.store import save_tokenizer
from purrception.tokenizers.train import TokenizerTrainConfig, train_tokenizer
from purrception.training.config import TrainConfig

TINY_MODEL = {"hidden_size": 32, "depth": 1, "num_heads": 2}
# torch's own thread count, fixed for the whole session, session fixtures included (tests that compare two runs bit
# for bit need one count; the adaptive count is tested in test_threads.py)
os.environ.setdefault("PURR_THREADS", str(torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test touches the user's ~/.cache: the embedded cache lives in one session temp folder."""
    monkeypatch.setenv("PURR_CACHE", str(tmp_path_factory.getbasetemp() / "purr-cache"))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    images = load_embedded_mnist("train").images
    tok = train_tokenizer(images, ConvVQConfig(codebook_size=32, width=8),
                         TokenizerTrainConfig(steps=120, batch_size=32), progress=False)
    return save_tokenizer(tok, tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="session")
def tiny_shards_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    from purrception.tokenizers.store import load_tokenizer

    folder = tmp_path_factory.mktemp("shards") / "train"
    write_embedded_shards(load_tokenizer(tiny_tokenizer_dir), "train", folder, str(tiny_tokenizer_dir))
    return folder


#: metrics.jsonl fields that are wall-clock measurements, so differ between otherwise identical runs
TIMINGS = ("images_per_s", "train_seconds")


def tiny_config(**overrides) -> TrainConfig:
    """A few-step Purrception run with a one-block DiT."""
    values = dict(model="DiT-T/1", model_overrides=dict(TINY_MODEL), steps=4, batch_size=8, lr=1e-3,
                  ema_decay=0.9, log_every=1, ckpt_every=2, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_shards_dir, tiny_tokenizer_dir, tmp_path_factory) -> Path:
    from purrception.training.loop import train

    result = train(tiny_config(), tiny_shards_dir, tmp_path_factory.mktemp("run") / "run",
                   tokenizer_path=str(tiny_tokenizer_dir), progress=False)
    return result.checkpoint
