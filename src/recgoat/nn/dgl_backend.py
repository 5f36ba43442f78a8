"""DGL versions of recgoat's graph layers. Imported only through :mod:`recgoat.nn.backends` with
``backend="dgl"``; nothing else in the package imports DGL."""
from __future__ import annotations

import dgl
import torch
from dgl.nn import GATConv, GraphConv
from torch import Tensor, nn

from recgoat.graphs.csr import DeviceCSR
from recgoat.nn.fused_gat import FusedGATConv, edge_dropout
from recgoat.nn.lightgcn import LightGCNPropagation

# DGL's GATConv parameter names -> PyG's (the names checkpoints carry)
_TO_PYG = {"fc.weight": "lin.weight", "attn_l": "att_src", "attn_r": "att_dst", "bias": "bias"}
_TO_DGL = {v: k for k, v in _TO_PYG.items()}


def _edge_lists(graph) -> tuple[Tensor, Tensor, int | None]:
    """(source, target, n) of a :class:`DeviceCSR` graph or a PyG ``edge_index`` ``[2, E]``, in the same edge order."""
    if isinstance(graph, DeviceCSR):
        edges = graph.edges()
        return edges.col, edges.row, edges.num_nodes
    return graph[0], graph[1], None


class _EdgeDropout(nn.Module):
    """:func:`edge_dropout` on DGL's ``[E, H, 1]`` attention, drawn in the fused layer's ``[H, E]`` layout and
    edge order, so that a seeded run drops the same coefficients under either backend."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, alpha: Tensor) -> Tensor:
        return edge_dropout(alpha.squeeze(-1).T, self.p, self.training).T.unsqueeze(-1)


class DGLGATConv(GATConv):
    r"""``dgl.nn.GATConv`` as a drop-in for the PyG layer: the same computation
    (:math:`\alpha_{ij} = \mathrm{softmax}_j(\mathrm{LeakyReLU}(a_s^\top \Theta x_j + a_d^\top \Theta x_i))`,
    heads concatenated, bias), DGL's ``attn_l``/``attn_r`` being PyG's ``att_src``/``att_dst``; the state
    dict uses PyG's names (``lin.weight``, ``att_src``, ``att_dst``, ``bias``), so weights load across backends.
    The DGL graph is built once per graph and device from the same edge list, in the same edge order.
    """

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, negative_slope: float = 0.2,
                 dropout: float = 0.0):
        rng = torch.random.get_rng_state()
        super().__init__(in_channels, out_channels, heads, feat_drop=0.0, attn_drop=dropout,
                         negative_slope=negative_slope, residual=False, activation=None,
                         allow_zero_in_degree=True, bias=True)
        # initialise exactly as the PyG layer does, drawing the same random numbers, so that a seeded run
        # starts from the same weights under either backend
        torch.random.set_rng_state(rng)
        reference = FusedGATConv(in_channels, out_channels, heads=heads, negative_slope=negative_slope)
        with torch.no_grad():
            for dgl_name, pyg_name in _TO_PYG.items():
                self.get_parameter(dgl_name).copy_(reference.get_parameter(pyg_name))
        self.attn_drop = _EdgeDropout(dropout)
        self.heads, self.out_channels = heads, out_channels
        self._dgl_graph: tuple[object, torch.device, dgl.DGLGraph] | None = None
        self._register_state_dict_hook(_rename_to_pyg)
        self._register_load_state_dict_pre_hook(_rename_to_dgl)

    def dgl_graph(self, graph, device: torch.device) -> dgl.DGLGraph:
        if self._dgl_graph is None or self._dgl_graph[0] is not graph or self._dgl_graph[1] != device:
            src, dst, n = _edge_lists(graph)
            g = dgl.graph((src.to(device), dst.to(device)), num_nodes=n, device=device)
            self._dgl_graph = (graph, device, g)
        return self._dgl_graph[2]

    def forward(self, x: Tensor, graph, return_attention_weights=None):  # noqa: D102
        # x: [N, in] -> [N, heads * out]
        out = super().forward(self.dgl_graph(graph, x.device), x)
        return out.reshape(x.shape[0], self.heads * self.out_channels)


def _rename_to_pyg(module, state_dict, prefix, local_metadata):
    for dgl_name, pyg_name in _TO_PYG.items():
        if prefix + dgl_name in state_dict:
            state_dict[prefix + pyg_name] = state_dict.pop(prefix + dgl_name)
    return state_dict


def _rename_to_dgl(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    for pyg_name, dgl_name in _TO_DGL.items():
        if prefix + pyg_name in state_dict and pyg_name != dgl_name:
            state_dict[prefix + dgl_name] = state_dict.pop(prefix + pyg_name)


class DGLLightGCNPropagation(LightGCNPropagation):
    r"""LightGCN propagation with ``dgl.nn.GraphConv`` (no weight, no bias, no normalisation of its own):
    each layer sums neighbours weighted by the entries of the already normalised adjacency
    :math:`\hat A`, i.e. :math:`E^{(l+1)} = \hat A E^{(l)}`; the output is the mean over layers 0..L."""

    def __init__(self, n_layers: int):
        super().__init__(n_layers)
        self.conv = GraphConv(1, 1, norm="none", weight=False, bias=False, allow_zero_in_degree=True)
        self._dgl_graph: tuple[Tensor, torch.device, dgl.DGLGraph, Tensor] | None = None

    def dgl_graph(self, adj: Tensor) -> tuple[dgl.DGLGraph, Tensor]:
        if self._dgl_graph is None or self._dgl_graph[0] is not adj:
            # out[i] = sum_j A[i, j] h[j]: an edge j -> i with weight A[i, j] for every stored entry
            rowptr, col, values = adj.crow_indices(), adj.col_indices(), adj.values()
            row = torch.repeat_interleave(torch.arange(adj.shape[0], device=adj.device), rowptr.diff().long())
            g = dgl.graph((col.long(), row), num_nodes=adj.shape[0], device=adj.device)
            self._dgl_graph = (adj, adj.device, g, values)
        return self._dgl_graph[2], self._dgl_graph[3]

    def forward(self, x: Tensor, graph: DeviceCSR) -> Tensor:
        # x: [n_nodes, d], graph: the normalised adjacency -> [n_nodes, d]
        g, weights = self.dgl_graph(graph.matrix(x.device))
        out = h = x
        for _ in range(self.n_layers):
            h = self.conv(g, h, edge_weight=weights)
            out = out + h
        return out / (self.n_layers + 1)
