"""The user-item bipartite graph of the training interactions."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def bipartite_adjacency(train: sp.csr_matrix) -> sp.csr_matrix:
    """``A = [[0, R], [R^T, 0]]`` over ``n_users + n_items`` nodes (users first), binary, no self-loops."""
    r = sp.csr_matrix(train, dtype=np.float32, copy=True)
    r.data[:] = 1.0
    return sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)


def sym_normalize(adj: sp.spmatrix) -> sp.csr_matrix:
    """``D^-1/2 A D^-1/2``; isolated nodes keep zero rows instead of dividing by zero."""
    adj = sp.csr_matrix(adj, dtype=np.float32)
    deg = np.asarray(adj.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(deg)
    np.power(deg, -0.5, out=inv_sqrt, where=deg > 0)
    d = sp.diags(inv_sqrt)
    out = (d @ adj @ d).tocsr()
    out.sort_indices()
    return out.astype(np.float32)


def normalized_bipartite_adjacency(train: sp.csr_matrix) -> sp.csr_matrix:
    """LightGCN's propagation matrix ``D^-1/2 A D^-1/2`` of the user-item graph."""
    return sym_normalize(bipartite_adjacency(train))


def row_mean(train: sp.csr_matrix) -> sp.csr_matrix:
    """``D_u^-1 R``: each user's row averages over the user's training items (users without any get 0)."""
    r = sp.csr_matrix(train, dtype=np.float32)
    deg = np.maximum(np.asarray(r.sum(axis=1)).ravel(), 1.0)
    return (sp.diags(1.0 / deg).astype(np.float32) @ r).tocsr()


def degree_sensitive_pruning(train: sp.csr_matrix, keep_ratio: float, generator: torch.Generator) -> sp.csr_matrix:
    r"""FREEDOM's denoising of the user-item graph: keep ``int(nnz * keep_ratio)`` training edges drawn without
    replacement with probability proportional to :math:`1/\sqrt{d_u d_i}`, so edges between high-degree nodes
    (the likeliest noise) are dropped more often. Returns the kept interactions ``[n_users, n_items]``."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    r = sp.coo_matrix(train)
    du = np.asarray(train.sum(axis=1)).ravel()
    di = np.asarray(train.sum(axis=0)).ravel()
    weights = torch.from_numpy((1.0 / np.sqrt(du[r.row] * di[r.col])).astype(np.float64))
    n_keep = int(r.nnz * keep_ratio)
    keep = torch.multinomial(weights, n_keep, replacement=False, generator=generator).numpy()
    kept = sp.csr_matrix((np.ones(n_keep, dtype=np.float32), (r.row[keep], r.col[keep])), shape=train.shape)
    kept.sort_indices()
    return kept
