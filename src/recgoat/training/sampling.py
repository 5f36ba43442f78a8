"""Training batches: (user, positive item, negatives) with vectorised rejection of the user's training items."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from recgoat.data import DataError, RecDataset


class NegativeSampler:
    """``n`` negatives per training pair that are never one of the user's training items, drawn uniformly or in
    proportion to the items' training frequency to the power ``power`` (``popularity``).

    All negatives of an epoch are drawn at once; those that hit a training item are redrawn (again all at once)
    until none does. With ``popularity``, :meth:`log_q` gives each drawn item's log-probability (the softmax's
    log-q correction); uniform negatives need none.

    Args:
        dataset: the data.
        n: negatives per pair (1: a ``[P]`` tensor, as BPR has always had; more: ``[P, n]``).
        distribution: ``uniform`` or ``popularity``.
        power: the exponent of the popularity distribution (0 would be uniform; word2vec's 0.75 is common).
    """

    def __init__(self, dataset: RecDataset, n: int, distribution: str, power: float):
        if int(n) < 1:
            raise ValueError(f"loss.negatives.n must be a positive integer, got {n}")
        if distribution not in ("uniform", "popularity"):
            raise ValueError(f"loss.negatives.distribution must be 'uniform' or 'popularity', got {distribution!r}")
        users, items = dataset.train_pairs()
        self.n_items = dataset.n_items
        self.n = int(n)
        full = np.flatnonzero(np.diff(dataset.train.indptr) >= self.n_items)
        if len(full):
            raise DataError(f"user index {full[0]} has every item in training: no negative item can be sampled")
        self.keys = torch.from_numpy(np.sort(users * self.n_items + items))   # sorted int64
        self.probs = self.log_probs = None
        if distribution == "popularity":
            counts = np.bincount(items, minlength=self.n_items).astype(np.float64) ** float(power)
            self.probs = torch.from_numpy(counts / counts.sum())
            self.log_probs = self.probs.log().float()   # once, not per batch

    def is_positive(self, users: Tensor, items: Tensor) -> Tensor:
        q = users * self.n_items + items
        pos = torch.searchsorted(self.keys, q).clamp_(max=len(self.keys) - 1)
        return self.keys[pos] == q

    def _draw(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        if self.probs is None:
            return torch.randint(self.n_items, shape, generator=generator)
        count = int(np.prod(shape))
        return torch.multinomial(self.probs, count, replacement=True, generator=generator).view(shape)

    def sample(self, users: Tensor, generator: torch.Generator) -> Tensor:
        """Negatives of the pairs of ``users`` ``[P]``: ``[P]`` (n=1) or ``[P, n]``."""
        shape = tuple(users.shape) if self.n == 1 else (*users.shape, self.n)
        neg = self._draw(shape, generator).view(-1)
        owners = users if self.n == 1 else users.repeat_interleave(self.n)
        bad = self.is_positive(owners, neg).nonzero().squeeze(1)
        while bad.numel():
            neg[bad] = self._draw(tuple(bad.shape), generator)
            bad = bad[self.is_positive(owners[bad], neg[bad])]
        return neg.view(shape)

    def log_q(self, neg: Tensor) -> Tensor | None:
        """The log-probability each negative was drawn with (``None``: uniform, a constant left out)."""
        return None if self.log_probs is None else self.log_probs[neg]


class BPRBatches:
    """An epoch of shuffled training pairs in batches, with negatives, sharded over DDP ranks: batches
    ``{"user", "pos"}`` (``[B]``), ``"neg"`` (``[B]``, or ``[B, N]`` for N negatives), ``"items"``, the batch's
    distinct positive items, sorted, and ``"neg_logq"`` where the negatives were not drawn uniformly.

    The permutation and the negatives of epoch ``e`` depend only on ``(seed, e)``, so a run resumed
    at epoch ``e`` sees exactly the batches an uninterrupted run would. Each rank takes every
    ``world_size``-th pair of the permutation (padded so all ranks have the same number of batches).

    Args:
        dataset: the data.
        batch_size: pairs per batch (per rank).
        seed: base seed.
        epoch_fn: returns the current epoch (the trainer's, so resuming restores it).
        negatives: the sampler of the loss group's negatives (``conf/loss/``).
        rank_fn: returns ``(rank, world_size)``.
    """

    def __init__(self, dataset: RecDataset, batch_size: int, seed: int, epoch_fn: Callable[[], int],
                 negatives: NegativeSampler, rank_fn: Callable[[], tuple[int, int]] = lambda: (0, 1)):
        users, items = dataset.train_pairs()
        self.users = torch.from_numpy(users)
        self.items = torch.from_numpy(items)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch_fn = epoch_fn
        self.rank_fn = rank_fn
        self.negatives = negatives

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
            batch = {"user": self.users[idx], "pos": pos, "neg": neg[start:start + self.batch_size],
                     "items": torch.unique(pos)}
            log_q = self.negatives.log_q(batch["neg"])
            if log_q is not None:   # negatives not drawn uniformly: the probability each was drawn with
                batch["neg_logq"] = log_q
            yield batch
