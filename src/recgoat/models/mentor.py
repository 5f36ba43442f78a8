"""MENTOR (Xu et al., AAAI 2025): multi-level self-supervised learning for multimodal recommendation."""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recgoat.data import RecDataset
from recgoat.graphs import normalized_bipartite_adjacency
from recgoat.graphs.csr import DeviceCSR, spmm
from recgoat.graphs.knn import KNNGraphs, KNNSearch
from recgoat.models.base import EmbeddingScorer, Recommender, Scorer, TrainingStep
from recgoat.models.side_features import item_modalities, mixing_weights
from recgoat.nn import feature_tables, info_nce


class MentorBranch(nn.Module):
    r"""One of MENTOR's graph branches: a user preference table and the projected item input, L2-normalised and
    propagated over the user-item graph, the layers summed:

    .. math::
        x = \mathrm{norm}\big([P;\; W_2\, \mathrm{LeakyReLU}(W_1 f + b_1) + b_2]\big), \qquad
        h^{(l+1)} = \hat A h^{(l)} + \epsilon\, \mathrm{sign}(\hat A h^{(l)}) \odot \mathrm{norm}(\eta^{(l)}),
        \qquad \mathrm{out} = \textstyle\sum_{l=0}^{L} h^{(l)}, \; h^{(0)} = x

    with :math:`\eta \sim U[0, 1)` per entry when ``noise`` > 0 (SimGCL's perturbation), none otherwise.

    Args:
        n_users: rows of the preference table P (Xavier-normal initialised).
        in_dim: width of the item input f.
        dim: d (the hidden layer has 4d units).

    Shapes: ``items`` ``[n_items, in_dim]``, ``adj`` sparse ``[n_users + n_items]^2`` -> ``[n_users + n_items, d]``.
    """

    def __init__(self, n_users: int, in_dim: int, dim: int):
        super().__init__()
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, dim)))
        self.mlp = nn.Sequential(nn.Linear(in_dim, 4 * dim), nn.LeakyReLU(), nn.Linear(4 * dim, dim))

    def forward(self, items: Tensor, adj: Tensor, n_layers: int, noise: float) -> Tensor:
        h = F.normalize(torch.cat([self.preference, self.mlp(items)]))
        out = h
        for _ in range(n_layers):
            h = spmm(adj, h)
            if noise > 0:
                h = h + torch.sign(h) * F.normalize(torch.rand_like(h), dim=-1) * noise
            out = out + h
        return out


def gaussian_gap(a: Tensor, b: Tensor) -> Tensor:
    """MENTOR's distribution alignment of two representation tables: ``|var(a) - var(b)| + |mean(a) - mean(b)|``
    over all their entries (unbiased variance)."""
    return (a.var() - b.var()).abs() + (a.mean() - b.mean()).abs()


