"""RecGOAT's dual alignment of the modality branches with the collaborative (ID) space."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from recgoat.nn.cmcl import CMCL
from recgoat.nn.oat import AdaptiveTransportMap, DimensionTransport, SinkhornW1


class Alignment(nn.Module):
    r"""Maps each modality towards the ID space (OAT map) and gives the alignment terms of the loss:

    .. math::
        \tilde z^m = z^m (d\,T^*_m + \Delta^m), \qquad
        \mathcal{L}_{align} = \lambda_{cl}\, \mathrm{CMCL}(\{\tilde z^m_B\}, z_B)
            + \lambda_{ot} \textstyle\sum_m S_\varepsilon(\tilde z^m_B, z^{id}_B)

    :math:`T^*_m`: the entropic transport plan between the dimensions of :math:`z^m` and :math:`z^{id}` (no gradient),
    :math:`\Delta^m` a learned ``d x d`` correction; :math:`z` the fused item, :math:`z^{id}` the ID branch's item,
    :math:`B` the batch's distinct positive items.

    Args:
        modalities: the item modalities' names.
        dim: d.
        cmcl: the instance-level term (:class:`CMCL`), or ``None``.
        oat_map: the dimension-level transport solver (:class:`DimensionTransport`) of the map, or ``None``
            (:math:`\tilde z^m = z^m`).
        oat_w1: the distribution-level term (:class:`SinkhornW1`), or ``None``.
        detach_targets: the targets :math:`z, z^{id}` get no gradient from the terms, so alignment moves the modality
            branches only, never the collaborative space (design option; method.md: both sides move).

    Shapes: :meth:`forward` ``{m: [n_items, d]}``, ``[n_items, d]`` -> ``{m: [n_items, d]}``; :meth:`loss_terms`
    ``{m: [B, d]}``, ``[B, d]``, ``[B, d]`` -> ``(name, weight, scalar)`` per term.
    """

    def __init__(self, modalities: list[str], dim: int, *, cmcl: CMCL | None, oat_map: DimensionTransport | None,
                 oat_w1: SinkhornW1 | None, detach_targets: bool):
        super().__init__()
        self.cmcl, self.oat_w1, self.detach_targets = cmcl, oat_w1, detach_targets
        self.transport, self.oat_map = oat_map, None
        if oat_map is not None:
            self.oat_map = nn.ModuleDict({m: AdaptiveTransportMap(dim) for m in modalities})

    def forward(self, modal: dict[str, Tensor], item_id: Tensor) -> dict[str, Tensor]:
        if self.oat_map is None:
            return modal
        with record_function("recgoat.oat_map"):  # every modality's plan in one batched solve
            names = tuple(modal)
            plans = self.transport.plan(torch.stack([modal[m] for m in names]), item_id, key=names)
            return {m: self.oat_map[m](modal[m], plan) for m, plan in zip(names, plans, strict=True)}

    def loss_terms(self, aligned: dict[str, Tensor], fused: Tensor,
                   item_id: Tensor) -> Iterator[tuple[str, float, Tensor]]:
        """``(name, weight, unweighted value)`` of each alignment term, computed as it is taken."""
        if self.detach_targets:
            fused, item_id = fused.detach(), item_id.detach()
        if self.cmcl is not None:
            yield "cmcl", self.cmcl.weight, self.cmcl(aligned, fused)
        if self.oat_w1 is not None:
            with record_function("recgoat.oat_w1"):
                w1 = self.oat_w1(list(aligned.values()), item_id)
            yield "oat_w1", self.oat_w1.weight, w1
