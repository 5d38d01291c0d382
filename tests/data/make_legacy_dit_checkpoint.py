"""Write ``legacy_dit_v1.pt``, ``legacy_dit_v1_pipeline/`` and ``legacy_dit_v1_codes.json``: a checkpoint and a saved
pipeline folder of the formats before DiT's position table took facebookresearch/DiT's orientation, and the codes
they sampled then.

Run it with the library as it was at those formats (checkpoint and pipeline version 1, no ``pos_embed_layout``
field), e.g.::

    mkdir -p /tmp/v1 && git archive 3a1dcd0 src | tar -x -C /tmp/v1
    PYTHONPATH=/tmp/v1/src python tests/data/make_legacy_dit_checkpoint.py tests/data

It trains a tiny tokenizer on the embedded digits, encodes them, trains a one-block DiT (hidden 16) for a few dozen
steps, strips the optimizer and RNG states (sampling needs neither; it keeps the file small), saves the run as a
pipeline folder (tokenizer included) and samples codes for fixed labels, seed and sampler settings.
``tests/test_dit_init.py`` loads both with the current code and checks that they sample exactly these codes.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from purrception.data.embedded import load_embedded_mnist
from purrception.data.embedded_shards import write_embedded_shards
from purrception.generation.generate import generate_codes
from purrception.io import atomic_torch_save, safe_torch_load
from purrception.pipeline import PurrceptionPipeline
from purrception.sampling.settings import SamplerSettings
from purrception.tokenizers.base import nearest_code
from purrception.tokenizers.conv_vq import ConvVQConfig
from purrception.tokenizers.store import load_tokenizer, save_tokenizer
from purrception.tokenizers.train import TokenizerTrainConfig, train_tokenizer
from purrception.training.checkpoint import load_checkpoint
from purrception.training.config import TrainConfig
from purrception.training.loop import train

#: what the test samples with (kept in the JSON file too)
LABELS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 7]
SEED = 11
SAMPLER = {"steps": 6, "tau": 1.0, "cfg_scale": 1.0, "solver": "euler"}


def main(out: Path) -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok = train_tokenizer(load_embedded_mnist("train").images, ConvVQConfig(codebook_size=16, width=4),
                              TokenizerTrainConfig(steps=120, batch_size=32), progress=False)
        tok_dir = save_tokenizer(tok, work / "tokenizer")
        shards = work / "shards"
        write_embedded_shards(load_tokenizer(tok_dir), "train", shards, str(tok_dir))
        config = TrainConfig(model="DiT-T/1", model_overrides={"hidden_size": 16, "depth": 1, "num_heads": 2},
                             steps=60, batch_size=16, lr=3e-3, ema_decay=0.5, log_every=20, ckpt_every=60, seed=0)
        result = train(config, shards, work / "run", tokenizer_path=str(tok_dir), progress=False)
        state = safe_torch_load(result.checkpoint)
        pipe = PurrceptionPipeline.from_pretrained(result.checkpoint, tokenizer=str(tok_dir))
        pipe.save_pretrained(out / "legacy_dit_v1_pipeline")
    assert state["version"] == 1 and "pos_embed_layout" not in state["model_config"]
    state.update(optimizer=None, rng=None)
    state["tokenizer"]["path"] = None
    atomic_torch_save(out / "legacy_dit_v1.pt", state)

    ckpt = load_checkpoint(out / "legacy_dit_v1.pt")
    method, model = ckpt.build_method(), ckpt.build_model(ema=True)
    codes = generate_codes(method, model, np.array(LABELS), SamplerSettings(**SAMPLER), SEED,
                           lambda z: nearest_code(z, ckpt.codebook), batch_size=len(LABELS))
    piped = pipe(class_labels=LABELS, num_inference_steps=SAMPLER["steps"], tau=SAMPLER["tau"],
                 guidance_scale=SAMPLER["cfg_scale"], solver=SAMPLER["solver"], seed=SEED).codes
    assert torch.equal(piped, codes)
    record = {"labels": LABELS, "seed": SEED, "sampler": SAMPLER, "codes": codes.tolist()}
    (out / "legacy_dit_v1_codes.json").write_text(json.dumps(record) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent))
