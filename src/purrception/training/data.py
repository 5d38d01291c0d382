"""Deterministic, resumable batches from token shards.

The order of samples is a function of ``(seed, step)`` only: epoch ``e`` visits the shard in the permutation
seeded by ``(seed, e)``, and global batch ``k`` takes positions ``[k B, (k + 1) B)`` of that endless stream.
So the data position of a run is its step, resuming needs no loader state, and splitting a global batch
into micro-batch *slots* (over processes and gradient-accumulation steps) does not change which samples
a step sees.
"""

from __future__ import annotations

import numpy as np
import torch

from purrception.data.shards import TokenShards

__all__ = ["ShardBatches", "slot_generator"]


class ShardBatches:
    """Random access to micro-batches of a :class:`TokenShards` by ``(step, slot)``."""

    def __init__(self, shards: TokenShards, global_batch: int, micro_batch: int, seed: int):
        if global_batch % micro_batch:
            raise ValueError(f"global batch {global_batch} is not a multiple of micro batch {micro_batch}")
        self.shards = shards
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.seed = seed
        self._epoch = -1
        self._perm: np.ndarray | None = None

    @property
    def slots_per_step(self) -> int:
        return self.global_batch // self.micro_batch

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(len(self.shards))
            self._epoch = epoch
        assert self._perm is not None
        return self._perm

    def indices(self, step: int, slot: int) -> np.ndarray:
        n = len(self.shards)
        start = step * self.global_batch + slot * self.micro_batch
        positions = np.arange(start, start + self.micro_batch)
        out = np.empty(self.micro_batch, dtype=np.int64)
        for epoch in np.unique(positions // n):
            mask = positions // n == epoch
            out[mask] = self._permutation(int(epoch))[positions[mask] % n]
        return out

    def get(self, step: int, slot: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Codes ``(b, h, w)`` int64 and labels ``(b,)`` of one micro-batch."""
        idx = np.sort(self.indices(step, slot))  # sorted reads are kinder to memory maps; order is irrelevant
        codes = torch.from_numpy(np.asarray(self.shards.codes[idx]).astype(np.int64))
        labels = torch.from_numpy(self.shards.labels[idx].astype(np.int64))
        return codes.to(device), labels.to(device)


def slot_generator(seed: int, step: int, slot: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The random stream (noise, times, label dropout) of one micro-batch slot, independent of world size."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(np.random.SeedSequence([seed, step, slot]).generate_state(1, dtype=np.uint64)[0] >> 1))
    return gen
