"""BPR-MF (Rendle et al., 2009): matrix factorisation trained with the BPR loss."""
from __future__ import annotations

from torch import Tensor, nn

from recgoat.data import RecDataset
from recgoat.models.base import EmbeddingScorer, Recommender, Scorer, TrainingStep, check_dim
from recgoat.nn import embedding_norm_penalty


class BPRMF(Recommender):
    r"""``y(u, i) = <e_u, e_i>``, loss ``BPR + reg_weight * EmbLoss(e_u, e_pos, e_neg)`` (MMRec's form).

    Args:
        embedding_dim: d.
        reg_weight: weight of the embedding-norm penalty.
    """

    def __init__(self, dataset: RecDataset, *, embedding_dim: int, reg_weight: float):
        super().__init__(dataset.n_users, dataset.n_items)
        embedding_dim = check_dim(embedding_dim)
        self.reg_weight = reg_weight
        self.user_emb = nn.Embedding(self.n_users, embedding_dim)
        self.item_emb = nn.Embedding(self.n_items, embedding_dim)
        nn.init.xavier_normal_(self.user_emb.weight)
        nn.init.xavier_normal_(self.item_emb.weight)

    def train_step(self, batch: dict[str, Tensor]) -> TrainingStep:
        u = self.user_emb(batch["user"])   # [B, d]
        p = self.item_emb(batch["pos"])    # [B, d]
        n = self.item_emb(batch["neg"])    # [B, d] or [B, N, d]
        return TrainingStep({"": (u, p, n)}, lambda: {"reg": embedding_norm_penalty(u, p, n)},
                            lambda r, t: r[""] + self.reg_weight * t["reg"])

    def scorer(self) -> Scorer:
        return EmbeddingScorer(self.user_emb.weight, self.item_emb.weight)
