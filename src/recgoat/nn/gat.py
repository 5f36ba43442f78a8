"""Feature encoders over fixed kNN graphs (projection + multi-head graph attention, PyG GATConv), their graph-free
counterpart (a per-node MLP), and graph attention as a LightGCN-style propagation."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from recgoat.graphs.csr import DeviceCSR
from recgoat.nn.backends import gat_conv
from recgoat.nn.part import Part


class GraphAttentionEncoder(nn.Module):
    r"""Encodes node features over a graph:

    .. math::
        h^{(0)}_i = W x_i + b, \qquad
        h^{(l+1)}_i = \big\Vert_{k=1}^{K} \sum_{j \in \mathcal{N}(i)} \alpha^{k}_{ij} \Theta^{k} h^{(l)}_j,
        \qquad \alpha^{k}_{ij} = \mathrm{softmax}_j\big(
            \mathrm{LeakyReLU}(a^{k\top}[\Theta^k h_i \Vert \Theta^k h_j])\big)

    (PyG ``GATConv``; K heads of ``dim / K`` channels concatenated to ``dim``; the graph carries its
    own self-loops). Given a :class:`DeviceCSR` the layers run the faster CSR computation of
    :class:`FusedGATConv` (same parameters and results); given an ``edge_index``, PyG's own.
    ELU between layers, none after the last. :class:`MLPEncoder` is the same encoder without the graph.

    Args:
        in_dim: feature dimension.
        dim: output dimension d (divisible by ``heads``).
        n_layers: attention layers.
        heads: attention heads K.
        dropout: dropout of the attention coefficients (and of features between layers).
        negative_slope: LeakyReLU slope of the attention scores.
        backend: ``pyg`` (default; :class:`FusedGATConv` on a :class:`DeviceCSR`) or ``dgl``
            (``dgl.nn.GATConv``, optional; see :mod:`recgoat.nn.backends`). Same parameters either way.

    Shapes: ``x`` ``[n, in_dim]``, ``graph`` a :class:`DeviceCSR` or an ``edge_index`` ``[2, E]`` (source, target)
    -> ``[n, dim]``.
    """

    def __init__(self, in_dim: int, dim: int, *, n_layers: int, heads: int, dropout: float, negative_slope: float,
                 backend: str):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.dropout = dropout
        self.proj = nn.Linear(in_dim, dim)
        self.layers = nn.ModuleList([
            gat_conv(backend, dim, dim // heads, heads=heads, negative_slope=negative_slope, dropout=dropout)
            for _ in range(n_layers)])

    def forward(self, x: Tensor, graph: DeviceCSR | Tensor) -> Tensor:
        h = self.proj(x)
        for i, layer in enumerate(self.layers):
            h = layer(h, graph)
            if i < len(self.layers) - 1:
                h = F.dropout(F.elu(h), self.dropout, self.training)
        return h


class MLPEncoder(nn.Module):
    r"""Encodes each node alone, the graph given to it unread (the "w/o graph attention" ablations):

    .. math::
        h^{(0)}_i = W x_i + b, \qquad h^{(l+1)}_i = W_l\, \mathrm{ELU}(h^{(l)}_i) + b_l

    with dropout and ELU between layers, as :class:`GraphAttentionEncoder`, whose place it takes.

    Args:
        in_dim: feature dimension.
        dim: output dimension d.
        n_layers: layers after the projection.
        dropout: dropout of the features between layers.

    Shapes: ``x`` ``[n, in_dim]``, ``graph`` (any; not read) -> ``[n, dim]``.
    """

    def __init__(self, in_dim: int, dim: int, *, n_layers: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.proj = nn.Linear(in_dim, dim)
        self.layers = nn.ModuleList([nn.Linear(dim, dim) for _ in range(n_layers)])

    def forward(self, x: Tensor, graph: object) -> Tensor:
        h = self.proj(x)
        for i, layer in enumerate(self.layers):
            h = layer(F.elu(h))
            if i < len(self.layers) - 1:
                h = F.dropout(F.elu(h), self.dropout, self.training)
        return h


class AttentionPropagation(Part):
    r"""LightGCN's layer-averaged propagation with graph attention in place of the fixed normalisation
    (RecGOAT's design option "graph attention on ``G_ui`` instead of LightGCN"):

    .. math::
        E^{(l+1)} = \mathrm{GAT}_l\big(E^{(l)}; \mathcal{G}\big), \qquad
        E = \frac{1}{L+1} \sum_{l=0}^{L} E^{(l)}

    Each layer is a multi-head ``GATConv`` (K heads of ``dim / K`` channels concatenated to ``dim``)
    over the graph as given (the user-item graph has no self-loops, as in LightGCN; a node with no
    in-edges gets only the bias). No non-linearity between layers, as in LightGCN.

    Args:
        dim: d (divisible by ``heads``).
        n_layers: L.
        heads: attention heads K.
        dropout: dropout of the attention coefficients.
        negative_slope: LeakyReLU slope of the attention scores.
        backend: ``pyg`` or ``dgl`` (see :mod:`recgoat.nn.backends`).

    Shapes: ``x`` ``[n_nodes, d]``, ``graph`` a :class:`DeviceCSR` (its edges are read, not its values) ->
    ``[n_nodes, d]``.
    """

    def __init__(self, dim: int, *, n_layers: int, heads: int, dropout: float, negative_slope: float, backend: str):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.layers = nn.ModuleList([
            gat_conv(backend, dim, dim // heads, heads=heads, negative_slope=negative_slope, dropout=dropout)
            for _ in range(n_layers)])

    def forward(self, x: Tensor, graph: DeviceCSR) -> Tensor:
        out = h = x
        for layer in self.layers:
            h = layer(h, graph)
            out = out + h
        return out / (len(self.layers) + 1)
