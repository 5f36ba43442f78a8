"""LightningDataModule: BPR batches for training, user batches for full-ranking evaluation."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from recgoat.data import RecDataset
from recgoat.eval import users_with_items
from recgoat.training.sampling import BPRBatches, NegativeSampler


class UserBatches:
    """The users to evaluate, in batches, this rank's share only (every ``world``-th user)."""

    def __init__(self, users: np.ndarray, batch_size: int, rank: int = 0, world: int = 1):
        self.users = torch.as_tensor(users[rank::world], dtype=torch.long)
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return -(-len(self.users) // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        yield from torch.split(self.users, self.batch_size)


class RecDataModule(pl.LightningDataModule):
    """Serves one :class:`RecDataset` to the trainer.

    Args:
        dataset: the data (already loaded; the DataModule never reads files).
        batch_size: training pairs per batch (per device).
        eval_batch_size: users per evaluation batch (the evaluator's ``user_batch``: users are batched once).
        seed: seed of the epoch permutations and negatives.
        negatives: the loss group's negative sampler, partial (``conf/loss/<name>.yaml``: ``negatives``); given the
            dataset here.
    """

    def __init__(self, dataset: RecDataset, *, batch_size: int, eval_batch_size: int, seed: int,
                 negatives: Callable[..., NegativeSampler]):
        super().__init__()
        for name, value in (("datamodule.batch_size", batch_size), ("datamodule.eval_batch_size", eval_batch_size)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.negatives = negatives(dataset=dataset)

    def _rank(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _epoch(self) -> int:
        return 0 if self.trainer is None else self.trainer.current_epoch

    def train_dataloader(self) -> BPRBatches:
        return BPRBatches(self.dataset, self.batch_size, self.seed, epoch_fn=self._epoch, negatives=self.negatives,
                          rank_fn=self._rank)

    def _users(self, split: str) -> UserBatches:
        return UserBatches(users_with_items(self.dataset.split(split)), self.eval_batch_size, *self._rank())

    def val_dataloader(self) -> UserBatches:
        return self._users("valid")

    def test_dataloader(self) -> UserBatches:
        return self._users("test")
