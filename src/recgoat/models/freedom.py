"""FREEDOM (Zhou & Shen, ACM MM 2023): a frozen item-item graph and a denoised user-item graph."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from recgoat.data import RecDataset
from recgoat.graphs import degree_sensitive_pruning, normalized_bipartite_adjacency
from recgoat.graphs.csr import DeviceCSR
from recgoat.graphs.knn import KNNGraphs, KNNSearch
from recgoat.models.base import EmbeddingScorer, Recommender, Scorer, TrainingStep, id_embedding
from recgoat.models.side_features import item_modalities, mixing_weights
from recgoat.nn import feature_tables
from recgoat.nn.backends import lightgcn_propagation


class FREEDOM(Recommender):
    r"""FREEDOM: freeze the item-item graph, denoise the user-item graph.

    .. math::
        S = \sum_m w_m\, D_m^{-1/2} A_m D_m^{-1/2}, \qquad h_i = (S^{L_{mm}} E_{item})_i, \qquad
        (z_u, z^{id}_i) = \mathrm{LightGCN}_{L_{ui}}(\tilde A), \qquad y(u, i) = \langle z_u, z^{id}_i + h_i\rangle

    :math:`A_m`: per-modality kNN graph (top-k by cosine, the item itself included, binary), built once and
    frozen. :math:`\tilde A`: each training epoch, the user-item graph keeps ``1 - prune_ratio`` of its
    edges, drawn with probability :math:`\propto 1/\sqrt{d_u d_i}` (degree-sensitive pruning), renormalised;
    evaluation uses the full graph. Loss: ``BPR(z_u, z_i + h_i) + modality_bpr_weight * sum_m BPR(z_u,
    W_m x^m_i)`` with the (fine-tuned, when ``finetune_features``) raw features projected to d.

    Args:
        embedding_dim: d (also the projection size of the features).
        knn_k: neighbours per item in each modality's graph.
        modality_weights: mixing weights ``w_m`` (normalised to sum 1); a modality not named gets the rest
            shared equally; names of unused modalities are ignored. The authors: image 0.1, text 0.9.
        n_mm_layers: propagation steps over the item-item graph.
        n_ui_layers: LightGCN layers over the user-item graph.
        prune_ratio: share of user-item edges dropped each epoch (the authors' ``dropout``); 0 disables.
        modality_bpr_weight: weight of the per-modality BPR terms (the authors' ``reg_weight``).
        finetune_features: train the raw feature matrices too (the authors' code does).
        modalities, missing_features, knn_search, cache_dir: as for the other multimodal models.
        backend: ``pyg`` or ``dgl``, the graph library of the LightGCN layers.
    """

    def __init__(self, dataset: RecDataset, *, embedding_dim: int, knn_k: int, modality_weights: dict[str, float],
                 n_mm_layers: int, n_ui_layers: int, prune_ratio: float, modality_bpr_weight: float,
                 finetune_features: bool, modalities: list[str] | None, missing_features: str, backend: str,
                 knn_search: KNNSearch, cache_dir: str | None):
        super().__init__(dataset.n_users, dataset.n_items)
        features = item_modalities(dataset, "FREEDOM", modalities, missing_features)
        self.modalities = list(features)
        if not 0.0 <= prune_ratio < 1.0:
            raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio}")
        self.prune_ratio = prune_ratio
        self.modality_bpr_weight = modality_bpr_weight
        self.n_mm_layers = n_mm_layers
        self.train_matrix = dataset.train
        d = embedding_dim

        self.user_emb = id_embedding(self.n_users, d)
        self.item_emb = id_embedding(self.n_items, d)
        self.features = feature_tables(features, trainable=finetune_features)
        self.projections = nn.ModuleDict({m: nn.Linear(x.shape[1], d) for m, x in features.items()})
        weights = mixing_weights(self.modalities, dict(modality_weights))
        knn = KNNGraphs(knn_search, cache_dir)
        self.item_graph = DeviceCSR(sum(w * knn.normalized(features[m], knn_k, weighted=False)
                                             for m, w in weights.items()))
        self.propagate = lightgcn_propagation(backend, n_ui_layers)
        self.full_adj = DeviceCSR(normalized_bipartite_adjacency(dataset.train))
        self.pruned_adj = self.full_adj

    def on_train_epoch_start(self, epoch: int) -> None:
        """Draw this epoch's pruned user-item graph (seeded by the run's seed and the epoch)."""
        if self.prune_ratio > 0:
            g = torch.Generator().manual_seed((torch.initial_seed() * 1_000_003 + epoch) % 2**63)
            kept = degree_sensitive_pruning(self.train_matrix, 1.0 - self.prune_ratio, g)
            self.pruned_adj = DeviceCSR(normalized_bipartite_adjacency(kept))

    def forward(self) -> tuple[Tensor, Tensor]:
        """Final (user [n_users, d], item [n_items, d]) representations; the pruned graph while training."""
        h = self.item_emb
        for _ in range(self.n_mm_layers):
            h = self.item_graph @ h
        adj = self.pruned_adj if self.training else self.full_adj
        out = self.propagate(torch.cat([self.user_emb, self.item_emb]), adj)
        return out[: self.n_users], out[self.n_users:] + h

    def train_step(self, batch: dict[str, Tensor]) -> TrainingStep:
        users, items = self()
        u, pos, neg = users[batch["user"]], batch["pos"], batch["neg"]
        rankings = {"": (u, items[pos], items[neg])}
        for m in self.modalities:   # each modality's projected features ranked on their own too
            z = self.projections[m](self.features[m])
            rankings[f"_{m}"] = (u, z[pos], z[neg])

        def total(ranked: dict[str, Tensor], terms: dict[str, Tensor]) -> Tensor:
            modal = 0.0
            for m in self.modalities:
                modal = modal + ranked[f"_{m}"]
            return ranked[""] + self.modality_bpr_weight * modal
        return TrainingStep(rankings, dict, total)

    @torch.no_grad()
    def scorer(self) -> Scorer:
        return EmbeddingScorer(*self())

