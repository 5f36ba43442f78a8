"""VBPR (He & McAuley, AAAI 2016): matrix factorisation with a content part of the item factors."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from recgoat.data import RecDataset
from recgoat.models.base import EmbeddingScorer, Recommender, Scorer, TrainingStep, check_dim
from recgoat.models.side_features import item_modalities
from recgoat.nn import embedding_norm_penalty


class VBPR(Recommender):
    r"""Visual BPR in MMRec's form:

    .. math::
        y(u, i) = \langle [\gamma_u \Vert \theta_u], [\gamma_i \Vert E f_i] \rangle

    with ID factors :math:`\gamma` (dim d), user content preferences :math:`\theta_u` (dim d) and a
    linear projection :math:`E` of the item's content features :math:`f_i` (all modalities concatenated).
    Loss: ``BPR + reg_weight * EmbLoss`` of the batch's (user, pos, neg) representations.

    Args:
        embedding_dim: d (each half of the 2d-dimensional representations).
        reg_weight: weight of the embedding-norm penalty.
        modalities: item modalities concatenated into ``f_i`` (default: all of the dataset's).
        missing_features: ``error`` or ``mean`` for all-zero feature rows.
    """

    def __init__(self, dataset: RecDataset, *, embedding_dim: int, reg_weight: float, modalities: list[str] | None,
                 missing_features: str):
        super().__init__(dataset.n_users, dataset.n_items)
        embedding_dim = check_dim(embedding_dim)
        features = item_modalities(dataset, "VBPR", modalities, missing_features)
        self.modalities = list(features)
        self.reg_weight = reg_weight
        x = np.concatenate([features[m] for m in self.modalities], axis=1)
        self.register_buffer("features", torch.from_numpy(np.ascontiguousarray(x)), persistent=False)
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, 2 * embedding_dim)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, embedding_dim)))
        self.item_linear = nn.Linear(x.shape[1], embedding_dim)
        nn.init.xavier_normal_(self.item_linear.weight)
        nn.init.zeros_(self.item_linear.bias)

    def forward(self) -> tuple[Tensor, Tensor]:
        """Final (user [n_users, 2d], item [n_items, 2d]) representations."""
        return self.user_emb, torch.cat([self.item_emb, self.item_linear(self.features)], dim=1)

    def train_step(self, batch: dict[str, Tensor]) -> TrainingStep:
        users, items = self()
        u, p, n = users[batch["user"]], items[batch["pos"]], items[batch["neg"]]
        return TrainingStep({"": (u, p, n)}, lambda: {"reg": embedding_norm_penalty(u, p, n)},
                            lambda r, t: r[""] + self.reg_weight * t["reg"])

    @torch.no_grad()
    def scorer(self) -> Scorer:
        return EmbeddingScorer(*self())