class MENTOR(Recommender):
    r"""MENTOR on the narrow model API.

    Each modality m has a branch :math:`h^m = \mathrm{Branch}_m(x^m)` (:class:`MentorBranch`), the ID "guide" a
    branch over a learnt item table, and two more branches per modality with noise give the views of the graph
    perturbation task. With :math:`S = \sum_m w_m S_m` (binary top-k graphs, the item among its k, each
    symmetrically normalised) and :math:`a_u = \mathrm{softmax}` -initialised per-user modality weights:

    .. math::
        z_u = \big\Vert_m\, a_{u,m} h^m_u, \qquad z_i = (I + S^{L_{mm}}) \big\Vert_m h^m_i, \qquad
        y(u, i) = \langle z_u, z_i \rangle

    The guide (:math:`\Vert_m h^{id}`) and each single modality (:math:`\Vert_m h^{m'}`) make tables of the same
    shape, their items likewise passed through :math:`I + S^{L_{mm}}`.

    Loss: ``BPR / ln 2`` (the authors' base-2 log; the logged ``bpr`` is the natural one)
    ``+ reg_weight * (sum_m mean(P_m[u_b]^2) + mean(a^2))
    + align_weight * sum over pairs of {z, guide, each modality} of gaussian_gap + mask_weight_g * (InfoNCE_tau
    over all users + over all items, between the two noisy views) + mask_weight_f * feature-masking term``.
    The feature-masking term ``(1 - cos(dropout(z), W z))`` over all users and all items is computed under
    ``no_grad`` in the authors' code, so it adds to the loss value and trains nothing; it is kept so (for loss
    curves that compare), its ``W`` frozen. The authors' user-user graph is loaded and resampled each epoch but
    never used in the forward pass; it is left out.

    Args:
        embedding_dim: d of every branch (the tables are M*d wide).
        knn_k: neighbours per item in each modality's graph.
        modality_weights: mixing weights of the modality graphs (the authors' ``mm_image_weight``: image 0.1);
            as for FREEDOM.
        n_mm_layers: propagation steps over the item-item graph.
        n_ui_layers: propagation steps of each branch over the user-item graph (2 in the authors' code).
        reg_weight, align_weight, mask_weight_g, mask_weight_f: the loss weights.
        tau: temperature of the graph perturbation InfoNCE (the authors' ``temp``).
        noise: size of the perturbation (0.1 in the authors' code).
        dropout: dropout of the feature-masking term.
        modalities, missing_features, knn_search, cache_dir: as for the other multimodal models.
    """

    def __init__(self, dataset: RecDataset, *, embedding_dim: int, knn_k: int, modality_weights: dict[str, float],
                 n_mm_layers: int, n_ui_layers: int, reg_weight: float, align_weight: float, mask_weight_g: float,
                 mask_weight_f: float, tau: float, noise: float, dropout: float, modalities: list[str] | None,
                 missing_features: str, knn_search: KNNSearch, cache_dir: str | None):
        super().__init__(dataset.n_users, dataset.n_items)
        features = item_modalities(dataset, "MENTOR", modalities, missing_features)
        self.modalities = list(features)
        if tau <= 0:
            raise ValueError(f"MENTOR's tau must be > 0, got {tau}")
        self.n_mm_layers, self.n_ui_layers, self.noise, self.dropout, self.tau = (
            n_mm_layers, n_ui_layers, noise, dropout, tau)
        self.reg_weight, self.align_weight, self.mask_weight_g, self.mask_weight_f = (
            reg_weight, align_weight, mask_weight_g, mask_weight_f)
        d, n_modalities = embedding_dim, len(self.modalities)

        self.features = feature_tables(features, trainable=False)  # the authors' branches read the raw features
        self.branches = nn.ModuleDict({m: MentorBranch(self.n_users, x.shape[1], d) for m, x in features.items()})
        self.noisy = nn.ModuleList(nn.ModuleDict({m: MentorBranch(self.n_users, x.shape[1], d)
                                                  for m, x in features.items()}) for _ in range(2))
        self.item_id = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_items, d)))
        self.guide = MentorBranch(self.n_users, d, d)
        self.user_weights = nn.Parameter(torch.softmax(nn.init.xavier_normal_(torch.empty(self.n_users,
                                                                                         n_modalities, 1)), dim=1))
        self.masking = nn.Linear(n_modalities * d, n_modalities * d).requires_grad_(False)

        knn = KNNGraphs(knn_search, cache_dir)
        weights = mixing_weights(self.modalities, dict(modality_weights))
        self.item_graph = DeviceCSR(sum(w * knn.normalized(features[m], knn_k, weighted=False)
                                             for m, w in weights.items()))
        self.adj = DeviceCSR(normalized_bipartite_adjacency(dataset.train))

    def _with_items_propagated(self, users: Tensor, items: Tensor) -> Tensor:
        h = items
        for _ in range(self.n_mm_layers):
            h = self.item_graph @ h
        return torch.cat([users, items + h])                                        # [U + I, M*d]

    def _weighted(self, reps: list[Tensor]) -> Tensor:
        """The final table from one representation per modality: users weighted per modality, all concatenated."""
        users = torch.cat([self.user_weights[:, j] * r[: self.n_users] for j, r in enumerate(reps)], dim=1)
        return self._with_items_propagated(users, torch.cat([r[self.n_users:] for r in reps], dim=1))

    def _repeated(self, rep: Tensor) -> Tensor:
        """A table of the final one's shape from one representation (the guide's, or one modality's)."""
        wide = rep.repeat(1, len(self.modalities))
        return self._with_items_propagated(wide[: self.n_users], wide[self.n_users:])

    def _branches(self, branches: nn.ModuleDict, noise: float) -> list[Tensor]:
        adj = self.adj.matrix(self.item_id.device)
        return [branches[m](self.features[m], adj, self.n_ui_layers, noise) for m in self.modalities]

    def forward(self) -> tuple[Tensor, Tensor]:
        z = self._weighted(self._branches(self.branches, 0.0))
        return z[: self.n_users], z[self.n_users:]

    def train_step(self, batch: dict[str, Tensor]) -> TrainingStep:
        reps = self._branches(self.branches, 0.0)
        z = self._weighted(reps)
        users, pos, neg = batch["user"], batch["pos"] + self.n_users, batch["neg"] + self.n_users
        u = z[users]
        rankings = {"": (u, z[pos], z[neg])}

        def terms() -> dict[str, Tensor]:
            reg = sum(self.branches[m].preference[users].square().mean() for m in self.modalities) \
                + self.user_weights.square().mean()

            guide = self._repeated(self.guide(self.item_id, self.adj.matrix(z.device), self.n_ui_layers, 0.0))
            tables = [z, guide, *(self._repeated(r) for r in reps)]
            align = sum(gaussian_gap(a, b) for a, b in itertools.combinations(tables, 2))

            n1, n2 = (self._weighted(self._branches(b, self.noise)) for b in self.noisy)
            perturbation = info_nce(n1[: self.n_users], n2[: self.n_users], self.tau) \
                + info_nce(n1[self.n_users:], n2[self.n_users:], self.tau)

            with torch.no_grad():
                kept, masked = z.detach(), self.masking(z.detach())
                kept = F.dropout(kept, self.dropout, training=self.training)
                masking = (1 - F.cosine_similarity(kept[: self.n_users], masked[: self.n_users]).mean()) \
                    + (1 - F.cosine_similarity(kept[self.n_users:], masked[self.n_users:]).mean())
            return {"reg": reg, "align": align, "perturbation": perturbation, "masking": masking}

        def total(ranked: dict[str, Tensor], t: dict[str, Tensor]) -> Tensor:   # the authors' BPR is in bits: / log 2
            return ranked[""] / math.log(2) + self.reg_weight * t["reg"] + self.align_weight * t["align"] \
                + self.mask_weight_g * t["perturbation"] + self.mask_weight_f * t["masking"]
        return TrainingStep(rankings, terms, total)

    @torch.no_grad()
    def scorer(self) -> Scorer:
        return EmbeddingScorer(*self())
