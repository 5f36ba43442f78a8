"""k-nearest-neighbour graphs over feature vectors (item-item per modality, user-user)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from recgoat.graphs.cache import cache_key, cached_sparse_by_key
from recgoat.graphs.user_item import sym_normalize
from recgoat.utils.ranking import topk_stable

KNN_BUILDER_VERSION = 2  # bump when the construction changes: it is part of the cache key


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


def knn_graph(x: np.ndarray, k: int, *, include_self: bool, symmetric: bool, self_loops: bool, weighted: bool,
              search: KNNSearch) -> sp.csr_matrix:
    r"""The kNN graph ``[n, n]`` of the rows of ``x`` by cosine similarity, every variant the models use:

    .. math::
        A_{ij} = [j \in \mathrm{top}_k(i)] \cdot (\cos(x_i, x_j) \text{ if weighted else } 1)

    Args:
        x: ``[n, f]`` features.
        k: neighbours per row.
        include_self: the row itself counts among its ``k`` (FREEDOM's and MGCN's graphs: every row then has ``k``
            entries, its own similarity first) instead of ``k`` other rows (RecGOAT's graph-attention graphs).
        symmetric: add the reverse edges (``A or A^T``; binary graphs only).
        self_loops: set the diagonal.
        weighted: the cosine similarity as the value instead of 1.
        search: how the top-k are found (:class:`ExactKNN`, :class:`IVFKNN`).
    """
    n = x.shape[0]
    if include_self:
        if not 0 < k <= n:
            raise ValueError(f"k must be in 1..{n} for {n} rows, got {k}")
        if k == n:
            nbrs = np.tile(np.arange(n), (n, 1))
        elif isinstance(search, ExactKNN):  # exact: self is its own most similar row (ties by lower index)
            nbrs = cosine_topk(x, k, chunk=search.chunk, exclude_self=False, device=search.device)
        else:
            nbrs = np.concatenate([np.arange(n)[:, None], search.topk(x, k - 1)], axis=1) if k > 1 \
                else np.arange(n)[:, None]
    else:
        nbrs = search.topk(x, k)
    if symmetric and weighted:
        raise ValueError("a symmetric kNN graph is binary: weighted=True needs symmetric=False")
    rows = np.repeat(np.arange(n), k)
    if weighted:
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        values = np.einsum("ij,ij->i", xn[rows], xn[nbrs.ravel()]).astype(np.float32)
    else:
        values = np.ones(n * k, dtype=np.float32)
    a = sp.csr_matrix((values, (rows, nbrs.ravel())), shape=(n, n), dtype=np.float32)
    if symmetric:
        a = a.maximum(a.T)
    if self_loops:
        a = a.maximum(sp.identity(n, dtype=np.float32, format="csr"))
    a = sp.csr_matrix(a, dtype=np.float32)
    a.sort_indices()
    return a


class KNNGraphs:
    """The one builder of a run's kNN graphs (item-item per modality, user-user), for every model and part.

    A graph is cached on disk under everything it depends on (the feature bytes, ``k``, every flag of
    :func:`knn_graph`, the search and its parameters, the builder's version) and in memory, so each distinct graph
    is built once per run however many parts ask for it.

    Args:
        search: how neighbours are found (``model.knn_search``: :class:`ExactKNN` or :class:`IVFKNN`).
        cache_dir: where graphs are cached (``None``: in memory only).
    """

    def __init__(self, search: KNNSearch, cache_dir: str | Path | None):
        self.search, self.cache_dir = search, cache_dir
        self._built: dict[str, sp.csr_matrix] = {}

    def __call__(self, x: np.ndarray, k: int, *, include_self: bool, symmetric: bool, self_loops: bool,
                 weighted: bool) -> sp.csr_matrix:
        params = {"k": int(k), "include_self": include_self, "symmetric": symmetric, "self_loops": self_loops,
                  "weighted": weighted, **self.search.cache_params()}
        key = cache_key("knn", KNN_BUILDER_VERSION, {"features": x}, params)
        if key not in self._built:
            def build() -> sp.csr_matrix:
                return knn_graph(x, k, include_self=include_self, symmetric=symmetric, self_loops=self_loops,
                                 weighted=weighted, search=self.search)
            self._built[key] = build() if self.cache_dir is None else \
                cached_sparse_by_key(self.cache_dir, "knn", key, build)
        return self._built[key]

    def normalized(self, x: np.ndarray, k: int, *, weighted: bool) -> sp.csr_matrix:
        """MMRec's item-item graph, as FREEDOM, MGCN, SMORE and MENTOR build it: each row's directed top-``k`` by
        cosine (the row itself among its ``k``; cosine-weighted or binary), then ``D^-1/2 A D^-1/2`` with the row
        degrees."""
        return sym_normalize(self(x, k, include_self=True, symmetric=False, self_loops=False, weighted=weighted))
