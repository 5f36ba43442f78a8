"""RecGOAT's dual alignment of the modality branches with the collaborative (ID) space."""
from __future__ import annotations

from collections.abc import Iterator

import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

from recgoat.nn.cmcl import CMCL
from recgoat.nn.oat import AdaptiveTransportMap, DimensionTransport, SinkhornW1
from recgoat.nn.part import Part


class Alignment(Part):
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

    Shapes: :meth:`forward` ``[M, n_items, d]`` (the modalities stacked in ``modalities``' order),
    ``[n_items, d]`` -> ``[M, n_items, d]``; :meth:`loss_terms` reads the batch's positive items of
    ``reps["aligned_stacked"]`` ``[M, n_items, d]``, ``reps["item"]`` (the scored item) and ``reps["item_id"]``
    ``[n_items, d]``, and gives ``(name, weight, scalar)`` per term.
    """

    def __init__(self, modalities: list[str], dim: int, *, cmcl: CMCL | None, oat_map: DimensionTransport | None,
                 oat_w1: SinkhornW1 | None, detach_targets: bool):
        super().__init__()
        self.cmcl, self.oat_w1, self.detach_targets = cmcl, oat_w1, detach_targets
        self.modalities = tuple(modalities)            # the warm start's key
        self.transport, self.oat_map = oat_map, None
        if oat_map is not None:
            self.oat_map = AdaptiveTransportMap(len(modalities), dim)

    def forward(self, modal: Tensor, item_id: Tensor) -> Tensor:
        if self.oat_map is None:
            return modal
        with record_function("recgoat.oat_map"):  # every modality's plan in one batched solve; training steps
            # carry the potentials to the next step, evaluations only read them (the same scores every time)
            plan = self.transport.plan(modal, item_id, key=self.modalities, keep=self.training)
            return self.oat_map(modal, plan)

    def loss_terms(self, batch: dict[str, Tensor], reps: dict) -> Iterator[tuple[str, float, Tensor]]:
        b = batch["items"]   # the batch's distinct items (training/sampling.py), every term's points
        aligned, fused, item_id = reps["aligned_stacked"][:, b], reps["item"][b], reps["item_id"][b]
        if self.detach_targets:
            fused, item_id = fused.detach(), item_id.detach()
        aligned = F.normalize(aligned, dim=-1)  # both terms compare unit vectors
        if self.cmcl is not None:
            yield "cmcl", self.cmcl.weight, self.cmcl(aligned, F.normalize(fused, dim=-1), unit=True)
        if self.oat_w1 is not None:
            with record_function("recgoat.oat_w1"):
                w1 = self.oat_w1(aligned, F.normalize(item_id, dim=-1), unit=True)
            yield "oat_w1", self.oat_w1.weight, w1
