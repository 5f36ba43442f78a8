"""Graph attention on a fixed CSR graph: the same layer as PyG's ``GATConv``, computed faster on CPU.

PyG's ``GATConv`` materialises the ``[E, heads, channels]`` message tensor and scatters it; on a
Baby-sized item kNN graph (7,050 nodes, 165k edges, 8 heads x 8 channels) one forward + backward
measured 0.22 s here. This layer keeps PyG's parameters (``lin``, ``att_src``, ``att_dst``,
``bias`` — a checkpoint loads under either) and computes the aggregation as one CSR
sparse-dense product per head, with a hand-written backward: the gradient w.r.t. the features is
the transposed product (edge permutation precomputed once), and w.r.t. the attention values an
edge-wise dot product. Only the edge-level attention (``[E, heads]``) goes through autograd.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv
from torch_geometric.utils import softmax


class CSRGraph(nn.Module):
    """A fixed graph in CSR form by target node (and the transposed order), as buffers.

    Args:
        edge_index: ``[2, E]`` (source, target), PyG's convention.
        num_nodes: n.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int):
        super().__init__()
        src, dst = edge_index
        order = torch.argsort(dst * num_nodes + src)                   # CSR by target
        src, dst = src[order], dst[order]
        counts = torch.bincount(dst, minlength=num_nodes)
        order_t = torch.argsort(src * num_nodes + dst)                 # edges of the transpose, by source
        counts_t = torch.bincount(src, minlength=num_nodes)
        self.num_nodes = num_nodes
        self.register_buffer("rowptr", torch.cat([counts.new_zeros(1), counts.cumsum(0)]), persistent=False)
        self.register_buffer("col", src, persistent=False)
        self.register_buffer("row", dst, persistent=False)
        self.register_buffer("perm_t", order_t, persistent=False)
        self.register_buffer("rowptr_t", torch.cat([counts_t.new_zeros(1), counts_t.cumsum(0)]), persistent=False)
        self.register_buffer("row_t", dst[order_t], persistent=False)

    @property
    def num_edges(self) -> int:
        return self.col.numel()

    def edge_index(self) -> Tensor:
        return torch.stack([self.col, self.row])


def _csr(rowptr: Tensor, col: Tensor, values: Tensor, n: int) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(rowptr, col, values, size=(n, n), check_invariants=False)


class _HeadwiseSpmm(torch.autograd.Function):
    """``out[:, h] = A_h @ x[:, h]`` with ``A_h`` the CSR graph weighted by ``alpha[:, h]``."""

    @staticmethod
    def forward(ctx, alpha: Tensor, x: Tensor, graph: CSRGraph) -> Tensor:
        # alpha: [E, H], x: [N, H, C] -> [N, H, C]
        n, heads, _ = x.shape
        values = alpha.T.contiguous()                                  # [H, E]
        out = torch.stack([_csr(graph.rowptr, graph.col, values[h], n) @ x[:, h] for h in range(heads)], dim=1)
        ctx.save_for_backward(alpha, x)
        ctx.graph = graph
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        alpha, x = ctx.saved_tensors
        g = ctx.graph
        n, heads, _ = x.shape
        grad = grad.contiguous()
        grad_alpha = grad_x = None
        if ctx.needs_input_grad[0]:
            # d out[i] / d alpha_ij = x[j]: grad_alpha[e, h] = <grad[row_e, h], x[col_e, h]>, the product
            # grad_h @ x_h^T sampled on the graph's pattern (SDDMM): 4x faster than gathering two
            # [E, H, C] tensors on a 457k-edge graph, and never materialises them
            pattern = _csr(g.rowptr, g.col, alpha.new_ones(g.num_edges), n)
            grad_alpha = torch.stack([
                torch.sparse.sampled_addmm(pattern, grad[:, h], x[:, h].T, beta=0.0).values()
                for h in range(heads)], dim=1)                         # [E, H]
        if ctx.needs_input_grad[1]:
            values_t = alpha.index_select(0, g.perm_t).T.contiguous()  # [H, E] in transposed order
            row_t = g.row_t
            grad_x = torch.stack([_csr(g.rowptr_t, row_t, values_t[h], n) @ grad[:, h] for h in range(heads)], dim=1)
        return grad_alpha, grad_x, None


class _EdgeScores(torch.autograd.Function):
    """``s[e] = a_src[col_e] + a_dst[row_e]``; the backward sums edge gradients per node with segment
    reductions over the two CSR orders instead of ``index_add`` (a scatter)."""

    @staticmethod
    def forward(ctx, a_src: Tensor, a_dst: Tensor, graph: CSRGraph) -> Tensor:
        # a_src, a_dst: [N, H] -> [E, H]
        ctx.graph = graph
        return a_src.index_select(0, graph.col) + a_dst.index_select(0, graph.row)

    @staticmethod
    def backward(ctx, grad: Tensor):
        g = ctx.graph
        grad_dst = torch.segment_reduce(grad, "sum", offsets=g.rowptr, axis=0)                      # by target
        grad_src = torch.segment_reduce(grad.index_select(0, g.perm_t), "sum", offsets=g.rowptr_t, axis=0)
        return grad_src, grad_dst, None


class FusedGATConv(GATConv):
    r"""PyG's ``GATConv`` (``concat=True``, no edge features, the graph's own self-loops) on a
    :class:`CSRGraph`:

    .. math::
        \alpha_{ij} = \mathrm{softmax}_{j \in \mathcal{N}(i)}\big(
            \mathrm{LeakyReLU}(a_s^\top \Theta x_j + a_d^\top \Theta x_i)\big), \qquad
        x'_i = \big\Vert_h \sum_j \alpha^h_{ij} \Theta^h x_j + b

    Same parameters and initialisation as ``GATConv``; given an ``edge_index`` instead of a
    :class:`CSRGraph` it falls back to ``GATConv.forward``.
    """

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, negative_slope: float = 0.2,
                 dropout: float = 0.0):
        super().__init__(in_channels, out_channels, heads=heads, concat=True, negative_slope=negative_slope,
                         dropout=dropout, add_self_loops=False)

    def forward(self, x: Tensor, graph, return_attention_weights=None):  # noqa: D102
        if not isinstance(graph, CSRGraph):
            return super().forward(x, graph, return_attention_weights=return_attention_weights)
        heads, channels = self.heads, self.out_channels
        h = self.lin(x).view(-1, heads, channels)                      # [N, H, C]
        a_src = (h * self.att_src).sum(-1)                             # [N, H]
        a_dst = (h * self.att_dst).sum(-1)                             # [N, H]
        scores = F.leaky_relu(_EdgeScores.apply(a_src, a_dst, graph), self.negative_slope)  # [E, H]
        alpha = softmax(scores, ptr=graph.rowptr, num_nodes=graph.num_nodes)             # per target
        alpha = F.dropout(alpha, p=self.dropout, training=self.training)
        out = _HeadwiseSpmm.apply(alpha, h, graph).reshape(-1, heads * channels)
        if self.bias is not None:
            out = out + self.bias
        if return_attention_weights:
            return out, (graph.edge_index(), alpha)
        return out
