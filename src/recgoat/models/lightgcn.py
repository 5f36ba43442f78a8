"""LightGCN (He et al., SIGIR 2020), and the naive content injection of RecGOAT's ablation table."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from recgoat.data import RecDataset
from recgoat.graphs import normalized_bipartite_adjacency
from recgoat.graphs.csr import DeviceCSR
from recgoat.models.base import EmbeddingScorer, Recommender, Scorer, TrainingStep, id_embedding
from recgoat.models.side_features import item_modalities
from recgoat.nn import embedding_norm_penalty
from recgoat.nn.backends import lightgcn_propagation


class LightGCN(Recommender):
    r"""ID embeddings propagated over the normalised user-item graph, mean over layers 0..L.

    Loss: ``BPR`` on propagated embeddings ``+ reg_weight * EmbLoss`` on the batch's layer-0
    (ego) embeddings, as in MMRec.

    Args:
        embedding_dim: d.
        n_layers: L.
        reg_weight: weight of the ego-embedding penalty.
        backend: ``pyg`` or ``dgl``, the graph library of the propagation (:mod:`recgoat.nn.backends`).
    """

    def __init__(self, dataset: RecDataset, *, embedding_dim: int, n_layers: int, reg_weight: float, backend: str):
        super().__init__(dataset.n_users, dataset.n_items)
        self.reg_weight = reg_weight
        self.user_emb = id_embedding(self.n_users, embedding_dim)
        self.item_emb = id_embedding(self.n_items, embedding_dim)
        self.propagate = lightgcn_propagation(backend, n_layers)
        # derived from the data, rebuilt on load: not a buffer (DDP cannot broadcast sparse tensors)
        self.adj = DeviceCSR(normalized_bipartite_adjacency(dataset.train))

    def item_ego(self) -> Tensor:
        """Layer-0 item embeddings ``[n_items, d]``."""
        return self.item_emb

    def forward(self) -> tuple[Tensor, Tensor]:
        """Final (user [n_users, d], item [n_items, d]) embeddings."""
        out = self.propagate(torch.cat([self.user_emb, self.item_ego()]), self.adj)
        return out[: self.n_users], out[self.n_users:]

    def train_step(self, batch: dict[str, Tensor]) -> TrainingStep:
        users, items = self()
        u, p, n = users[batch["user"]], items[batch["pos"]], items[batch["neg"]]
        return TrainingStep({"": (u, p, n)},
                            lambda: {"reg": embedding_norm_penalty(self.user_emb[batch["user"]],
                                                                   self.item_emb[batch["pos"]],
                                                                   self.item_emb[batch["neg"]])},
                            lambda r, t: r[""] + self.reg_weight * t["reg"])

    @torch.no_grad()
    def scorer(self) -> Scorer:
        return EmbeddingScorer(*self())


class NaiveFusion(LightGCN):
    r"""Naive injection of the LM features (RecGOAT's "-30%" ablation): linear projections of the raw item
    features added to the ID item embeddings before LightGCN, no graph attention, no alignment:

    .. math::
        e^{(0)}_i = E_i + \sum_m (W_m x^m_i + b_m), \qquad (z_u, z_i) = \mathrm{LightGCN}_L(E_u, e^{(0)})

    Args:
        embedding_dim, n_layers, reg_weight, backend: as for :class:`LightGCN`.
        modalities: item modalities to inject (``None``: all of the dataset's).
        missing_features: ``error`` or ``mean`` for all-zero feature rows.
    """

    def __init__(self, dataset: RecDataset, *, embedding_dim: int, n_layers: int, reg_weight: float, backend: str,
                 modalities: list[str] | None, missing_features: str):
        super().__init__(dataset, embedding_dim=embedding_dim, n_layers=n_layers, reg_weight=reg_weight,
                         backend=backend)
        features = item_modalities(dataset, "NaiveFusion", modalities, missing_features)
        self.modalities = list(features)
        self.projections = nn.ModuleDict({m: nn.Linear(x.shape[1], embedding_dim) for m, x in features.items()})
        for m, x in features.items():
            self.register_buffer(f"x_{m}", torch.from_numpy(x), persistent=False)

    def item_ego(self) -> Tensor:
        return self.item_emb + sum(self.projections[m](getattr(self, f"x_{m}")) for m in self.modalities)
