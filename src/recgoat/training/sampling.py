"""BPR training batches: (user, positive item, uniform negative item) with vectorised rejection."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from recgoat.data import DataError, RecDataset


class NegativeSampler:
    """Uniform negatives that are never one of the user's training items.

    All negatives of a batch are drawn at once; those that hit a training item are redrawn
    (again all at once) until none does.
    """

    def __init__(self, dataset: RecDataset):
        users, items = dataset.train_pairs()
        self.n_items = dataset.n_items
        full = np.flatnonzero(np.diff(dataset.train.indptr) >= self.n_items)
        if len(full):
            raise DataError(f"user index {full[0]} has every item in training: no negative item can be sampled")
        self.keys = torch.from_numpy(np.sort(users * self.n_items + items))   # sorted int64

    def is_positive(self, users: Tensor, items: Tensor) -> Tensor:
        q = users * self.n_items + items
        pos = torch.searchsorted(self.keys, q).clamp_(max=len(self.keys) - 1)
        return self.keys[pos] == q

    def sample(self, users: Tensor, generator: torch.Generator) -> Tensor:
        neg = torch.randint(self.n_items, users.shape, generator=generator)
        bad = self.is_positive(users, neg).nonzero().squeeze(1)
        while bad.numel():
            neg[bad] = torch.randint(self.n_items, bad.shape, generator=generator)
            bad = bad[self.is_positive(users[bad], neg[bad])]
        return neg


class BPRBatches:
    """An epoch of shuffled training pairs in batches, with negatives, sharded over DDP ranks: batches
    ``{"user", "pos", "neg"}`` (``[B]`` each) and ``"items"``, the batch's distinct positive items, sorted.

    The permutation and the negatives of epoch ``e`` depend only on ``(seed, e)``, so a run resumed
    at epoch ``e`` sees exactly the batches an uninterrupted run would. Each rank takes every
    ``world_size``-th pair of the permutation (padded so all ranks have the same number of batches).

    Args:
        dataset: the data.
        batch_size: pairs per batch (per rank).
        seed: base seed.
        epoch_fn: returns the current epoch (the trainer's, so resuming restores it).
        rank_fn: returns ``(rank, world_size)``.
    """

    def __init__(self, dataset: RecDataset, batch_size: int, seed: int, epoch_fn: Callable[[], int],
                 rank_fn: Callable[[], tuple[int, int]] = lambda: (0, 1)):
        users, items = dataset.train_pairs()
        self.users = torch.from_numpy(users)
        self.items = torch.from_numpy(items)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch_fn = epoch_fn
        self.rank_fn = rank_fn
        self.negatives = NegativeSampler(dataset)

    def _shard_size(self) -> int:
        _, world = self.rank_fn()
        return -(-len(self.users) // world)

    def __len__(self) -> int:
        return -(-self._shard_size() // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        rank, world = self.rank_fn()
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch_fn())
        perm = torch.randperm(len(self.users), generator=g)
        pad = self._shard_size() * world - len(perm)
        if pad:
            perm = torch.cat([perm, perm[:pad]])
        neg = self.negatives.sample(self.users[perm], g)  # same draws on every rank, then sharded
        mine = torch.arange(rank, len(perm), world)
        perm, neg = perm[mine], neg[mine]
        for start in range(0, len(perm), self.batch_size):
            idx = perm[start:start + self.batch_size]
            pos = self.items[idx]
            # the distinct positives (sorted), made here on the host: in the step a unique would wait for the device
            yield {"user": self.users[idx], "pos": pos, "neg": neg[start:start + self.batch_size],
                   "items": torch.unique(pos)}
