"""Deterministic, resumable batches from token shards.

The order of samples is a function of ``(seed, step)`` only: epoch ``e`` visits the shard in the permutation
seeded by ``(seed, e)``, and global batch ``k`` takes positions ``[k B, (k + 1) B)`` of that endless stream.
So the data position of a run is its step, resuming needs no loader state, and splitting a global batch
into micro-batch *slots* (over processes and gradient-accumulation steps) does not change which samples
a step sees.

The randomness of a sample (noise, time, label dropout) comes from its own generator, seeded by
``(seed, step, i)`` for the sample at position ``i`` of the step's global batch (:func:`sample_generators`). So
neither the samples nor their randomness depend on the number of processes or on the micro-batch size.
"""

from __future__ import annotations

import numpy as np
import torch

from purrception.data.shards import TokenShards
from purrception.errors import PurrError

__all__ = ["ShardBatches", "sample_generators"]


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

    def positions(self, slot: int) -> range:
        """The positions in the global batch of a step that micro-batch ``slot`` holds."""
        return range(slot * self.micro_batch, (slot + 1) * self.micro_batch)

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
        """Codes ``(b, h, w)`` int64 and labels ``(b,)`` of one micro-batch, row ``j`` the sample at position
        ``positions(slot)[j]`` (the one its generator in :func:`sample_generators` belongs to)."""
        idx = self.indices(step, slot)
        order = np.argsort(idx, kind="stable")  # sorted reads are kinder to memory maps; rows go back in place
        codes = np.empty((len(idx), *self.shards.codes.shape[1:]), dtype=np.int64)
        codes[order] = np.asarray(self.shards.codes[idx[order]])
        k = self.shards.codebook.shape[0]
        if codes.size and (codes.min() < 0 or codes.max() >= k):  # shards too large to scan whole when opened
            raise PurrError(f"codes.npy in {self.shards.folder} holds codes outside [0, {k}) (e.g. "
                            f"{int(codes.max())}); re-run `purr encode`")
        labels = np.empty(len(idx), dtype=np.int64)
        labels[order] = self.shards.labels[idx[order]]
        return torch.from_numpy(codes).to(device), torch.from_numpy(labels).to(device)


def sample_generators(seed: int, step: int, positions: range,
                      device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per sample: the random stream (noise, time, label dropout) of the sample at each of
    ``positions`` in the global batch of ``step``, the same whichever process or micro-batch computes it."""
    gens = []
    for i in positions:
        gen = torch.Generator(device=device)
        gen.manual_seed(int(np.random.SeedSequence([seed, step, i]).generate_state(1, dtype=np.uint64)[0] >> 1))
        gens.append(gen)
    return gens
