"""MostPop: every user gets the items with the most training interactions."""
from __future__ import annotations

import torch
from torch import Tensor

from recgoat.data import RecDataset
from recgoat.models.base import Recommender, Scorer


class _PopularityScorer(Scorer):
    def __init__(self, popularity: Tensor):
        self.popularity = popularity
        self.n_items = popularity.numel()

    def score(self, users: Tensor, items: slice | None = None) -> Tensor:
        pop = self.popularity if items is None else self.popularity[items]
        return pop.to(users.device).unsqueeze(0).repeat(len(users), 1)


class MostPop(Recommender):
    """Non-personalised popularity baseline (score = training interaction count)."""

    trainable = False

    def __init__(self, dataset: RecDataset):
        super().__init__(dataset.n_users, dataset.n_items)
        self.register_buffer("popularity", torch.as_tensor(dataset.item_popularity(), dtype=torch.float32))

    def train_step(self, batch: dict[str, Tensor]):
        raise RuntimeError("MostPop has nothing to train")

    def scorer(self) -> Scorer:
        return _PopularityScorer(self.popularity)
