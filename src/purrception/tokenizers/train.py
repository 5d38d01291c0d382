"""Training the small VQ tokenizer on uint8 images, and measuring it.

Reported metrics (paper App. E cares about reconstruction quality): mean squared reconstruction error in
``[-1, 1]`` pixel units, codebook perplexity ``exp(H(p))`` of the code histogram, and the fraction of codes used.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from purrception.pixels import images_to_tensor
from purrception.tokenizers.base import VQTokenizer
from purrception.tokenizers.small_vq import SmallVQ, SmallVQConfig

__all__ = ["TokenizerTrainConfig", "train_small_vq", "evaluate_tokenizer"]

log = logging.getLogger(__name__)


@dataclass
class TokenizerTrainConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0


def train_small_vq(images: np.ndarray, model_config: SmallVQConfig, train_config: TokenizerTrainConfig,
                   progress: bool = True, device: str = "cpu") -> SmallVQ:
    """Fit a :class:`SmallVQ` to ``images`` (uint8) with MSE reconstruction + commitment loss.

    The returned model is on the CPU, in eval mode.
    """
    torch.manual_seed(train_config.seed)
    data = images_to_tensor(images).to(device)
    model = SmallVQ(model_config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=train_config.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=train_config.lr, total_steps=train_config.steps,
                                                pct_start=0.05)
    gen = torch.Generator().manual_seed(train_config.seed)
    model.train()
    bar = tqdm(range(train_config.steps), desc="tokenizer", disable=not progress, dynamic_ncols=True)
    for step in bar:
        idx = torch.randint(0, data.shape[0], (train_config.batch_size,), generator=gen)
        x = data[idx.to(device)]
        recon, _, commit = model(x)
        rec = F.mse_loss(recon, x)
        loss = rec + model_config.commitment * commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(mse=f"{rec.item():.4f}")
    return model.cpu().eval()


@torch.no_grad()
def evaluate_tokenizer(tokenizer: VQTokenizer, images: np.ndarray, batch_size: int = 500) -> dict[str, float]:
    """Reconstruction MSE (pixels in [-1, 1]), codebook perplexity and fraction of codes used."""
    data = images_to_tensor(images)
    counts = torch.zeros(tokenizer.codebook_size, dtype=torch.float64)
    sq_err = 0.0
    for start in range(0, data.shape[0], batch_size):
        x = data[start : start + batch_size]
        codes = tokenizer.encode(x)
        counts += torch.bincount(codes.reshape(-1), minlength=tokenizer.codebook_size).double()
        sq_err += F.mse_loss(tokenizer.decode(codes), x, reduction="sum").item()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {
        "recon_mse": sq_err / data.numel(),
        "perplexity": math.exp(entropy),
        "codes_used_fraction": float((counts > 0).float().mean()),
        "num_images": int(data.shape[0]),
    }
