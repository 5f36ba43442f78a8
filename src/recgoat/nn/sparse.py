"""Sparse-dense products with a fast backward pass.

``torch.sparse.mm``'s backward builds the transposed product through generic sparse kernels and
measured 5x slower than the forward here (Baby graph, 3 LightGCN layers: 0.15 s vs 0.03 s for
forward + backward with this function). The gradient of ``A @ X`` w.r.t. ``X`` is ``A^T @ G``;
for the symmetric matrices of graph propagation ``A^T = A``, so the backward is one more CSR product.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


def to_torch_csr(m: sp.spmatrix) -> Tensor:
    """A scipy matrix as a torch CSR tensor (int32 indices when they fit: faster CPU kernels)."""
    m = sp.csr_matrix(m, dtype=np.float32)
    m.sort_indices()
    idx_dtype = torch.int32 if m.nnz < 2**31 - 1 and max(m.shape) < 2**31 - 1 else torch.int64
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int64)).to(idx_dtype),
            torch.from_numpy(m.indices.astype(np.int64)).to(idx_dtype),
            torch.from_numpy(m.data),
            size=m.shape,
            check_invariants=False,  # scipy's sorted CSR satisfies them; checking costs a pass
        )


class ConstantSparse:
    """A constant sparse matrix (e.g. a normalised graph) held outside the module's buffers.

    Sparse CSR buffers break DDP, which broadcasts every buffer at start-up; this keeps the matrix
    on the host and copies it once to each device it is used on.
    """

    def __init__(self, m: sp.spmatrix):
        self.host = to_torch_csr(m)
        self._copies: dict[torch.device, Tensor] = {}

    def on(self, device: torch.device) -> Tensor:
        device = torch.device(device)
        if device.type == "cpu":
            return self.host
        if device not in self._copies:
            self._copies[device] = self.host.to(device)
        return self._copies[device]


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
        self.matrix = ConstantSparse(m)
        self.transpose = ConstantSparse(sp.csr_matrix(m).T)

    def __call__(self, x: Tensor) -> Tensor:
        # x: [m, d] -> [n, d]
        return spmm(self.matrix.on(x.device), x, self.transpose.on(x.device))
