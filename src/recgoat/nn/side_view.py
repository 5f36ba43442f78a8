"""MGCN's side view of the ID embeddings (Yu et al., ACM MM 2023), shared by MGCN and RecGOAT's ID branch."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from recgoat.graphs.csr import DeviceCSR
from recgoat.graphs.knn import KNNGraphs
from recgoat.nn.cmcl import info_nce
from recgoat.nn.part import Part


def feature_tables(features: dict[str, np.ndarray], trainable: bool) -> nn.ParameterDict:
    """The raw feature matrices as parameters: fine-tuned with the model when ``trainable`` (FREEDOM's and
    MGCN's released code do), constants in the state dict otherwise."""
    return nn.ParameterDict({m: nn.Parameter(torch.from_numpy(x.copy()), requires_grad=trainable)
                             for m, x in features.items()})


class FeatureGates(nn.Module):
    r"""MGCN's gate inputs from the raw item features, :math:`g^m = W_1^m x^m + b^m`.

    Args:
        features: ``{m: [n_items, f_m]}`` raw item features.
        dim: d.
        finetune_features: train the raw feature matrices too (MGCN's authors do).

    Shapes: ``() -> {m: [n_items, d]}``.
    """

    def __init__(self, features: dict[str, np.ndarray], dim: int, finetune_features: bool):
        super().__init__()
        self.features = feature_tables(features, trainable=finetune_features)
        self.projections = nn.ModuleDict({m: nn.Linear(x.shape[1], dim) for m, x in features.items()})

    def forward(self) -> dict[str, Tensor]:
        return {m: self.projections[m](x) for m, x in self.features.items()}


class ViewContrast(nn.Module):
    r"""MGCN's self-supervised term between the side view and the user-item view, over a batch's rows (duplicates
    included, as MGCN: a popular item is its own negative as often as it occurs):

    .. math::
        \mathcal{L}_{view} = \mathrm{InfoNCE}_\tau(E^{side}_{i_b}, E^{ui}_{i_b}) + \mathrm{InfoNCE}_\tau(E^{side}_{u_b},
        E^{ui}_{u_b})

    Args:
        weight: the term's multiplier in the model's loss (MGCN's ``cl_loss``).
        tau: InfoNCE temperature.

    Shapes: the batch's rows of each view, ``side_items``, ``ui_items``, ``side_users``, ``ui_users`` ``[B, d]`` ->
    scalar (unweighted).
    """

    def __init__(self, weight: float, tau: float):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"view contrast tau must be > 0, got {tau}")
        self.weight, self.tau = weight, tau

    def forward(self, side_items: Tensor, ui_items: Tensor, side_users: Tensor, ui_users: Tensor) -> Tensor:
        return info_nce(side_items, ui_items, self.tau) + info_nce(side_users, ui_users, self.tau)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, tau={self.tau}"


class SideView(Part):
    r"""MGCN's side view: content-gated ID embeddings over each modality's item kNN graph, users from their items,
    mixed by attention and by the user-item view's preference gates.

    .. math::
        \dot E^m_i = E_i \odot \sigma(W_2^m g^m_i + b_2^m), \quad
        \bar E^m = [\hat R\, S_m^{L} \dot E^m;\; S_m^{L} \dot E^m], \quad
        E^{c} = \textstyle\sum_m \mathrm{softmax}_m(q^\top \tanh(W_q \bar E^m + b_q))\, \bar E^m, \\
        E^{side} = \tfrac{1}{M+1}\big(E^{c} + \textstyle\sum_m \sigma(W_p^m E^{ui} + b_p^m)
            \odot (\bar E^m - E^{c})\big)

    :math:`S_m` is the directed top-``knn_k`` cosine graph of modality ``m`` (the item itself among its ``k``,
    similarity-weighted), symmetrically normalised; :math:`\hat R = D_u^{-1/2} R D_i^{-1/2}`.

    Args:
        features: ``{m: [n_items, f_m]}`` item features (for the kNN graphs, and for ``gates``).
        dim: d.
        r_hat: :math:`\hat R`, ``[n_users, n_items]`` (scipy sparse).
        knn: the run's kNN graph builder.
        knn_k: neighbours per item in each modality's graph.
        n_layers: L, propagation steps over each item-item graph.
        gates: ``(features, dim) -> module`` giving the gate inputs :math:`g^m` (:class:`FeatureGates`, MGCN's), or
            ``None``: the gate inputs are given to :meth:`forward` (RecGOAT's aligned modality branches).
        contrast: the :class:`ViewContrast` term between this view and the user-item view, or ``None``.

    Shapes: ``item_emb`` ``[n_items, d]``, ``content`` ``[n_users + n_items, d]`` (the user-item view, users first),
    ``given`` ``{m: [n_items, d]}`` -> ``[n_users + n_items, d]``. In a composed model its loss term (``view_cl``)
    reads ``reps["views"]``: ``{"ui": (users, items), "side": (users, items)}``.
    """

    def __init__(self, features: dict[str, np.ndarray], dim: int, r_hat: sp.spmatrix, knn: KNNGraphs, *, knn_k: int,
                 n_layers: int, gates, contrast: ViewContrast | None):
        super().__init__()
        self.modalities, self.n_layers, d = list(features), n_layers, dim
        self.gates = gates(features=features, dim=dim) if gates is not None else None
        self.purifiers = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in self.modalities})
        self.preferences = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in self.modalities})
        self.query_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self.item_graphs = {m: DeviceCSR(knn.normalized(x, knn_k, weighted=True)) for m, x in features.items()}
        self.r_hat = DeviceCSR(r_hat)
        self.contrast = contrast

    def loss_terms(self, batch: dict[str, Tensor], reps: dict) -> Iterator[tuple[str, float, Tensor]]:
        if self.contrast is not None:
            (ui_users, ui_items), (side_users, side_items) = reps["views"]["ui"], reps["views"]["side"]
            u, i = batch["user"], batch["pos"]
            yield "view_cl", self.contrast.weight, self.contrast(side_items[i], ui_items[i], side_users[u], ui_users[u])

    def forward(self, item_emb: Tensor, content: Tensor, given: dict[str, Tensor] | None = None) -> Tensor:
        gate_inputs = self.gates() if self.gates is not None else given
        if gate_inputs is None:
            raise ValueError("a side view without gates of its own must be given its gate inputs")
        per_modality = []
        for m in self.modalities:
            items = item_emb * self.purifiers[m](gate_inputs[m])                                # [I, d]
            for _ in range(self.n_layers):
                items = self.item_graphs[m] @ items
            per_modality.append(torch.cat([self.r_hat @ items, items]))                          # [U + I, d]
        stacked = torch.stack(per_modality, dim=1)                                              # [N, M, d]
        attention = torch.softmax(self.query_common(stacked), dim=1)                            # [N, M, 1]
        common = (attention * stacked).sum(1)                                                   # [N, d]
        specific = sum(self.preferences[m](content) * (stacked[:, j] - common)
                       for j, m in enumerate(self.modalities))
        return (common + specific) / (len(self.modalities) + 1)
