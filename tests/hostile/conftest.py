"""The hostile corpus's one assertion: a refusal is one ``purr: error:`` line, no traceback, a non-zero exit, and
nothing written (:func:`purr`); and a folder outside every named folder that a reader following a path out of its
folder would meet (:func:`unreadable_outside`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from hostile.corpus import png_bytes, snapshot
from purrception.cli import main


@dataclass
class Refusal:
    code: int
    out: str
    err: str

    @property
    def message(self) -> str:
        return self.err.strip().splitlines()[-1] if self.err.strip() else ""


@pytest.fixture
def purr(capsys):
    """Run ``purr ARGV`` in this process; return its exit code and output, and check the refusal's form: non-zero
    exit, exactly one ``purr: error:`` line, no traceback, and the folders in ``untouched`` as they were."""

    def run(argv: list[str], untouched: tuple[Path, ...] = ()) -> Refusal:
        before = {p: snapshot(p) for p in untouched}
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse refusals
            code = exit_.code if isinstance(exit_.code, int) else 1
        captured = capsys.readouterr()
        result = Refusal(code, captured.out, captured.err)
        errors = [line for line in captured.err.splitlines() if line.startswith("purr: error:")]
        assert code != 0, f"purr {' '.join(map(str, argv))} exited 0:\n{captured.err[-2000:]}"
        assert "Traceback" not in captured.err, captured.err[-3000:]
        assert len(errors) == 1 or (code == 2 and "usage:" in captured.err), captured.err[-2000:]
        for path in untouched:
            assert snapshot(path) == before[path], f"{path} changed"
        return result

    return run


@pytest.fixture(scope="session")
def unreadable_outside(tmp_path_factory) -> Path:
    """A folder outside every named folder holding a damaged image and a valid-looking tokenizer weights file: a
    reader that follows a path out of its folder meets them and says so in its error."""
    folder = tmp_path_factory.mktemp("outside")
    (folder / "secret.png").write_bytes(png_bytes()[:40])
    (folder / "x.safetensors").write_bytes(b"\0" * 16)
    return folder


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """An untrained embedded-size tokenizer (7x7 codes, K = 32): encoding and decoding need no training."""
    import torch

    from purrception.tokenizers.conv_vq import ConvVQ, ConvVQConfig
    from purrception.tokenizers.store import save_tokenizer

    torch.manual_seed(0)
    return save_tokenizer(ConvVQ(ConvVQConfig(codebook_size=32, width=8)), tmp_path_factory.mktemp("tok") / "tok")


@pytest.fixture(scope="session")
def shards_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """32 items of random codes in 10 classes, with the tokenizer's codebook and identity."""
    import numpy as np

    from purrception.data.shards import write_token_shards
    from purrception.tokenizers.store import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 32, (32, 7, 7))
    return write_token_shards(tmp_path_factory.mktemp("shards") / "shards", codes, np.arange(32) % 10,
                              tok.codebook.detach().numpy(), tok.identity(), 10,
                              {"type": "random", "tokenizer_path": str(tokenizer_dir)}, {})


@pytest.fixture(scope="session")
def checkpoint(shards_dir, tokenizer_dir, tmp_path_factory) -> Path:
    """A one-step run of a one-block DiT on :func:`shards_dir`."""
    from purrception.training.config import TrainConfig
    from purrception.training.loop import train

    config = TrainConfig(model="DiT-T/1", model_overrides={"hidden_size": 32, "depth": 1, "num_heads": 2}, steps=1,
                         batch_size=8, log_every=1, ckpt_every=1)
    return train(config, shards_dir, tmp_path_factory.mktemp("run") / "run", tokenizer_path=str(tokenizer_dir),
                 progress=False).checkpoint
