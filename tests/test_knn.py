"""The one kNN graph builder: every variant against brute force, the approximate search, the cache."""
from __future__ import annotations

import numpy as np
import pytest

from recgoat.graphs.cache import cached_sparse
from recgoat.graphs.knn import IVFKNN, ExactKNN, KNNGraphs, cosine_topk, knn_graph, knn_recall
from recgoat.utils.config import build_model
from tests.helpers import binary_knn

EXACT = ExactKNN(chunk=2048, device="cpu")


def test_cosine_topk_is_exact_and_chunking_invariant():
    x = np.random.default_rng(0).normal(size=(57, 6)).astype(np.float32)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    np.fill_diagonal(sim, -np.inf)
    expected = np.argsort(-sim, axis=1, kind="stable")[:, :5]
    for chunk in (1, 8, 1000):
        got = cosine_topk(x, 5, chunk=chunk)
        np.testing.assert_array_equal(np.sort(got, 1), np.sort(expected, 1))


def brute_force_topk(x: np.ndarray, k: int, include_self: bool) -> list[set[int]]:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    if not include_self:
        np.fill_diagonal(sim, -np.inf)
    return [set(np.argsort(-row, kind="stable")[:k]) for row in sim], sim


@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("weighted", [True, False])
def test_directed_knn_graph_keeps_each_rows_top_k_with_cosine_or_unit_values(include_self, weighted):
    x = np.random.default_rng(1).normal(size=(40, 5)).astype(np.float32)
    k = 6
    g = knn_graph(x, k, include_self=include_self, symmetric=False, self_loops=False, weighted=weighted,
                  search=EXACT)
    expected, sim = brute_force_topk(x, k, include_self)
    for i in range(len(x)):
        row = g.getrow(i)
        assert set(row.indices) == expected[i]
        assert (i in row.indices) == include_self          # the row itself is among its k, or never
        values = sim[i, row.indices] if weighted else np.ones(k)
        np.testing.assert_allclose(row.data, values, rtol=1e-5)
    assert g.nnz == len(x) * k


def test_symmetric_knn_graph_is_the_union_of_both_directions_with_self_loops():
    x = np.random.default_rng(2).normal(size=(30, 4)).astype(np.float32)
    a = knn_graph(x, 3, include_self=False, symmetric=True, self_loops=True, weighted=False, search=EXACT)
    expected, _ = brute_force_topk(x, 3, include_self=False)
    dense = np.eye(30, dtype=np.float32)
    for i, nbrs in enumerate(expected):
        dense[i, list(nbrs)] = dense[list(nbrs), i] = 1.0
    np.testing.assert_array_equal(a.toarray(), dense)
    with pytest.raises(ValueError, match="weighted=True needs symmetric=False"):
        knn_graph(x, 3, include_self=False, symmetric=True, self_loops=False, weighted=True, search=EXACT)


def test_include_self_with_an_approximate_search_keeps_the_row_and_its_k_minus_1_nearest():
    pytest.importorskip("faiss", reason="the approximate kNN builder needs the knn extra (faiss-cpu)")
    x = clustered(400, 8, 10, seed=7)
    ivf = IVFKNN(nlist=4, nprobe=4, seed=0, train_rows=10_000, niter=10, chunk=128)  # every cell: exact lists
    flags = {"symmetric": False, "self_loops": False, "weighted": True}
    approx = knn_graph(x, 5, include_self=True, search=ivf, **flags)
    exact = knn_graph(x, 5, include_self=True, search=EXACT, **flags)
    assert np.all(approx.diagonal() > 0.999) and approx.nnz == 400 * 5
    assert abs(approx - exact).max() < 1e-5


def test_graph_cache_is_keyed_by_feature_bytes(tmp_path):
    calls = []
    x = np.random.default_rng(2).normal(size=(20, 3)).astype(np.float32)

    def build(features):
        calls.append(1)
        return binary_knn(features, 3)

    a1 = cached_sparse(tmp_path, "knn", 1, {"f": x}, {"k": 3}, lambda: build(x))
    a2 = cached_sparse(tmp_path, "knn", 1, {"f": x}, {"k": 3}, lambda: build(x))
    assert len(calls) == 1 and (a1 != a2).nnz == 0                     # second call read the cache
    y = x.copy()
    y[0, 0] += 1.0                                                      # new features, same k and shape
    a3 = cached_sparse(tmp_path, "knn", 1, {"f": y}, {"k": 3}, lambda: build(y))
    assert len(calls) == 2 and (a3 != binary_knn(y, 3)).nnz == 0    # rebuilt, not stale
    cached_sparse(tmp_path, "knn", 2, {"f": x}, {"k": 3}, lambda: build(x))
    assert len(calls) == 3                                              # builder version is in the key
    for f in (tmp_path / "graphs").glob("*.npz"):
        f.write_bytes(b"damaged")
    a4 = cached_sparse(tmp_path, "knn", 1, {"f": x}, {"k": 3}, lambda: build(x))
    assert len(calls) == 4 and (a4 != a1).nnz == 0                      # damaged file rebuilt
    for f in (tmp_path / "graphs").glob("*.npz"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])          # a truncated zip (a killed write)
    a5 = cached_sparse(tmp_path, "knn", 1, {"f": x}, {"k": 3}, lambda: build(x))
    assert len(calls) == 5 and (a5 != a1).nnz == 0


