"""RecGOAT's language-model branches: item modalities and users, each encoded over its kNN graph."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from recgoat.graphs.csr import DeviceCSR
from recgoat.graphs.knn import KNNGraphs
from recgoat.nn.part import Part


def _knn_graph(x: np.ndarray, knn: KNNGraphs, k: int) -> DeviceCSR:
    """The graph an encoder is given: each row's ``k`` most cosine-similar other rows, symmetrised, self-loops."""
    return DeviceCSR(knn(x, k, include_self=False, symmetric=True, self_loops=True, weighted=False))


class ModalityBranches(Part):
    r"""One branch per item modality: a projection and graph attention over the modality's item kNN graph,

    .. math::
        z^m = \mathrm{GAT}_m\big(W_m x^m + b_m;\; G^m_{ii}\big)

    :math:`G^m_{ii}`: each item's ``knn_k`` most cosine-similar items, symmetrised, with self-loops.

    Args:
        features: ``{m: [n_items, f_m]}`` item features (constants).
        dim: d.
        knn: the run's kNN graph builder.
        encoder: ``(in_dim, dim) -> module`` of one modality, called as ``encoder(x, graph)``
            (:class:`GraphAttentionEncoder`; :class:`MLPEncoder` reads no graph).
        knn_k: neighbours per item in the item-item graphs.

    Shapes: ``() -> {m: [n_items, d]}``.
    """

    def __init__(self, features: dict[str, np.ndarray], dim: int, knn: KNNGraphs, *,
                 encoder: Callable[..., nn.Module], knn_k: int):
        super().__init__()
        self.modalities = list(features)
        self.encoders = nn.ModuleDict()
        self.graphs: dict[str, DeviceCSR] = {}  # derived from the data: rebuilt on load, not checkpointed
        for m, x in features.items():
            self.register_buffer(f"x_{m}", torch.from_numpy(x), persistent=False)
            self.encoders[m] = encoder(in_dim=x.shape[1], dim=dim)
            self.graphs[m] = _knn_graph(x, knn, knn_k)

    def forward(self) -> dict[str, Tensor]:
        return {m: self.encoders[m](getattr(self, f"x_{m}"), self.graphs[m]) for m in self.modalities}


class UserLMBranch(Part):
    r"""The user LM branch: graph attention over the user-user kNN graph of the users' LM features (the embedded
    LLM preference profiles), scaled by a learned weight and added to the layer-0 user embedding:

    .. math::
        z^{llm}_u = w_{llm}\, \mathrm{GAT}\big(W_u x^u + b;\; G_{uu}\big), \qquad E^{(0)}_u = E_u + z^{llm}_u

    Args:
        features: ``[n_users, f]`` user features (constants).
        dim: d.
        knn: the run's kNN graph builder.
        encoder: ``(in_dim, dim) -> module``, called as ``encoder(x, graph)`` (:class:`GraphAttentionEncoder`;
            :class:`MLPEncoder`: no user graph).
        knn_k: neighbours per user in the user-user graph.
        init_weight: the initial :math:`w_{llm}` (method.md: a plain sum, 1).

    Shapes: ``() -> [n_users, d]``. Logs :math:`w_{llm}` as ``user_llm_w``.
    """

    def __init__(self, features: np.ndarray, dim: int, knn: KNNGraphs, *, encoder: Callable[..., nn.Module],
                 knn_k: int, init_weight: float):
        super().__init__()
        self.register_buffer("x", torch.from_numpy(features), persistent=False)
        self.encoder = encoder(in_dim=features.shape[1], dim=dim)
        self.weight = nn.Parameter(torch.tensor(float(init_weight)))
        self.graph = _knn_graph(features, knn, knn_k)

    def forward(self) -> Tensor:
        return self.weight * self.encoder(self.x, self.graph)

    def logged_values(self) -> dict[str, Tensor]:
        return {"user_llm_w": self.weight.detach()}
