"""k-nearest-neighbour graphs over feature vectors (item-item per modality, user-user)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from recgoat.graphs.cache import cached_sparse
from recgoat.utils.ranking import topk_stable

KNN_BUILDER_VERSION = 1  # bump when the construction changes: it is part of the cache key


def cosine_topk(x: np.ndarray, k: int, chunk: int = 2048, exclude_self: bool = True,
                device: str = "cpu", rows: np.ndarray | None = None) -> np.ndarray:
    """Indices ``[len(rows), k]`` of the ``k`` rows of ``x`` most cosine-similar to each of ``rows`` (default: all).

    Exact, computed in row chunks (memory ``chunk x n``), never the dense ``n x n`` matrix, on ``device``.
    Ties are broken by lower index.
    """
    n = x.shape[0]
    if not 0 < k < n:
        raise ValueError(f"k must be in 1..{n - 1} for {n} rows, got {k}")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    xt = torch.nn.functional.normalize(xt, dim=1)
    queries = torch.arange(n, device=xt.device) if rows is None else torch.as_tensor(rows, device=xt.device)
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        sim = xt[q] @ xt.T                                           # [c, n]
        if exclude_self:
            sim[torch.arange(len(q), device=xt.device), q] = -torch.inf
        # stable order: sort by (similarity desc, index asc) among the top candidates
        _, idx = topk_stable(sim, k)
        out[start:start + chunk] = idx.cpu().numpy()
    return out


class ExactKNN:
    """Exact cosine top-k (:func:`cosine_topk`): ``O(n^2 d)``, the default and the reference.

    Args:
        chunk: rows scored at once (memory ``chunk x n`` floats).
        device: where the similarities are computed (``cuda``: the search a GPU makes cheap).
    """

    name = "exact"

    def __init__(self, chunk: int, device: str):
        self.chunk, self.device = int(chunk), str(device)

    def topk(self, x: np.ndarray, k: int) -> np.ndarray:
        return cosine_topk(x, k, chunk=self.chunk, device=self.device)

    def cache_params(self) -> dict:
        # not the chunking (the lists do not depend on it), so caches of earlier versions stay valid; the device,
        # as another device's float sums can order near-ties differently
        return {} if self.device == "cpu" else {"device": torch.device(self.device).type}


class IVFKNN:
    r"""Approximate cosine top-k with faiss' inverted-file index (``IndexIVFFlat``, inner product on
    L2-normalised rows; optional extra ``knn``: ``pip install -e ".[knn]"``).

    k-means (seeded) splits the rows into ``nlist`` cells; each row is compared with the rows of the
    ``nprobe`` cells nearest to it, about ``n * nprobe / nlist`` of them instead of ``n``. Deterministic for a
    given seed and thread count. Rows whose probed cells hold fewer than ``k`` other rows fall back to the exact
    search. Recall@k against :class:`ExactKNN`: ``make bench-scale`` measures it.

    Args:
        nlist: number of cells (``None``: ``4 sqrt(n)``, faiss' rule of thumb).
        nprobe: cells searched per query.
        seed: seed of the k-means.
        train_rows: rows sampled to train the k-means (at most; faiss needs about 39 per cell).
        niter: k-means iterations.
        chunk: query rows per batch.
    """

    name = "ivf"

    def __init__(self, nlist: int | None, nprobe: int, seed: int, train_rows: int, niter: int, chunk: int):
        self.nlist, self.nprobe, self.seed = nlist, int(nprobe), int(seed)
        self.train_rows, self.niter, self.chunk = int(train_rows), int(niter), int(chunk)

    def topk(self, x: np.ndarray, k: int) -> np.ndarray:
        try:
            import faiss
        except ImportError as e:
            raise ImportError('the approximate kNN builder needs faiss: pip install -e ".[knn]"') from e
        n, d = x.shape
        if not 0 < k < n:
            raise ValueError(f"k must be in 1..{n - 1} for {n} rows, got {k}")
        xn = np.ascontiguousarray(torch.nn.functional.normalize(torch.from_numpy(
            np.ascontiguousarray(x, dtype=np.float32)), dim=1).numpy())
        nlist = int(self.nlist) if self.nlist else max(1, int(4 * np.sqrt(n)))
        nlist = min(nlist, n)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(self.seed)
        sample = xn if n <= self.train_rows else xn[np.sort(rng.choice(n, self.train_rows, replace=False))]
        index.cp.seed, index.cp.niter = self.seed, self.niter
        index.train(sample)
        index.add(xn)
        index.nprobe = min(self.nprobe, nlist)
        out = np.empty((n, k), dtype=np.int64)
        short = []
        for start in range(0, n, self.chunk):
            sims, idx = index.search(xn[start:start + self.chunk], k + 1)     # the row itself is usually first
            rows = np.arange(start, start + len(idx))
            keep = (idx >= 0) & (idx != rows[:, None])
            sims = np.where(keep, sims, -np.inf)                               # dropped entries sort last
            order = np.lexsort((idx, -sims), axis=1)[:, :k]                    # (similarity desc, index asc)
            out[rows] = np.take_along_axis(idx, order, axis=1)
            short.append(rows[keep.sum(1) < k])
        short = np.concatenate(short)
        if len(short):
            out[short] = cosine_topk(xn, k, chunk=self.chunk, rows=short)
        return out

    def cache_params(self) -> dict:
        return {"search": self.name, "nlist": self.nlist, "nprobe": self.nprobe, "seed": self.seed,
                "train_rows": self.train_rows, "niter": self.niter, "faiss_threads": _faiss_threads()}


def _faiss_threads() -> int:
    import faiss
    return int(faiss.omp_get_max_threads())


KNNSearch = ExactKNN | IVFKNN


def knn_recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-k neighbours an approximate top-k list found (recall@k), both ``[n, k]``."""
    hits = sum(len(np.intersect1d(a, e, assume_unique=True)) for a, e in zip(approx, exact, strict=True))
    return hits / exact.size


def knn_adjacency(x: np.ndarray, k: int, symmetric: bool = True, self_loops: bool = True,
                  chunk: int = 2048, search: KNNSearch | None = None) -> sp.csr_matrix:
    """Binary kNN adjacency ``[n, n]``: ``A[i, j] = 1`` if ``j`` is among ``i``'s top-k by cosine.

    ``symmetric`` adds the reverse edges (``A or A^T``); ``self_loops`` sets the diagonal. ``search``: how the
    top-k are found (default exact, in row chunks of ``chunk``).
    """
    n = x.shape[0]
    nbrs = (search or ExactKNN(chunk, "cpu")).topk(x, k)
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
