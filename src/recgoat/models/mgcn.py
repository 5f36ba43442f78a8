"""MGCN (Yu et al., ACM MM 2023): multi-view graph convolution with behaviour-guided purification."""
from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from recgoat.data import RecDataset
from recgoat.graphs import normalized_bipartite_adjacency
from recgoat.graphs.csr import DeviceCSR
from recgoat.graphs.knn import KNNGraphs, KNNSearch
from recgoat.models.base import ContentSideRecommender, id_embedding
from recgoat.models.side_features import item_modalities
from recgoat.nn import FeatureGates, SideView, ViewContrast
from recgoat.nn.backends import lightgcn_propagation


class MGCN(ContentSideRecommender):
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
        modalities, missing_features, knn_search, cache_dir: as for the other multimodal models.
        backend: ``pyg`` or ``dgl``, the graph library of the LightGCN layers.
    """

    def __init__(self, dataset: RecDataset, *, embedding_dim: int, knn_k: int, n_layers: int, n_ui_layers: int,
                 reg_weight: float, cl_weight: float, tau: float, finetune_features: bool,
                 modalities: list[str] | None, missing_features: str, backend: str, knn_search: KNNSearch,
                 cache_dir: str | None):
        super().__init__(dataset.n_users, dataset.n_items)
        features = item_modalities(dataset, "MGCN", modalities, missing_features)
        self.reg_weight = reg_weight

        self.user_emb = id_embedding(self.n_users, embedding_dim)
        self.item_emb = id_embedding(self.n_items, embedding_dim)
        adj = normalized_bipartite_adjacency(dataset.train)
        self.side_view = SideView(
            features, embedding_dim, adj[: self.n_users, self.n_users:], KNNGraphs(knn_search, cache_dir),
            knn_k=knn_k, n_layers=n_layers, contrast=ViewContrast(cl_weight, tau),
            gates=partial(FeatureGates, finetune_features=finetune_features))
        self.adj = DeviceCSR(adj)
        self.propagate = lightgcn_propagation(backend, n_ui_layers)

    def views(self) -> tuple[Tensor, Tensor]:
        """``(E^ui, E^side)``, each ``[n_users + n_items, d]`` (users first)."""
        content = self.propagate(torch.cat([self.user_emb, self.item_emb]), self.adj)
        return content, self.side_view(self.item_emb, content)

    def view_contrast(self) -> ViewContrast:
        return self.side_view.contrast
