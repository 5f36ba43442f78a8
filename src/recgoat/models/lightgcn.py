"""LightGCN (He et al., SIGIR 2020)."""
from __future__ import annotations

import torch
from torch import Tensor

from recgoat.data import RecDataset
from recgoat.graphs import normalized_bipartite_adjacency
from recgoat.models.base import EmbeddingScorer, Recommender, Scorer, id_embedding
from recgoat.nn import ConstantSparse, bpr_loss, embedding_norm_penalty
from recgoat.nn.backends import graph_backend, lightgcn_propagation


class LightGCN(Recommender):
    r"""ID embeddings propagated over the normalised user-item graph, mean over layers 0..L.

    Loss: ``BPR`` on propagated embeddings ``+ reg_weight * EmbLoss`` on the batch's layer-0
    (ego) embeddings, as in MMRec.

    Args:
        embedding_dim: d.
        n_layers: L.
        reg_weight: weight of the ego-embedding penalty.
        encoder: ``{backend: pyg|dgl}``, the graph library of the propagation (:mod:`recgoat.nn.backends`).
    """

    def __init__(self, dataset: RecDataset, embedding_dim: int = 64, n_layers: int = 3, reg_weight: float = 1e-4,
                 encoder: dict | None = None):
        super().__init__(dataset.n_users, dataset.n_items)
        self.reg_weight = reg_weight
        self.user_emb = id_embedding(self.n_users, embedding_dim)
        self.item_emb = id_embedding(self.n_items, embedding_dim)
        self.propagate = lightgcn_propagation(graph_backend(encoder), n_layers)
        # derived from the data, rebuilt on load: not a buffer (DDP cannot broadcast sparse tensors)
        self.adj = ConstantSparse(normalized_bipartite_adjacency(dataset.train))

    def forward(self) -> tuple[Tensor, Tensor]:
        """Final (user [n_users, d], item [n_items, d]) embeddings."""
        out = self.propagate(torch.cat([self.user_emb, self.item_emb]), self.adj.on(self.user_emb.device))
        return out[: self.n_users], out[self.n_users:]

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        users, items = self()
        u, p, n = users[batch["user"]], items[batch["pos"]], items[batch["neg"]]
        bpr = bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        reg = embedding_norm_penalty(self.user_emb[batch["user"]], self.item_emb[batch["pos"]],
                                     self.item_emb[batch["neg"]])
        return {"loss": bpr + self.reg_weight * reg, "bpr": bpr, "reg": reg}

    @torch.no_grad()
    def scorer(self) -> Scorer:
        return EmbeddingScorer(*self())
