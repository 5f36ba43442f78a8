"""Sparse-dense products with a fast backward pass.

``torch.sparse.mm``'s backward builds the transposed product through generic sparse kernels and
measured 5x slower than the forward here (Baby graph, 3 LightGCN layers: 0.15 s vs 0.03 s for
forward + backward with this function). The gradient of ``A @ X`` w.r.t. ``X`` is ``A^T @ G``;
for the symmetric matrices of graph propagation ``A^T = A``, so the backward is one more CSR product.
"""
from __future__ import annotations

import scipy.sparse as sp
import torch
from torch import Tensor

from recgoat.graphs.csr import DeviceCSR, to_torch_csr

__all__ = ["SparseOperator", "spmm", "to_torch_csr"]


class _SparseMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, adj: Tensor, adj_t: Tensor, x: Tensor) -> Tensor:
        ctx.adj_t = adj_t
        return adj @ x

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, None, ctx.adj_t @ grad


def spmm(adj: Tensor, x: Tensor, adj_t: Tensor | None = None) -> Tensor:
    """``adj @ x`` for a sparse ``adj`` ``[n, m]`` and dense ``x`` ``[m, d]``.

    ``adj_t`` (the transpose, CSR) is needed for the gradient; omit it when ``adj`` is symmetric.
    """
    return _SparseMatmul.apply(adj, adj if adj_t is None else adj_t, x)


class SparseOperator:
    """A constant, not necessarily symmetric sparse matrix ``A`` (e.g. a directed kNN graph, or the
    user x item block of a graph) applied as ``A @ x``; it keeps ``A^T`` for the gradient."""

    def __init__(self, m: sp.spmatrix):
        self.matrix = DeviceCSR(m)
        self.transpose = self.matrix.transpose()

    def __call__(self, x: Tensor) -> Tensor:
        # x: [m, d] -> [n, d]
        return spmm(self.matrix.matrix(x.device), x, self.transpose.matrix(x.device))
