"""LGMRec (Guo et al., AAAI 2024): local graph embeddings plus global hypergraph embeddings."""
from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recgoat.data import RecDataset
from recgoat.graphs import normalized_bipartite_adjacency, row_mean
from recgoat.graphs.csr import DeviceCSR, spmm
from recgoat.models.base import EmbeddingScorer, Recommender, Scorer, TrainingStep, id_embedding
from recgoat.models.side_features import item_modalities
from recgoat.nn import embedding_norm_penalty
from recgoat.nn.backends import lightgcn_propagation


class LGMRec(Recommender):
    r"""LGMRec on the narrow model API.

    .. math::
        E^{cge} &= \mathrm{LightGCN}_{L_{ui}}(E^{id}) \quad\text{(collaborative graph embedding)} \\
        F^m_i &= x^m_i W_m, \quad F^m_u = \tfrac{1}{|N_u|}\textstyle\sum_{i \in N_u} F^m_i, \quad
            E^{m} = \hat A^{L_{mm}} [F^m_u; F^m_i] \quad\text{(modality graph embedding, shared ID space)} \\
        H^m_i &= \mathrm{GumbelSoftmax}_\tau(x^m_i V_m), \quad H^m_u = \mathrm{GumbelSoftmax}_\tau(R\, x^m V_m)_u
            \quad\text{(learnable hyperedges, } V_m: d_m \times n_{hyper}) \\
        G^m_i &= H^m_i (H^{m\top}_i E^{cge}_{items}), \quad G^m_u = H^m_u (H^{m\top}_i E^{cge}_{items})
            \quad\text{(global hypergraph embedding, } L_h \text{ layers)} \\
        z &= E^{cge} + \textstyle\sum_m \mathrm{norm}(E^m) + \alpha\, \mathrm{norm}(\textstyle\sum_m G^m),
            \qquad y(u, i) = \langle z_u, z_i \rangle

    Loss: ``BPR + cl_weight * L_hcl + reg_weight * EmbLoss(z_u, z_pos, z_neg)``; ``L_hcl`` contrasts the
    hypergraph embeddings of each pair of modalities (users of the batch against all users, positive items
    against all items, summed over the batch, temperature ``tau``). Hyperedge dropout (``1 - keep_rate``) and
    Gumbel noise apply in training; evaluation uses the noise-free softmax so rankings are deterministic.
    (The released code assigns the text user-hyperedges to the image ones; here each modality keeps its own.)

    Args:
        embedding_dim: d (also the modality projection size).
        n_ui_layers, n_mm_layers, n_hyper_layer: propagation depths of the three parts.
        hyper_num: number of hyperedges per modality.
        keep_rate: hyperedge dropout keep probability.
        alpha: weight of the global embedding.
        cl_weight, reg_weight, tau: loss weights and temperature.
        modalities, missing_features: as for the other multimodal models.
        backend: ``pyg`` or ``dgl``, the graph library of the LightGCN layers.
    """

    def __init__(self, dataset: RecDataset, *, embedding_dim: int, n_ui_layers: int, n_mm_layers: int,
                 n_hyper_layer: int, hyper_num: int, keep_rate: float, alpha: float, cl_weight: float,
                 reg_weight: float, tau: float, modalities: list[str] | None, missing_features: str, backend: str):
        super().__init__(dataset.n_users, dataset.n_items)
        features = item_modalities(dataset, "LGMRec", modalities, missing_features)
        self.modalities = list(features)
        self.n_mm_layers, self.n_hyper_layer = n_mm_layers, n_hyper_layer
        self.keep_rate, self.alpha, self.cl_weight, self.reg_weight, self.tau = (
            keep_rate, alpha, cl_weight, reg_weight, tau)
        d = embedding_dim

        self.user_emb = id_embedding(self.n_users, d)
        self.item_emb = id_embedding(self.n_items, d)
        for m, x in features.items():
            self.register_buffer(f"x_{m}", torch.from_numpy(x), persistent=False)
        self.projections = nn.ParameterDict({m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(x.shape[1], d)))
                                             for m, x in features.items()})
        self.hyperedges = nn.ParameterDict({m: nn.Parameter(nn.init.xavier_uniform_(
            torch.empty(x.shape[1], hyper_num))) for m, x in features.items()})

        adj = normalized_bipartite_adjacency(dataset.train)
        self.adj = DeviceCSR(adj)
        r = sp.csr_matrix(dataset.train, dtype=np.float32)
        self.r = DeviceCSR(r)
        self.r_mean = DeviceCSR(row_mean(dataset.train))                # mean over the user's items
        self.propagate = lightgcn_propagation(backend, n_ui_layers)

    def _assign(self, logits: Tensor) -> Tensor:
        """Soft hyperedge memberships: Gumbel-softmax (training, with dropout) or softmax (evaluation)."""
        if self.training:
            return F.dropout(F.gumbel_softmax(logits, tau=self.tau, dim=1, hard=False), 1 - self.keep_rate)
        return torch.softmax(logits / self.tau, dim=1)

    def representations(self) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
        """``z`` ``[n_users + n_items, d]`` and the hypergraph embeddings ``{m: (users, items)}``."""
        adj = self.adj.matrix(self.item_emb.device)
        cge = self.propagate(torch.cat([self.user_emb, self.item_emb]), self.adj)
        cge_items = cge[self.n_users:]
        local, hyper = cge, {}
        for m in self.modalities:
            x = getattr(self, f"x_{m}")
            items = x @ self.projections[m]                                                      # [I, d]
            h = torch.cat([self.r_mean @ items, items])
            for _ in range(self.n_mm_layers):
                h = spmm(adj, h)
            local = local + F.normalize(h, dim=1)
            item_logits = x @ self.hyperedges[m]                                                 # [I, n_hyper]
            user_logits = self.r @ item_logits                                                    # [U, n_hyper]
            hi, hu = self._assign(item_logits), self._assign(user_logits)
            gi = cge_items
            for _ in range(self.n_hyper_layer):
                latent = hi.T @ gi                                                               # [n_hyper, d]
                gi, gu = hi @ latent, hu @ latent
            hyper[m] = (gu, gi)
        global_ = sum(torch.cat(hyper[m]) for m in self.modalities)
        return local + self.alpha * F.normalize(global_, dim=1), hyper

    def forward(self) -> tuple[Tensor, Tensor]:
        z, _ = self.representations()
        return z[: self.n_users], z[self.n_users:]

    def hypergraph_contrast(self, hyper: dict[str, tuple[Tensor, Tensor]], users: Tensor, items: Tensor) -> Tensor:
        """Sum over modality pairs ``(a, b)`` of InfoNCE from ``a``'s to ``b``'s hypergraph embeddings (users
        of the batch against all users, items against all items), summed over the batch."""
        total = users.new_zeros((), dtype=torch.float32)
        for a, b in itertools.combinations(self.modalities, 2):
            for side, idx in ((0, users), (1, items)):
                anchor = F.normalize(hyper[a][side][idx], dim=1)
                logits = anchor @ F.normalize(hyper[b][side], dim=1).T / self.tau               # [B, n]
                total = total + F.cross_entropy(logits, idx, reduction="sum")
        return total

    def train_step(self, batch: dict[str, Tensor]) -> TrainingStep:
        z, hyper = self.representations()
        users, pos, neg = batch["user"], batch["pos"], batch["neg"]
        u, p, n = z[users], z[pos + self.n_users], z[neg + self.n_users]
        def terms() -> dict[str, Tensor]:
            reg = embedding_norm_penalty(u, p, n)
            return {"reg": reg, "hcl": self.hypergraph_contrast(hyper, users, pos)}
        return TrainingStep({"": (u, p, n)}, terms,
                            lambda r, t: r[""] + self.cl_weight * t["hcl"] + self.reg_weight * t["reg"])

    @torch.no_grad()
    def scorer(self) -> Scorer:
        return EmbeddingScorer(*self())
