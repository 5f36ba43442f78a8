"""k-nearest-neighbour graphs over feature vectors (item-item per modality, user-user)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from recgoat.graphs.cache import cached_sparse
from recgoat.utils.ranking import topk_stable

KNN_BUILDER_VERSION = 1  # bump when the construction changes: it is part of the cache key


def cosine_topk(x: np.ndarray, k: int, chunk: int = 2048, exclude_self: bool = True) -> np.ndarray:
    """Indices ``[n, k]`` of each row's ``k`` most cosine-similar rows.

    Exact, computed in row chunks (memory ``chunk x n``), never the dense ``n x n`` matrix.
    Ties are broken by lower index.
    """
    n = x.shape[0]
    if not 0 < k < n:
        raise ValueError(f"k must be in 1..{n - 1} for {n} rows, got {k}")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    xt = torch.nn.functional.normalize(xt, dim=1)
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        sim = xt[start:start + chunk] @ xt.T                         # [c, n]
        if exclude_self:
            rows = torch.arange(sim.shape[0])
            sim[rows, rows + start] = -torch.inf
        # stable order: sort by (similarity desc, index asc) among the top candidates
        _, idx = topk_stable(sim, k)
        out[start:start + chunk] = idx.numpy()
    return out


def knn_adjacency(x: np.ndarray, k: int, symmetric: bool = True, self_loops: bool = True,
                  chunk: int = 2048) -> sp.csr_matrix:
    """Binary kNN adjacency ``[n, n]``: ``A[i, j] = 1`` if ``j`` is among ``i``'s top-k by cosine.

    ``symmetric`` adds the reverse edges (``A or A^T``); ``self_loops`` sets the diagonal.
    """
    n = x.shape[0]
    nbrs = cosine_topk(x, k, chunk=chunk)
    rows = np.repeat(np.arange(n), k)
    a = sp.csr_matrix((np.ones(n * k, dtype=np.float32), (rows, nbrs.ravel())), shape=(n, n))
    if symmetric:
        a = a.maximum(a.T)
    if self_loops:
        a = a.maximum(sp.identity(n, dtype=np.float32, format="csr"))
    a = sp.csr_matrix(a, dtype=np.float32)
    a.sort_indices()
    return a


def edge_index(adj: sp.spmatrix) -> torch.Tensor:
    """PyG's ``edge_index`` ``[2, E]`` (source, target) of a (symmetric) adjacency."""
    coo = sp.coo_matrix(adj)
    return torch.from_numpy(np.vstack([coo.col, coo.row]).astype(np.int64))


def knn_similarity_graph(x: np.ndarray, k: int, weighted: bool = False, chunk: int = 2048) -> sp.csr_matrix:
    """Directed kNN graph of the MMRec-family models (FREEDOM, MGCN): row ``i`` keeps its ``k`` most
    cosine-similar rows *including itself* (its own similarity is the largest), with weight 1 or, when
    ``weighted``, the cosine similarity; not symmetrised. Normalise with ``sym_normalize`` (row degrees)."""
    n = x.shape[0]
    if not 0 < k <= n:
        raise ValueError(f"k must be in 1..{n} for {n} rows, got {k}")
    nbrs = cosine_topk(x, k, chunk=chunk, exclude_self=False) if k < n else np.tile(np.arange(n), (n, 1))
    rows = np.repeat(np.arange(n), k)
    if weighted:
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        values = np.einsum("ij,ij->i", xn[rows], xn[nbrs.ravel()]).astype(np.float32)
    else:
        values = np.ones(n * k, dtype=np.float32)
    a = sp.csr_matrix((values, (rows, nbrs.ravel())), shape=(n, n), dtype=np.float32)
    a.sort_indices()
    return a


def cached_knn_similarity_graph(x: np.ndarray, k: int, weighted: bool, cache_dir, builder: str) -> sp.csr_matrix:
    """:func:`knn_similarity_graph`, cached on disk by the feature bytes, ``k`` and ``weighted``."""
    return cached_sparse(cache_dir, builder, KNN_BUILDER_VERSION, {"features": x},
                         {"k": k, "weighted": weighted, "self_in_topk": True, "symmetric": False},
                         lambda: knn_similarity_graph(x, k, weighted=weighted))
