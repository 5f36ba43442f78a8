"""The user-item bipartite graph of the training interactions."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


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
