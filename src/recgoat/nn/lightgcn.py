"""LightGCN propagation."""
from __future__ import annotations

from torch import Tensor

from recgoat.graphs.csr import DeviceCSR, spmm
from recgoat.nn.part import Part


class LightGCNPropagation(Part):
    r"""Parameter-free propagation over a normalised graph, averaged over layers (He et al., 2020):

    .. math::
        E^{(l+1)} = \hat{A} E^{(l)}, \qquad E = \frac{1}{L+1} \sum_{l=0}^{L} E^{(l)}

    with :math:`\hat{A} = D^{-1/2} A D^{-1/2}` (symmetric, so it is its own transpose for the gradient).

    Args:
        n_layers: L.

    Shapes: ``x`` ``[n_nodes, d]``, ``graph`` a :class:`DeviceCSR` of :math:`\hat{A}` -> ``[n_nodes, d]``.
    """

    def __init__(self, n_layers: int):
        super().__init__()
        if n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {n_layers}")
        self.n_layers = n_layers

    def forward(self, x: Tensor, graph: DeviceCSR) -> Tensor:
        adj = graph.matrix(x.device)
        out = x
        h = x
        for _ in range(self.n_layers):
            h = spmm(adj, h)
            out = out + h
        return out / (self.n_layers + 1)

    def extra_repr(self) -> str:
        return f"n_layers={self.n_layers}"
