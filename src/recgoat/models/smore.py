"""SMORE (Ong & Khong, WSDM 2025): modality fusion in the spectral domain of the embeddings."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recgoat.data import RecDataset
from recgoat.graphs import normalized_bipartite_adjacency
from recgoat.graphs.csr import DeviceCSR
from recgoat.graphs.knn import KNNGraphs, KNNSearch
from recgoat.models.base import ContentSideRecommender, id_embedding
from recgoat.models.side_features import item_modalities
from recgoat.nn import ViewContrast, feature_tables
from recgoat.nn.backends import lightgcn_propagation


class SpectrumFusion(nn.Module):
    r"""SMORE's spectral denoising of each modality and their fusion, along the embedding dimension:

    .. math::
        \hat x^m = \mathcal{F}^{-1}\big(\mathcal{F}(x^m) \odot w^m\big), \qquad
        \hat x^{f} = \mathcal{F}^{-1}\big(\textstyle\prod_m \mathcal{F}(x^m) \odot w^{f}\big)

    :math:`\mathcal{F}`: the real FFT over the ``d`` features of each row (orthonormal); :math:`w^m, w^f`: learnt
    complex filters of ``d // 2 + 1`` frequencies, standard-normal initialised (the product of the spectra is the
    circular convolution of the modalities).

    Args:
        modalities: the modality names.
        dim: d.

    Shapes: ``{m: [n, d]}`` -> (``{m: [n, d]}``, ``[n, d]``).
    """

    def __init__(self, modalities: list[str], dim: int):
        super().__init__()
        self.dim = dim
        self.filters = nn.ParameterDict({m: nn.Parameter(torch.randn(1, dim // 2 + 1, 2)) for m in modalities})
        self.fusion_filter = nn.Parameter(torch.randn(1, dim // 2 + 1, 2))

    def forward(self, x: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        spectra = {m: torch.fft.rfft(v, dim=1, norm="ortho") for m, v in x.items()}
        denoised = {m: torch.fft.irfft(s * torch.view_as_complex(self.filters[m]), n=self.dim, dim=1, norm="ortho")
                    for m, s in spectra.items()}
        product = torch.stack(list(spectra.values())).prod(0)
        fused = torch.fft.irfft(product * torch.view_as_complex(self.fusion_filter), n=self.dim, dim=1, norm="ortho")
        return denoised, fused


def elementwise_max(graphs: list[sp.spmatrix]) -> sp.csr_matrix:
    """The union of sparse graphs of one shape, each entry the largest of its stored values (SMORE's max-pooled
    fusion graph: an edge in only one graph keeps that graph's weight, whatever its sign)."""
    coo = [sp.coo_matrix(g) for g in graphs]
    n_cols = coo[0].shape[1]
    key = np.concatenate([c.row.astype(np.int64) * n_cols + c.col for c in coo])
    val = np.concatenate([c.data for c in coo])
    order = np.lexsort((-val, key))                       # by entry, largest value first
    key, val = key[order], val[order]
    first = np.r_[True, key[1:] != key[:-1]]
    out = sp.csr_matrix((val[first], (key[first] // n_cols, key[first] % n_cols)), shape=coo[0].shape,
                        dtype=np.float32)
    out.sort_indices()
    return out


class SMORE(ContentSideRecommender):
    r"""SMORE on the narrow model API.

    .. math::
        (\hat x^m, \hat x^f) &= \mathrm{SpectrumFusion}(\{W^m x^m + b^m\}_m) \\
        \dot E^v_i &= E^{id}_i \odot \sigma(W_g^v \hat x^v_i + b_g^v), \quad v \in \{m_1..m_M, f\} \\
        \bar E^v &= [\hat R\, S_v^{L} \dot E^v;\; S_v^{L} \dot E^v] \quad (S_f = \max_m S_m
            \text{ elementwise}) \\
        E^{ui} &= \mathrm{LightGCN}_{L_{ui}}(E^{id}) \\
        E^{side} &= \tfrac{1}{M+1}\Big(\textstyle\sum_m \sigma(W_p^m E^{ui})
            \odot \mathrm{softmax}_d(Q_m \bar E^f) \odot \bar E^m + \sigma(W_p^f E^{ui}) \odot \bar E^f\Big) \\
        z &= E^{ui} + E^{side}, \qquad y(u, i) = \langle z_u, z_i \rangle

    :math:`S_m` is modality m's cosine-weighted top-k graph (the item among its k), symmetrically normalised;
    :math:`\hat R = D_u^{-1/2} R D_i^{-1/2}`; :math:`Q_m`: Linear-tanh-Linear (no bias), its softmax over the d
    features; the preference gates :math:`\sigma(W_p E^{ui})` pass through dropout in training.
    Loss: ``BPR + reg_weight * (||z_u||^2 + ||z_pos||^2 + ||z_neg||^2) / (2B) + cl_weight * (InfoNCE(E^side_i,
    E^ui_i) + InfoNCE(E^side_u, E^ui_u))`` over the batch's positive items and users (MGCN's view contrast).
    With one modality the fused view is a second filter of it and :math:`S_f = S_m`.

    Args:
        embedding_dim: d.
        knn_k: ``{modality: k}``, neighbours per item in each modality's graph (the authors' ``image_knn_k``,
            ``text_knn_k``); every modality the model uses needs an entry.
        n_layers: propagation steps over each item-item graph.
        n_ui_layers: LightGCN layers over the user-item graph.
        reg_weight: weight of the squared-norm penalty of the final embeddings.
        cl_weight: weight of the view contrast (the authors' ``cl_loss``).
        tau: its temperature.
        dropout: dropout on the preference gates (the authors' ``dropout_rate``).
        finetune_features: train the raw feature matrices too (the authors' code does).
        modalities, missing_features, knn_search, cache_dir: as for the other multimodal models.
        backend: ``pyg`` or ``dgl``, the graph library of the LightGCN layers.
    """

    def __init__(self, dataset: RecDataset, *, embedding_dim: int, knn_k: dict[str, int], n_layers: int,
                 n_ui_layers: int, reg_weight: float, cl_weight: float, tau: float, dropout: float,
                 finetune_features: bool, modalities: list[str] | None, missing_features: str, backend: str,
                 knn_search: KNNSearch, cache_dir: str | None):
        super().__init__(dataset.n_users, dataset.n_items)
        features = item_modalities(dataset, "SMORE", modalities, missing_features)
        self.modalities = list(features)
        missing_k = [m for m in self.modalities if m not in knn_k]
        if missing_k:
            raise ValueError(f"model.knn_k has no entry for modalit{'y' if len(missing_k) == 1 else 'ies'} "
                             f"{missing_k} (it has {sorted(knn_k)}); add e.g. model.knn_k.{missing_k[0]}=10")
        self.reg_weight, self.n_layers = reg_weight, n_layers
        d = embedding_dim
        views = [*self.modalities, "fusion"]

        self.user_emb = id_embedding(self.n_users, d)
        self.item_emb = id_embedding(self.n_items, d)
        self.features = feature_tables(features, trainable=finetune_features)
        self.projections = nn.ModuleDict({m: nn.Linear(x.shape[1], d) for m, x in features.items()})
        self.spectrum = SpectrumFusion(self.modalities, d)
        self.purifiers = nn.ModuleDict({v: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for v in views})
        self.queries = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d, bias=False))
                                      for m in self.modalities})
        self.preferences = nn.ModuleDict({v: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for v in views})
        self.dropout = nn.Dropout(dropout)
        self.contrast = ViewContrast(cl_weight, tau)

        knn = KNNGraphs(knn_search, cache_dir)
        graphs = {m: knn.normalized(x, int(knn_k[m]), weighted=True) for m, x in features.items()}
        graphs["fusion"] = elementwise_max(list(graphs.values()))
        self.item_graphs = {v: DeviceCSR(g) for v, g in graphs.items()}
        adj = normalized_bipartite_adjacency(dataset.train)
        self.r_hat = DeviceCSR(adj[: self.n_users, self.n_users:])
        self.adj = DeviceCSR(adj)
        self.propagate = lightgcn_propagation(backend, n_ui_layers)

    def _item_item_view(self, items: Tensor, view: str) -> Tensor:
        for _ in range(self.n_layers):
            items = self.item_graphs[view] @ items
        return torch.cat([self.r_hat @ items, items])                                        # [U + I, d]

    def views(self) -> tuple[Tensor, Tensor]:
        """``(E^ui, E^side)``, each ``[n_users + n_items, d]`` (users first)."""
        denoised, fused = self.spectrum({m: self.projections[m](x) for m, x in self.features.items()})
        filtered = {**denoised, "fusion": fused}
        side = {v: self._item_item_view(self.item_emb * self.purifiers[v](x), v) for v, x in filtered.items()}
        content = self.propagate(torch.cat([self.user_emb, self.item_emb]), self.adj)
        parts = [self.dropout(self.preferences[m](content)) * F.softmax(self.queries[m](side["fusion"]), dim=-1)
                 * side[m] for m in self.modalities]
        parts.append(self.dropout(self.preferences["fusion"](content)) * side["fusion"])
        return content, torch.stack(parts).mean(0)

    def view_contrast(self) -> ViewContrast:
        return self.contrast