def test_one_builder_builds_each_distinct_graph_once_and_keys_it_by_every_input(tmp_path, monkeypatch):
    import recgoat.graphs.knn as knn_module
    calls = []
    real = knn_module.knn_graph
    monkeypatch.setattr(knn_module, "knn_graph", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    x = np.random.default_rng(3).normal(size=(25, 4)).astype(np.float32)
    graphs = KNNGraphs(EXACT, tmp_path)
    flags = {"include_self": True, "symmetric": False, "self_loops": False, "weighted": True}
    first = graphs(x, 4, **flags)
    assert graphs(x, 4, **flags) is first and len(calls) == 1                  # built once per run
    assert (KNNGraphs(EXACT, tmp_path)(x, 4, **flags) != first).nnz == 0 and len(calls) == 1  # from the disk cache
    for changed in (dict(flags, weighted=False), dict(flags, include_self=False), dict(flags, symmetric=False,
                                                                                        self_loops=True)):
        graphs(x, 4, **changed)
    graphs(x, 5, **flags)
    assert len(calls) == 5 and len(list((tmp_path / "graphs").glob("*.npz"))) == 5
    assert len(calls) == 5
    assert ExactKNN(chunk=7, device="cpu").cache_params() == {}  # the chunking is not an input of the graph


def clustered(n, d, clusters, seed, noise=0.5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    return (centres[rng.integers(clusters, size=n)] + noise * rng.normal(size=(n, d))).astype(np.float32)


def test_ivf_knn_is_exact_when_every_cell_is_searched_and_close_when_few_are():
    pytest.importorskip("faiss", reason="the approximate kNN builder needs the knn extra (faiss-cpu)")
    x = clustered(3000, 32, 40, seed=5, noise=1.5)
    exact = cosine_topk(x, 10)
    everything = IVFKNN(nlist=16, nprobe=16, seed=0, train_rows=100_000, niter=10, chunk=512).topk(x, 10)
    # exhaustive: the same neighbours, up to float near-ties (faiss and torch sum in different orders)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = lambda nbrs: np.einsum("nd,nkd->nk", xn, xn[nbrs])  # noqa: E731
    np.testing.assert_allclose(sims(everything), sims(exact), atol=1e-5)
    assert (everything == exact).mean() > 0.999
    approximate = IVFKNN(nlist=48, nprobe=8, seed=0, train_rows=3000, niter=10, chunk=700)
    few = approximate.topk(x, 10)
    recall = knn_recall(few, exact)
    assert 0.8 < recall < 1.0                                # approximate, and measurably so
    assert not (few == np.arange(3000)[:, None]).any()       # a row is never its own neighbour
    np.testing.assert_array_equal(few, approximate.topk(x, 10))   # deterministic
    assert knn_recall(exact, exact) == 1.0 and knn_recall(exact[:, ::-1], exact) == 1.0


def test_ivf_knn_falls_back_to_exact_rows_when_its_probed_cells_are_too_small():
    pytest.importorskip("faiss", reason="the approximate kNN builder needs the knn extra (faiss-cpu)")
    x = clustered(200, 8, 50, seed=6)                        # 50 tight clusters of about 4: one cell holds < k rows
    got = IVFKNN(nlist=50, nprobe=1, seed=0, train_rows=10_000, niter=10, chunk=64).topk(x, 12)
    assert got.shape == (200, 12) and (got >= 0).all()
    assert not (got == np.arange(200)[:, None]).any()
    assert all(len(set(row)) == 12 for row in got)


@pytest.mark.parametrize("model", ["recgoat", "recgoat_mgcn", "mgcn", "freedom"])
def test_the_knn_search_reaches_every_graph_of_every_model(tiny_synthetic, tmp_path, model):
    pytest.importorskip("faiss", reason="the approximate kNN builder needs the knn extra (faiss-cpu)")
    extra = ["model/user_branch=gat"] if model == "recgoat_mgcn" else []
    build_model(tiny_synthetic, [f"model={model}", *extra, f"paths.cache_dir={tmp_path}"])
    exact_files = set((tmp_path / "graphs").glob("*.npz"))
    # recgoat: the branches' text, image and user graphs; recgoat_mgcn: those and the side view's text and image graphs
    assert len(exact_files) == {"recgoat": 3, "recgoat_mgcn": 5, "mgcn": 2, "freedom": 2}[model]
    build_model(tiny_synthetic, [f"model={model}", *extra, "model/knn_search=ivf", f"paths.cache_dir={tmp_path}"])
    assert len(set((tmp_path / "graphs").glob("*.npz")) - exact_files) == len(exact_files)
