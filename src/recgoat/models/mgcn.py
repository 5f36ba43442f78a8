"""MGCN (Yu et al., ACM MM 2023): multi-view graph convolution with behaviour-guided purification."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from recgoat.data import RecDataset
from recgoat.graphs import normalized_bipartite_adjacency, sym_normalize
from recgoat.graphs.csr import DeviceCSR
from recgoat.graphs.knn import cached_knn_similarity_graph
from recgoat.models.base import EmbeddingScorer, Recommender, Scorer, id_embedding
from recgoat.models.inputs import feature_tables, item_modalities
from recgoat.nn import SparseOperator, bpr_loss, info_nce
from recgoat.nn.backends import lightgcn_propagation


class MGCNSideView(nn.Module):
    r"""MGCN's side view: content-purified ID embeddings over each modality's item kNN graph, users from their items.

    .. math::
        \dot E^m_i = E_i \odot \sigma(W_2^m g^m_i + b_2^m), \quad g^m_i = W_1^m x^m_i + b^m \text{ (or given)}, \quad
        \bar E^m = [\hat R \bar E^m_{items}; S_m^{L} \dot E^m], \quad
        E^{c} = \textstyle\sum_m \mathrm{softmax}_m(q^\top \tanh(W_q \bar E^m + b_q)) \bar E^m, \\
        E^{side} = \tfrac{1}{M+1}\big(E^{c} + \textstyle\sum_m \sigma(W_p^m E^{ui} + b_p^m)
            \odot (\bar E^m - E^{c})\big)

    Args:
        features: ``{m: [n_items, f_m]}`` raw item features.
        dim: d.
        r_hat: ``D_u^-1/2 R D_i^-1/2`` ``[n_users, n_items]`` (scipy sparse).
        knn_k: neighbours per item in each modality's similarity-weighted kNN graph (item itself included).
        n_layers: propagation steps over each item-item graph.
        finetune_features: train the raw feature matrices too (the authors' code does).
        cache_dir: where the kNN graphs are cached.
        gate_input: what the purifier gates read: ``features``, ``g^m = W_1^m x^m + b^m`` from the raw features
            (MGCN); ``given``, the ``gates`` passed to :meth:`forward` (RecGOAT passes its aligned modality
            representations), with no feature tables or projections of its own.

    Shapes: ``item_emb`` ``[n_items, d]``, ``content`` ``[n_users + n_items, d]`` (the user-item view, users
    first), ``gates`` ``{m: [n_items, d]}`` -> ``[n_users + n_items, d]``.
    """

    GATE_INPUTS = ("features", "given")

    def __init__(self, features: dict[str, np.ndarray], dim: int, r_hat, knn_k: int, n_layers: int,
                 finetune_features: bool, cache_dir: str | None, gate_input: str):
        super().__init__()
        if gate_input not in self.GATE_INPUTS:
            raise ValueError(f"side view gate_input must be one of {self.GATE_INPUTS}, got {gate_input!r}")
        self.modalities, self.n_layers, self.gate_input, d = list(features), n_layers, gate_input, dim
        if gate_input == "features":
            self.features = feature_tables(features, trainable=finetune_features)
            self.projections = nn.ModuleDict({m: nn.Linear(x.shape[1], d) for m, x in features.items()})
        self.purifiers = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in self.modalities})
        self.preferences = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in self.modalities})
        self.query_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self.item_graphs = {}
        for m, x in features.items():
            s = sym_normalize(cached_knn_similarity_graph(x, knn_k, True, cache_dir, f"knn-mgcn-{m}"))
            self.item_graphs[m] = SparseOperator(s)  # directed kNN graph
        self.r_hat = SparseOperator(r_hat)

    def forward(self, item_emb: Tensor, content: Tensor, gates: dict[str, Tensor] | None = None) -> Tensor:
        if (gates is None) != (self.gate_input == "features"):
            raise ValueError(f"side view with gate_input={self.gate_input!r} was "
                             f"{'not ' if gates is None else ''}given gates")
        per_modality = []
        for m in self.modalities:
            g = self.projections[m](self.features[m]) if gates is None else gates[m]
            items = item_emb * self.purifiers[m](g)                                             # [I, d]
            for _ in range(self.n_layers):
                items = self.item_graphs[m](items)
            users = self.r_hat(items)                                                           # [U, d]
            per_modality.append(torch.cat([users, items]))
        stacked = torch.stack(per_modality, dim=1)                                              # [N, M, d]
        attention = torch.softmax(self.query_common(stacked), dim=1)                            # [N, M, 1]
        common = (attention * stacked).sum(1)                                                   # [N, d]
        specific = sum(self.preferences[m](content) * (stacked[:, j] - common)
                       for j, m in enumerate(self.modalities))
        return (common + specific) / (len(self.modalities) + 1)


class MGCN(Recommender):
    r"""MGCN on the narrow model API.

    .. math::
        \dot E^m_i &= E^{id}_i \odot \sigma(W_2^m (W_1^m x^m_i + b^m) + b_2^m)
            \quad\text{(behaviour-guided purifier)} \\
        \bar E^m_i &= (S_m^{L} \dot E^m)_i, \quad \bar E^m_u = (\hat R \bar E^m)_u
            \quad\text{(item-item view; } S_m \text{ weighted kNN, user side by the normalised } \hat R) \\
        E^{ui} &= \mathrm{LightGCN}_{L_{ui}}(E^{id}) \quad\text{(user-item view)} \\
        \alpha_m &= \mathrm{softmax}_m(q^\top \tanh(W_q \bar E^m + b_q)), \quad
            E^{c} = \textstyle\sum_m \alpha_m \bar E^m, \quad
            \tilde E^m = \sigma(W_p^m E^{ui} + b_p^m) \odot (\bar E^m - E^{c}) \\
        E^{side} &= \tfrac{1}{M+1}\big(E^{c} + \textstyle\sum_m \tilde E^m\big), \qquad
            z = E^{ui} + E^{side}, \qquad y(u, i) = \langle z_u, z_i \rangle

    Loss: ``BPR + reg_weight * (||z_u||^2 + ||z_pos||^2 + ||z_neg||^2) / (2B) + cl_weight * (InfoNCE(E^side_i,
    E^ui_i) + InfoNCE(E^side_u, E^ui_u))`` over the batch's positive items and users, temperature 0.2.

    Args:
        embedding_dim: d.
        knn_k: neighbours per item in each modality's similarity-weighted kNN graph (item itself included).
        n_layers: propagation steps over each item-item graph.
        n_ui_layers: LightGCN layers over the user-item graph.
        reg_weight: weight of the squared-norm penalty of the final embeddings.
        cl_weight: weight of the self-supervised term (the authors' ``cl_loss``).
        tau: InfoNCE temperature.
        finetune_features: train the raw feature matrices too (the authors' code does).
        modalities, missing_features, cache_dir: as for the other multimodal models.
        backend: ``pyg`` or ``dgl``, the graph library of the LightGCN layers.
    """

    def __init__(self, dataset: RecDataset, *, embedding_dim: int, knn_k: int, n_layers: int, n_ui_layers: int,
                 reg_weight: float, cl_weight: float, tau: float, finetune_features: bool,
                 modalities: list[str] | None, missing_features: str, backend: str, cache_dir: str | None):
        super().__init__(dataset.n_users, dataset.n_items)
        features = item_modalities(dataset, "MGCN", modalities, missing_features)
        self.reg_weight, self.cl_weight, self.tau = reg_weight, cl_weight, tau

        self.user_emb = id_embedding(self.n_users, embedding_dim)
        self.item_emb = id_embedding(self.n_items, embedding_dim)
        adj = normalized_bipartite_adjacency(dataset.train)
        self.side_view = MGCNSideView(features, embedding_dim, adj[: self.n_users, self.n_users:], knn_k, n_layers,
                                      finetune_features, cache_dir, gate_input="features")
        self.adj = DeviceCSR(adj)
        self.propagate = lightgcn_propagation(backend, n_ui_layers)

    def views(self) -> tuple[Tensor, Tensor]:
        """``(E^ui, E^side)``, each ``[n_users + n_items, d]`` (users first)."""
        device = self.item_emb.device
        content = self.propagate(torch.cat([self.user_emb, self.item_emb]), self.adj.matrix(device))
        return content, self.side_view(self.item_emb, content)

    def forward(self) -> tuple[Tensor, Tensor]:
        content, side = self.views()
        z = content + side
        return z[: self.n_users], z[self.n_users:]

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        content, side = self.views()
        z = content + side
        users, pos, neg = batch["user"], batch["pos"] + self.n_users, batch["neg"] + self.n_users
        u, p, n = z[users], z[pos], z[neg]
        bpr = bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        reg = 0.5 * (u.square().sum() + p.square().sum() + n.square().sum()) / len(users)
        cl = info_nce(side[pos], content[pos], self.tau) + info_nce(side[users], content[users], self.tau)
        return {"loss": bpr + self.reg_weight * reg + self.cl_weight * cl, "bpr": bpr, "reg": reg, "cl": cl}

    @torch.no_grad()
    def scorer(self) -> Scorer:
        return EmbeddingScorer(*self())
