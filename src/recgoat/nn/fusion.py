"""Adaptive fusion of the ID and aligned modality item representations."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recgoat.nn.part import Part


class AdaptiveFusion(Part):
    r"""The method's fusion, with learned, unconstrained scalar weights:

    .. math::
        z_i = \mathrm{normalize}\big(\mathrm{dropout}(\mathrm{LayerNorm}(w_{id} z^{id}_i + \textstyle\sum_m w_m
        \tilde z^m_i))\big)

    Args:
        names: ``["id", <modality>, ...]`` in the order the inputs are given.
        dim: d.
        init: initial weight per name (the authors' ``{id: 0.15, text: 0.8, image: 0.05}``); names not listed
            (e.g. an audio modality) start at ``default_init``; names of absent modalities are ignored.
        default_init: the initial weight of the modalities ``init`` does not name.
        dropout: dropout after LayerNorm (method.md: 0.1).
        normalize: the final L2 normalisation of method.md. ``False`` keeps the item's norm, so an item's score
            ``<z_u, z_i>`` can grow with ``||z_i||`` as LightGCN's does (design option).
        layer_norm: the LayerNorm of method.md. LayerNorm rescales every item to the same norm (``sqrt(d)`` times
            its gain), so with ``normalize=False`` the item norm still carries no popularity (design option).

    Shapes:
        input: ``{name: [n, d]}`` for every name; output ``[n, d]``. Logs each weight as ``fusion_w_<name>``.
    """

    def __init__(self, names: list[str], dim: int, *, init: dict[str, float], default_init: float, dropout: float,
                 normalize: bool, layer_norm: bool):
        super().__init__()
        init = dict(init)
        self.names = list(names)
        self.weights = nn.Parameter(torch.tensor([float(init.get(n, default_init)) for n in self.names]))
        self.norm = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.dropout = dropout
        self.normalize = normalize

    def forward(self, parts: dict[str, Tensor]) -> Tensor:
        # parts: {name: [n, d]} -> [n, d]
        stacked = torch.stack([parts[n] for n in self.names])            # [M+1, n, d]
        fused = F.dropout(self.norm((self.weights[:, None, None] * stacked).sum(0)), self.dropout, self.training)
        return F.normalize(fused, dim=-1) if self.normalize else fused

    def logged_values(self) -> dict[str, Tensor]:
        return {f"fusion_w_{name}": w for name, w in zip(self.names, self.weights.detach(), strict=True)}

    def extra_repr(self) -> str:
        return f"names={self.names}, dropout={self.dropout}, normalize={self.normalize}"
