"""Adaptive fusion of the ID and aligned modality item representations."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AdaptiveFusion(nn.Module):
    r"""``z_i = normalize(dropout(LayerNorm(w_id z^id_i + sum_m w_m z~^m_i)))`` with learned,
    unconstrained scalar weights (initialised from ``init``; the authors start at id 0.15,
    image 0.05, text 0.8). With ``id_residual`` the ID part bypasses LayerNorm and dropout:

    .. math::
        z_i = \mathrm{normalize}\big(w_{id} z^{id}_i + \mathrm{dropout}(\mathrm{LayerNorm}(\textstyle\sum_m w_m
        \tilde z^m_i))\big)

    Args:
        names: ``["id", <modality>, ...]`` in the order the inputs are given.
        dim: d.
        init: initial weight per name (the authors' ``{id: 0.15, text: 0.8, image: 0.05}``); names not listed
            (e.g. an audio modality) start at ``default_init``; names of absent modalities are ignored.
        default_init: the initial weight of the modalities ``init`` does not name (no default: ``recgoat``: 0,
            ``recgoat_spec``: 0.5).
        dropout: dropout after LayerNorm (method.md: 0.1). No default: the presets differ (``recgoat``: 0,
            ``recgoat_spec``: 0.1).
        normalize: the final L2 normalisation of method.md. ``False`` keeps the LayerNorm output's norm, so an
            item's score ``<z_u, z_i>`` can grow with ``||z_i||`` as LightGCN's does. No default, as ``dropout``.
        layer_norm: the LayerNorm of method.md. LayerNorm rescales every item to the same norm
            (``sqrt(d)`` times its gain), so with ``normalize=False`` the item norm still carries no popularity;
            ``False`` leaves the weighted sum as it is (design option).
        id_residual: add the ID part after LayerNorm and dropout, which then act on the modality parts only
            (design option). The ID branch's output, and with it LightGCN's item norm (popularity), reaches the
            score unchanged, as in MGCN and FREEDOM, whose final item is the ID embedding plus a modality part.
        learn_weights: learn the weights (method.md); ``False`` keeps them at ``init`` (design option), so no loss
            term can move the ranking towards a modality by raising its weight.

    Shapes:
        input: ``{name: [n, d]}`` for every name; output ``[n, d]``.
    """

    def __init__(self, names: list[str], dim: int, init: dict[str, float], *, default_init: float,
                 dropout: float, normalize: bool, layer_norm: bool, id_residual: bool, learn_weights: bool):
        super().__init__()
        init = dict(init)
        self.names = list(names)
        self.weights = nn.Parameter(torch.tensor([float(init.get(n, default_init)) for n in self.names]),
                                    requires_grad=learn_weights)
        self.norm = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.dropout = dropout
        self.normalize = normalize
        self.id_residual = id_residual

    def forward(self, parts: dict[str, Tensor]) -> Tensor:
        # parts: {name: [n, d]} -> [n, d]
        stacked = torch.stack([parts[n] for n in self.names])            # [M+1, n, d]
        weighted = self.weights[:, None, None] * stacked
        if self.id_residual:
            id_at = self.names.index("id")
            modal = torch.cat([weighted[:id_at], weighted[id_at + 1:]]).sum(0)
            fused = weighted[id_at] + F.dropout(self.norm(modal), self.dropout, self.training)
        else:
            fused = F.dropout(self.norm(weighted.sum(0)), self.dropout, self.training)
        return F.normalize(fused, dim=-1) if self.normalize else fused

    def weight_dict(self) -> dict[str, float]:
        return {n: float(w) for n, w in zip(self.names, self.weights.detach().cpu(), strict=True)}

    def extra_repr(self) -> str:
        return (f"names={self.names}, dropout={self.dropout}, normalize={self.normalize}, "
                f"id_residual={self.id_residual}, learn_weights={self.weights.requires_grad}")
