"""RecGOAT's parts against exact references, and the model end to end on tiny data."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import ot
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch_geometric.nn import GATConv
from torch_geometric.utils import scatter

from recgoat.data import DataError, RecDataset
from recgoat.graphs import DeviceCSR, bipartite_adjacency
from recgoat.graphs.cache import cached_sparse
from recgoat.graphs.knn import IVFKNN, ExactKNN, cosine_topk, edge_index, knn_adjacency, knn_recall
from recgoat.models import RecGOAT
from recgoat.nn import (
    AdaptiveFusion,
    AttentionPropagation,
    DimensionTransport,
    FusedGATConv,
    GraphAttentionEncoder,
    SinkhornW1,
    bpr_loss,
    cmcl_loss,
    dimension_cost,
    edge_dropout,
    info_nce,
)
from recgoat.training import BPRBatches
from recgoat.utils.config import build_model
from tests.helpers import QUIET, TINY_DATA, run_in_process

CONF = Path(__file__).resolve().parents[1] / "conf"


# ---- graphs ---------------------------------------------------------------------------------
def test_cosine_topk_is_exact_and_chunking_invariant():
    x = np.random.default_rng(0).normal(size=(57, 6)).astype(np.float32)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    np.fill_diagonal(sim, -np.inf)
    expected = np.argsort(-sim, axis=1, kind="stable")[:, :5]
    for chunk in (1, 8, 1000):
        got = cosine_topk(x, 5, chunk=chunk)
        np.testing.assert_array_equal(np.sort(got, 1), np.sort(expected, 1))


def test_knn_adjacency_is_symmetric_with_self_loops():
    x = np.random.default_rng(1).normal(size=(30, 4)).astype(np.float32)
    a = knn_adjacency(x, 3)
    assert (a != a.T).nnz == 0
    assert np.all(a.diagonal() == 1)
    assert np.all(np.asarray(a.sum(1)).ravel() >= 4)  # k neighbours + itself
    ei = edge_index(a)
    assert ei.shape == (2, a.nnz)


def test_graph_cache_is_keyed_by_feature_bytes(tmp_path):
    calls = []
    x = np.random.default_rng(2).normal(size=(20, 3)).astype(np.float32)

    def build(features):
        calls.append(1)
        return knn_adjacency(features, 3)

    a1 = cached_sparse(tmp_path, "knn", 1, {"f": x}, {"k": 3}, lambda: build(x))
    a2 = cached_sparse(tmp_path, "knn", 1, {"f": x}, {"k": 3}, lambda: build(x))
    assert len(calls) == 1 and (a1 != a2).nnz == 0                     # second call read the cache
    y = x.copy()
    y[0, 0] += 1.0                                                      # new features, same k and shape
    a3 = cached_sparse(tmp_path, "knn", 1, {"f": y}, {"k": 3}, lambda: build(y))
    assert len(calls) == 2 and (a3 != knn_adjacency(y, 3)).nnz == 0    # rebuilt, not stale
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


def test_the_knn_search_is_part_of_recgoats_graph_cache_key(tiny_synthetic, tmp_path):
    pytest.importorskip("faiss", reason="the approximate kNN builder needs the knn extra (faiss-cpu)")
    small_recgoat(tiny_synthetic, tmp_path)
    exact_files = set((tmp_path / "graphs").glob("*.npz"))
    assert len(exact_files) == 5                             # text, image, user; FREEDOM's text and image graphs
    small_recgoat(tiny_synthetic, tmp_path, "model/knn_search=ivf")
    assert len(set((tmp_path / "graphs").glob("*.npz")) - exact_files) == 3
    assert ExactKNN(chunk=7, device="cpu").cache_params() == {}  # exact graphs cached before stay valid


# ---- graph attention --------------------------------------------------------------------------
@pytest.mark.parametrize("csr", [True, False])
def test_attention_weights_over_each_nodes_in_edges_sum_to_one(csr):
    x = np.random.default_rng(3).normal(size=(40, 5)).astype(np.float32)
    ei = edge_index(knn_adjacency(x, 4))
    graph = DeviceCSR.from_edge_index(ei, 40) if csr else ei
    enc = GraphAttentionEncoder(5, 16, heads=4).eval()
    h = enc.proj(torch.from_numpy(x))
    _, (ei_out, alpha) = enc.layers[0](h, graph, return_attention_weights=True)
    assert alpha.shape == (ei.shape[1], 4)
    sums = scatter(alpha, ei_out[1], dim=0, dim_size=40, reduce="sum")  # per target node and head
    torch.testing.assert_close(sums, torch.ones(40, 4))
    assert (alpha > 0).all()


def test_fused_gat_equals_pyg_gatconv_outputs_and_gradients():
    x = np.random.default_rng(4).normal(size=(300, 6)).astype(np.float32)
    ei = edge_index(knn_adjacency(x, 7))
    torch.manual_seed(0)
    fused = FusedGATConv(16, 4, heads=4).eval()
    reference = GATConv(16, 4, heads=4, add_self_loops=False).eval()
    reference.load_state_dict(fused.state_dict())                    # identical parameter names and shapes
    h1 = torch.randn(300, 16, dtype=torch.float64, requires_grad=True)
    h2 = h1.detach().clone().requires_grad_()
    fused.double()
    reference.double()
    out1, out2 = fused(h1, DeviceCSR.from_edge_index(ei, 300)), reference(h2, ei)
    torch.testing.assert_close(out1, out2, atol=1e-10, rtol=1e-10)
    w = torch.randn_like(out1)
    (out1 * w).sum().backward()
    (out2 * w).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-10, rtol=1e-10)
    for (name, p1), (_, p2) in zip(fused.named_parameters(), reference.named_parameters(), strict=True):
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-10, rtol=1e-10, msg=name)


def test_fused_gat_is_stable_on_large_scores_and_gives_nodes_without_in_edges_the_bias():
    g = torch.Generator().manual_seed(5)
    src, dst = torch.randint(0, 60, (400,), generator=g), torch.randint(0, 60, (400,), generator=g)
    keep = dst >= 5                                                      # nodes 0-4 have no in-edges
    ei = torch.unique(torch.stack([src[keep], dst[keep]]), dim=1)
    fused = FusedGATConv(8, 3, heads=2).double().eval()
    reference = GATConv(8, 3, heads=2, add_self_loops=False).double().eval()
    with torch.no_grad():
        fused.att_src.mul_(300.0)                                        # scores of order 1e2-1e3: exp overflows
        fused.att_dst.mul_(300.0)                                        # without the per-target max shift
        fused.bias.normal_()
    reference.load_state_dict(fused.state_dict())
    h1 = torch.randn(60, 8, dtype=torch.float64, generator=g, requires_grad=True)
    h2 = h1.detach().clone().requires_grad_()
    out1, out2 = fused(h1, DeviceCSR.from_edge_index(ei, 60)), reference(h2, ei)
    assert torch.isfinite(out1).all()
    torch.testing.assert_close(out1, out2, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(out1[:5], fused.bias.expand(5, -1))
    w = torch.randn(out1.shape, dtype=torch.float64, generator=g)
    (out1 * w).sum().backward()
    (out2 * w).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(fused.att_src.grad, reference.att_src.grad, atol=1e-9, rtol=1e-9)


def test_edge_dropout_keeps_a_fraction_one_minus_p_rescaled_and_is_seeded():
    alpha = torch.rand(8, 100_003, dtype=torch.float64).add_(0.1).requires_grad_()
    torch.manual_seed(0)
    out = edge_dropout(alpha, 0.1, training=True)
    kept = out != 0
    n, rate = alpha.numel(), kept.double().mean().item()
    assert abs(rate - (1 - 6554 / 65536)) < 5 * math.sqrt(0.09 / n)     # p quantised to 1/65536
    torch.testing.assert_close(out[kept], alpha[kept] / 0.9)
    out.sum().backward()
    torch.testing.assert_close(alpha.grad, kept.double() / 0.9)
    torch.manual_seed(0)
    assert torch.equal(edge_dropout(alpha, 0.1, training=True) != 0, kept)  # same seed, same mask
    assert edge_dropout(alpha, 0.1, training=False) is alpha
    assert edge_dropout(alpha, 0.0, training=True) is alpha
    with pytest.raises(ValueError, match="dropout probability"):
        edge_dropout(alpha, 1.0, training=True)


# ---- OAT ---------------------------------------------------------------------------------------
def test_dimension_cost_expansion_equals_the_definition():
    zm, zid = torch.randn(50, 6, dtype=torch.float64), torch.randn(50, 7, dtype=torch.float64)
    brute = ((zm[:, :, None] - zid[:, None, :]) ** 2).mean(0)
    torch.testing.assert_close(dimension_cost(zm, zid), brute)


@pytest.mark.parametrize("eps", [0.01, 0.05, 0.2])
def test_sinkhorn_plan_marginals_and_pot_reference(eps):
    g = torch.Generator().manual_seed(int(eps * 100))
    zm = torch.randn(300, 16, generator=g)
    zid = 0.5 * torch.randn(300, 16, generator=g) + zm[:, torch.randperm(16, generator=g)]
    transport = DimensionTransport(eps=eps)
    plan = transport.plan(zm, zid)                                       # d T*: all marginals 1
    torch.testing.assert_close(plan.sum(1), torch.ones(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(plan.sum(0), torch.ones(16), atol=1e-4, rtol=0)
    cost = dimension_cost(zm.double(), zid.double())
    cost = (cost / (cost.max() - cost.min())).numpy()
    with warnings.catch_warnings():  # at eps 0.05 POT's marginal error stalls near 1e-9 in float64: capped
        warnings.filterwarnings("ignore", message="Sinkhorn did not converge")
        ref = ot.sinkhorn(np.full(16, 1 / 16), np.full(16, 1 / 16), cost, eps, method="sinkhorn_log",
                          numItermax=2000, stopThr=1e-10) * 16
    np.testing.assert_allclose(plan.numpy(), ref, atol=2e-3)
    assert not plan.requires_grad


def test_plan_is_a_permutation_when_dimensions_are_permuted_copies():
    zm = torch.randn(500, 8)
    perm = torch.randperm(8)
    plan = DimensionTransport(eps=0.01).plan(zm, zm[:, perm])
    assert torch.equal(plan.argmax(1), torch.argsort(perm))  # dimension p of zm goes where it went


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_w1_matches_exact_optimal_transport_within_the_entropic_bias(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(80, 6, generator=g)
    y = torch.randn(80, 6, generator=g) + 0.5
    blur = 0.01
    value = SinkhornW1(blur=blur, scaling=0.9, max_points=None)(x, y).item()
    xn, yn = F.normalize(x, dim=-1).double(), F.normalize(y, dim=-1).double()
    exact = ot.emd2(np.full(80, 1 / 80), np.full(80, 1 / 80), torch.cdist(xn, yn).numpy())
    # the debiased divergence differs from W1 by the entropic bias, O(blur log(1/blur)) ~ 0.05 here
    assert abs(value - exact) < blur * math.log(1 / blur) + 0.02
    assert SinkhornW1(blur=blur, max_points=None)(x, x).item() == pytest.approx(0.0, abs=1e-4)


def test_w1_subsampling_keeps_pairs_and_is_differentiable():
    x = torch.randn(1000, 8, requires_grad=True)
    loss = SinkhornW1(blur=0.05, max_points=100)(x, x.detach() + 0.1)
    loss.backward()
    assert x.grad is not None and (x.grad.abs().sum(1) > 0).sum() <= 100  # only the sampled rows


# ---- CMCL ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_cmcl_bound_of_the_supplement_holds(seed):
    g = torch.Generator().manual_seed(seed)
    B, d, tau = 64, 16, 0.2
    z = torch.randn(B, d, generator=g)
    zm = z + (0.3 + seed * 0.5) * torch.randn(B, d, generator=g)   # from aligned to nearly unrelated
    loss = info_nce(zm, z, tau).item()
    gap = (F.normalize(zm, dim=-1) - F.normalize(z, dim=-1)).norm(dim=-1).mean().item()
    assert gap <= math.sqrt(2 * tau * loss + 2 * tau * math.log(B))


def test_cmcl_is_the_mean_over_modalities_and_minimal_when_aligned():
    z = torch.randn(32, 8)
    a, b = torch.randn(32, 8), torch.randn(32, 8)
    assert cmcl_loss({"a": a, "b": b}, z, 0.2).item() == pytest.approx(
        (info_nce(a, z, 0.2).item() + info_nce(b, z, 0.2).item()) / 2)
    assert info_nce(z, z, 0.2) < info_nce(a, z, 0.2)


# ---- the model -------------------------------------------------------------------------------
def small_recgoat(dataset, tmp_path, *overrides: str) -> RecGOAT:
    """``model=recgoat`` from its real config with the user LM branch (every part built), at d=16, 4 heads, k=5."""
    torch.manual_seed(0)
    return build_model(dataset, ["model=recgoat", "model/user_encoder=gat", "model.embedding_dim=16", "model.knn_k=5",
                                 "model.user_knn_k=5", "model.item_encoder.heads=4", "model.user_encoder.heads=4",
                                 f"paths.cache_dir={tmp_path}", *overrides])


# the default's side view and its contrastive term off: the ID branch of the options measured before them
NO_SIDE_VIEW = ("model.side_view=null", "model.view_cl=null")


@pytest.mark.parametrize("ui", ["lightgcn", "attention"])
def test_gradients_reach_every_branch(tiny_synthetic, tmp_path, ui):
    extra = ["+experiment=ui_attention", "model.id_encoder.heads=4"] if ui == "attention" else []
    # the user LM weight at 1: from the default 0 the user encoder's gradient is 0 until the weight has moved
    model = small_recgoat(tiny_synthetic, tmp_path, *extra, "model.user_llm_init=1.0")
    batch = next(iter(BPRBatches(tiny_synthetic, batch_size=64, seed=0, epoch_fn=lambda: 0)))
    out = model.loss(batch)
    assert {"bpr", "reg", "cmcl", "oat_w1", "fusion_w_id", "fusion_w_text", "fusion_w_image"} <= set(out)
    out["loss"].backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]  # fixed fusion weights: none
    assert no_grad == []
    branches = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert {"user_emb", "item_emb", "item_encoders", "user_encoder", "oat_map", "fusion"} <= branches
    assert ("id_encoder" in branches) == (ui == "attention")   # LightGCN has no parameters


def test_attention_propagation_is_the_layer_mean_of_pyg_gatconv_layers():
    # a bipartite graph with a cold item (no in-edges): its layer output is the bias alone
    rng = np.random.default_rng(0)
    n_users, n_items = 12, 9
    rows, cols = np.nonzero(rng.random((n_users, n_items - 1)) < 0.3)
    train = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    ei = edge_index(bipartite_adjacency(train))
    n = n_users + n_items
    torch.manual_seed(0)
    prop = AttentionPropagation(16, n_layers=2, heads=4, dropout=0.0)
    refs = []
    for layer in prop.layers:
        ref = GATConv(16, 4, heads=4, add_self_loops=False)
        ref.load_state_dict(layer.state_dict())
        with torch.no_grad():
            ref.bias.normal_()                                # non-zero, so the cold-item check is not vacuous
            layer.bias.copy_(ref.bias)
        refs.append(ref)
    x1 = torch.randn(n, 16, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    out = prop(x1, DeviceCSR.from_edge_index(ei, n))
    h, expected = x2, x2
    for ref in refs:
        h = ref(h, ei)
        expected = expected + h
    expected = expected / 3
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.pow(2).sum().backward()
    expected.pow(2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-5)
    cold = n_users + n_items - 1
    torch.testing.assert_close(prop.layers[0](x1, DeviceCSR.from_edge_index(ei, n))[cold], prop.layers[0].bias)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("layer_norm", [True, False])
def test_fusion_is_the_layer_normed_weighted_sum_unit_norm_only_when_asked(normalize, layer_norm):
    g = torch.Generator().manual_seed(3)
    parts = {"id": torch.randn(6, 8, generator=g), "text": 3 * torch.randn(6, 8, generator=g)}
    fusion = AdaptiveFusion(["id", "text"], 8, init={"id": 0.15, "text": 0.8}, default_init=0.5, dropout=0.1,
                            normalize=normalize, layer_norm=layer_norm, id_residual=False, learn_weights=True).eval()
    mixed = 0.15 * parts["id"] + 0.8 * parts["text"]
    expected = mixed
    if layer_norm:
        centred = mixed - mixed.mean(-1, keepdim=True)
        expected = centred / (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()  # LayerNorm at its init
    if normalize:
        expected = expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(fusion(parts), expected)


def layer_norm_at_init(x):
    centred = x - x.mean(-1, keepdim=True)
    return centred / (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()


def test_id_residual_fusion_adds_the_id_part_after_layer_norm_and_dropout_of_the_modality_parts():
    g = torch.Generator().manual_seed(4)
    parts = {"text": 3 * torch.randn(6, 8, generator=g), "id": torch.randn(6, 8, generator=g),
             "image": torch.randn(6, 8, generator=g)}
    fusion = AdaptiveFusion(["text", "id", "image"], 8, init={"id": 1.0, "text": 0.8, "image": 0.1}, default_init=0.5,
                            dropout=0.5, normalize=False, layer_norm=True, id_residual=True, learn_weights=True)
    expected = parts["id"] + layer_norm_at_init(0.8 * parts["text"] + 0.1 * parts["image"])
    torch.testing.assert_close(fusion.eval()(parts), expected)
    # in training the dropout zeroes modality coordinates only: where it drops, the ID part is what is left
    torch.manual_seed(0)
    train_out = fusion.train()(parts)
    dropped = (train_out - parts["id"]).abs() < 1e-7
    assert 0 < dropped.sum() < dropped.numel()
    torch.testing.assert_close(train_out[~dropped], (parts["id"] + 2 * (expected - parts["id"]))[~dropped])


@pytest.mark.parametrize("learn", [True, False])
def test_fusion_weights_are_learned_or_kept_at_their_initial_values(tiny_synthetic, tmp_path, learn):
    model = small_recgoat(tiny_synthetic, tmp_path, f"model.fusion.learn_weights={str(learn).lower()}",
                          "model.fusion.init={id:1.0,text:0.2,image:0.1}")
    before = model.fusion.weights.detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for batch in list(BPRBatches(tiny_synthetic, batch_size=64, seed=0, epoch_fn=lambda: 0))[:3]:
        optimizer.zero_grad()
        model.loss(batch)["loss"].backward()
        optimizer.step()
    torch.testing.assert_close(before, torch.tensor([1.0, 0.2, 0.1])[[["id", "text", "image"].index(n)
                                                                    for n in model.fusion.names]])
    assert torch.equal(model.fusion.weights.detach(), before) != learn


def test_propagated_users_are_fused_with_the_symmetrically_normalised_sum_of_their_items(tiny_synthetic, tmp_path):
    plain = small_recgoat(tiny_synthetic, tmp_path, "model.fusion.id_residual=true").eval()
    prop = small_recgoat(tiny_synthetic, tmp_path, "model.users=propagated", "model.fusion.id_residual=true").eval()
    prop.load_state_dict(plain.state_dict())
    train = tiny_synthetic.train.tocsr()
    du, di = np.diff(train.indptr), np.bincount(train.indices, minlength=train.shape[1])
    with torch.no_grad():
        a, b = plain.representations(), prop.representations()
        torch.testing.assert_close(b["item"], a["item"])
        for u in (0, 7, 42):
            items = train.indices[train.indptr[u]:train.indptr[u + 1]]
            w = torch.as_tensor(1.0 / np.sqrt(du[u] * di[items]), dtype=torch.float32)[:, None]
            parts = {"id": a["user"][u:u + 1],
                     **{m: (w * z[torch.as_tensor(items)]).sum(0, keepdim=True) for m, z in a["aligned"].items()}}
            torch.testing.assert_close(b["user"][u:u + 1], plain.fusion(parts), atol=1e-5, rtol=1e-5)


# the first attention layer's input h0 of each item_input, from the projection W x^m + b and the ID embeddings E
ITEM_INPUT_H0 = {"features_and_id": lambda projected, ids: projected + ids,        # FREEDOM's / MGCN's item view
                 "gated_id": lambda projected, ids: ids * torch.sigmoid(projected)}  # MGCN's purifier


@pytest.mark.parametrize("item_input", sorted(ITEM_INPUT_H0))
def test_item_input_brings_each_items_id_embedding_into_the_first_attention_layers_input(
        tiny_synthetic, tmp_path, item_input):
    plain = small_recgoat(tiny_synthetic, tmp_path).eval()
    with_id = small_recgoat(tiny_synthetic, tmp_path, f"model.item_input={item_input}").eval()
    with_id.load_state_dict(plain.state_dict())
    with torch.no_grad():
        features_only, both = plain.encode_modalities(), with_id.encode_modalities()
        for m in plain.modalities:
            encoder = plain.item_encoders[m]
            assert len(encoder.layers) == 1
            h0 = ITEM_INPUT_H0[item_input](encoder.proj(getattr(plain, f"x_{m}")), plain.item_emb)
            torch.testing.assert_close(both[m], encoder.layers[0](h0, plain.graphs[m]))
            assert not torch.allclose(both[m], features_only[m])
    # the ID embeddings get gradient through the modality branch
    with_id.train()
    sum(z.square().sum() for z in with_id.encode_modalities().values()).backward()
    assert with_id.item_emb.grad is not None and with_id.item_emb.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="model.item_input must be one of"):
        small_recgoat(tiny_synthetic, tmp_path, "model.item_input=ids")


@pytest.mark.parametrize("layers", [1, 2])
def test_id_item_graph_adds_the_id_embeddings_averaged_over_each_items_top_k_content_neighbours(
        tiny_synthetic, tmp_path, layers):
    k = 4
    plain = small_recgoat(tiny_synthetic, tmp_path, *NO_SIDE_VIEW, "model.id_item_graph_layers=0").eval()
    with_graph = small_recgoat(tiny_synthetic, tmp_path, *NO_SIDE_VIEW, f"model.id_item_graph_layers={layers}",
                               f"model.id_item_graph_k={k}").eval()
    with_graph.load_state_dict(plain.state_dict())
    for m in plain.modalities:  # each item is its own nearest neighbour, so it is among its k
        x = F.normalize(getattr(plain, f"x_{m}").double(), dim=1)
        assert bool(((x @ x.T).argmax(1) == torch.arange(len(x))).all())
    s = dense_item_view(plain, k)
    with torch.no_grad():
        a, b = plain.representations(), with_graph.representations()
        propagated = torch.linalg.matrix_power(s, layers) @ plain.item_emb
        torch.testing.assert_close(b["item_id"], a["item_id"] + propagated, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b["user"], a["user"])
    with pytest.raises(ValueError, match="model.id_item_graph_layers must be >= 0"):
        small_recgoat(tiny_synthetic, tmp_path, "model.id_item_graph_layers=-1")


def test_the_users_item_view_is_their_items_view_summed_with_symmetric_degree_weights(tiny_synthetic, tmp_path):
    items_only = small_recgoat(tiny_synthetic, tmp_path, *NO_SIDE_VIEW, "model.id_item_graph_layers=1").eval()
    both = small_recgoat(tiny_synthetic, tmp_path, *NO_SIDE_VIEW, "model.id_item_graph_layers=1",
                         "model.id_item_graph_users=true").eval()
    both.load_state_dict(items_only.state_dict())
    r_hat = dense_r_hat(tiny_synthetic)
    with torch.no_grad():
        a, b = items_only.representations(), both.representations()
        view = items_only.item_graph(items_only.item_emb)
        torch.testing.assert_close(b["user"], a["user"] + r_hat @ view, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b["item"], a["item"])
    with pytest.raises(ValueError, match="id_item_graph_users=true needs model.id_item_graph_layers > 0"):
        small_recgoat(tiny_synthetic, tmp_path, "model.id_item_graph_users=true", "model.id_item_graph_layers=0")


def dense_item_view(model: RecGOAT, k: int) -> torch.Tensor:
    """Brute-force ``S``: each item averages its ``k`` most cosine-similar items, mean over the modalities."""
    s = 0
    for m in model.modalities:
        x = F.normalize(getattr(model, f"x_{m}").double(), dim=1)
        top = (x @ x.T).topk(k, dim=1).indices
        s = s + torch.zeros(len(x), len(x), dtype=torch.float64).scatter_(1, top, 1.0 / k)
    return (s / len(model.modalities)).float()


def dense_r_hat(dataset) -> torch.Tensor:
    """Brute-force ``R^ = D_u^-1/2 R D_i^-1/2`` from the training pairs."""
    r = torch.from_numpy((dataset.train.toarray() > 0).astype("float64"))
    du, di = r.sum(1).clamp(min=1), r.sum(0).clamp(min=1)
    return (r / du.sqrt()[:, None] / di.sqrt()[None, :]).float()


def test_the_gated_item_view_spreads_the_id_embeddings_times_a_content_gate(tiny_synthetic, tmp_path):
    k = 4
    no_view = small_recgoat(tiny_synthetic, tmp_path, *NO_SIDE_VIEW, "model.id_item_graph_layers=0").eval()
    gated = small_recgoat(tiny_synthetic, tmp_path, *NO_SIDE_VIEW, "model.id_item_graph_layers=1",
                          f"model.id_item_graph_k={k}", "model.id_item_graph_gate=true").eval()
    gated.load_state_dict(no_view.state_dict(), strict=False)  # the gates are the only extra parameters
    with torch.no_grad():
        gate = torch.sigmoid(sum(F.linear(getattr(gated, f"x_{m}"), lin.weight, lin.bias)
                                 for m, lin in gated.item_graph_gates.items()))
        expected = no_view.representations()["item_id"] + dense_item_view(gated, k) @ (gated.item_emb * gate)
        torch.testing.assert_close(gated.representations()["item_id"], expected, atol=1e-5, rtol=1e-5)
    batch = next(iter(BPRBatches(tiny_synthetic, batch_size=64, seed=0, epoch_fn=lambda: 0)))
    gated.train()
    gated.loss(batch)["loss"].backward()
    assert all(float(p.grad.abs().sum()) > 0 for p in gated.item_graph_gates.parameters())
    with pytest.raises(ValueError, match="id_item_graph_gate=true needs model.id_item_graph_layers > 0"):
        small_recgoat(tiny_synthetic, tmp_path, "model.id_item_graph_gate=true", "model.id_item_graph_layers=0")


def test_view_cl_is_infonce_between_the_two_views_of_the_id_embeddings_over_the_batch_rows(tiny_synthetic, tmp_path):
    k, weight, tau = 4, 0.5, 0.3
    common = ("model.side_view=null", "model.id_item_graph_layers=1", f"model.id_item_graph_k={k}", "model.cmcl=null",
              "model.oat_w1=null")
    plain = small_recgoat(tiny_synthetic, tmp_path, *common, "model.view_cl=null").eval()
    with_cl = small_recgoat(tiny_synthetic, tmp_path, *common,
                            f"model.view_cl={{_target_:recgoat.nn.CMCL,weight:{weight},tau:{tau}}}").eval()
    with_cl.load_state_dict(plain.state_dict())
    no_view = small_recgoat(tiny_synthetic, tmp_path, *NO_SIDE_VIEW, "model.id_item_graph_layers=0").eval()
    no_view.load_state_dict(plain.state_dict(), strict=False)
    batch = next(iter(BPRBatches(tiny_synthetic, batch_size=64, seed=0, epoch_fn=lambda: 0)))
    with torch.no_grad():
        ref = no_view.representations()  # the user-item graph's view alone: LightGCN's users and items
        ii_item = dense_item_view(plain, k) @ plain.item_emb
        ii_user = dense_r_hat(tiny_synthetic) @ ii_item
        u, i = batch["user"], batch["pos"]
        expected = info_nce(ii_item[i], ref["item_id"][i], tau) + info_nce(ii_user[u], ref["user"][u], tau)
        out, base = with_cl.loss(batch), plain.loss(batch)
    torch.testing.assert_close(out["view_cl"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["loss"], base["loss"] + weight * expected, atol=1e-5, rtol=1e-5)
    # the users' view enters the loss only, not the users' representation (that is id_item_graph_users)
    torch.testing.assert_close(with_cl.representations()["user"], ref["user"])
    with pytest.raises(ValueError, match="model.view_cl needs model.id_item_graph_layers > 0"):
        small_recgoat(tiny_synthetic, tmp_path, "model.id_item_graph_layers=0", "model.side_view=null",
                      "model.view_cl={_target_:recgoat.nn.CMCL,weight:0.1,tau:0.2}")


def test_mgcns_side_view_is_added_to_the_id_branch_and_contrasted_with_the_user_item_view(tiny_synthetic, tmp_path):
    side = "model.side_view={_target_:recgoat.models.mgcn.MGCNSideView,_partial_:true,knn_k:5,n_layers:1," \
           "finetune_features:false,gate_input:features}"
    common = ("model.id_item_graph_layers=0", "model.cmcl=null", "model.oat_w1=null")
    plain = small_recgoat(tiny_synthetic, tmp_path, *common, *NO_SIDE_VIEW).eval()
    with_side = small_recgoat(tiny_synthetic, tmp_path, *common, side,
                              "model.view_cl={_target_:recgoat.nn.CMCL,weight:0.5,tau:0.3}").eval()
    with_side.load_state_dict(plain.state_dict(), strict=False)  # the side view's parameters are the extra ones
    batch = next(iter(BPRBatches(tiny_synthetic, batch_size=64, seed=0, epoch_fn=lambda: 0)))
    n_users = plain.n_users
    with torch.no_grad():
        ref = plain.representations()  # users=id and no item view: the user-item view itself
        content = torch.cat([ref["user"], ref["item_id"]])
        view = with_side.side_view(with_side.item_emb, content)
        reps = with_side.representations()
        torch.testing.assert_close(reps["item_id"], ref["item_id"] + view[n_users:])
        torch.testing.assert_close(reps["user"], ref["user"] + view[:n_users])
        u, i = batch["user"], batch["pos"]
        expected = (info_nce(view[n_users:][i], ref["item_id"][i], 0.3)
                    + info_nce(view[:n_users][u], ref["user"][u], 0.3))
        torch.testing.assert_close(with_side.loss(batch)["view_cl"], expected)
    with_side.train()
    with_side.loss(batch)["loss"].backward()
    trained = [p for p in with_side.side_view.parameters() if p.requires_grad]
    assert trained and all(float(p.grad.abs().sum()) > 0 for p in trained)


def test_side_view_gated_by_the_aligned_modalities_brings_them_into_the_score(tiny_synthetic, tmp_path):
    side = "model.side_view={_target_:recgoat.models.mgcn.MGCNSideView,_partial_:true,knn_k:5,n_layers:1," \
           "finetune_features:false,gate_input:given}"
    # modality weights fixed at 0 and no alignment term: only the side view can carry the modalities into the loss
    common = ("model.id_item_graph_layers=0", "model.cmcl=null", "model.oat_w1=null", "model.user_encoder=null",
              "model.fusion.learn_weights=false")
    plain = small_recgoat(tiny_synthetic, tmp_path, *common, *NO_SIDE_VIEW).eval()
    gated = small_recgoat(tiny_synthetic, tmp_path, *common, side, "model.view_cl=null").eval()
    gated.load_state_dict(plain.state_dict(), strict=False)
    assert not hasattr(gated.side_view, "projections")  # no raw-feature path of its own
    n_users = plain.n_users
    with torch.no_grad():
        ref = plain.representations()  # the aligned modalities are mapped towards the view-less ID items
        content = torch.cat([ref["user"], ref["item_id"]])
        view = gated.side_view(gated.item_emb, content, ref["aligned"])
        reps = gated.representations()
        torch.testing.assert_close(reps["item_id"], ref["item_id"] + view[n_users:])
        torch.testing.assert_close(reps["user"], ref["user"] + view[:n_users])
        torch.testing.assert_close(reps["item"], reps["item_id"])  # fusion: id 1, modalities 0
    with pytest.raises(ValueError, match="gate_input='given' was not given gates"):
        gated.side_view(gated.item_emb, content)
    batch = next(iter(BPRBatches(tiny_synthetic, batch_size=64, seed=0, epoch_fn=lambda: 0)))
    for model, reached in ((plain, False), (gated, True)):
        model.train()
        model.zero_grad()
        model.loss(batch)["loss"].backward()
        grads = [p.grad for p in model.item_encoders.parameters()]
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads) == reached


def test_user_cmcl_pulls_each_users_modality_views_towards_the_fused_user(tiny_synthetic, tmp_path):
    common = ("model.users=propagated", "model.oat_w1=null")
    plain = small_recgoat(tiny_synthetic, tmp_path, *common).eval()
    both = small_recgoat(tiny_synthetic, tmp_path, *common, "model.cmcl_users=true").eval()
    both.load_state_dict(plain.state_dict())
    batch = next(iter(BPRBatches(tiny_synthetic, batch_size=64, seed=0, epoch_fn=lambda: 0)))
    with torch.no_grad():
        reps = plain.representations()
        users = torch.unique(batch["user"])
        r_hat = dense_r_hat(tiny_synthetic)
        views = {m: (r_hat @ z)[users] for m, z in reps["aligned"].items()}
        expected = cmcl_loss(views, reps["user"][users], plain.cmcl.tau)
        out, base = both.loss(batch), plain.loss(batch)
    torch.testing.assert_close(out["cmcl_users"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["cmcl"], base["cmcl"] + expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="model.cmcl_users=true needs model.cmcl and model.users=fused or propagated"):
        small_recgoat(tiny_synthetic, tmp_path, "model.cmcl_users=true")


@pytest.mark.parametrize("init", [0.0, 1.0])
def test_the_user_lm_branch_is_added_with_its_learned_weight_from_its_initial_value(tiny_synthetic, tmp_path, init):
    model = small_recgoat(tiny_synthetic, tmp_path, f"model.user_llm_init={init}")
    no_branch = small_recgoat(tiny_synthetic, tmp_path, "model.user_encoder=null").eval()
    assert model.user_llm_weight.item() == init
    model.eval()
    state = {n: p for n, p in model.state_dict().items() if n in no_branch.state_dict()}
    no_branch.load_state_dict(state)
    with torch.no_grad():
        same = torch.allclose(model.representations()["user"], no_branch.representations()["user"])
    assert same == (init == 0.0)
    model.train()
    batch = next(iter(BPRBatches(tiny_synthetic, batch_size=64, seed=0, epoch_fn=lambda: 0)))
    model.loss(batch)["loss"].backward()
    assert float(model.user_llm_weight.grad.abs()) > 0  # learned from 0 too


@pytest.mark.parametrize("align_to", ["trainable", "detached"])
def test_detached_alignment_moves_the_modality_branches_only(tiny_synthetic, tmp_path, align_to):
    model = small_recgoat(tiny_synthetic, tmp_path, f"model.align_to={align_to}")
    batch = next(iter(BPRBatches(tiny_synthetic, batch_size=64, seed=0, epoch_fn=lambda: 0)))
    out = model.loss(batch)
    (out["cmcl"] + out["oat_w1"]).backward()
    id_side = [model.item_emb, model.user_emb, *model.id_encoder.parameters()]
    id_grad = sum(float(p.grad.abs().sum()) for p in id_side if p.grad is not None)
    modality_grad = sum(float(p.grad.abs().sum()) for p in model.item_encoders.parameters() if p.grad is not None)
    assert modality_grad > 0
    assert (id_grad == 0.0) == (align_to == "detached")


def test_alignment_to_id_contrasts_the_modalities_with_the_trainable_id_representation(tiny_synthetic, tmp_path):
    model = small_recgoat(tiny_synthetic, tmp_path, "model.align_to=id", "model.oat_w1=null")
    batch = next(iter(BPRBatches(tiny_synthetic, batch_size=64, seed=0, epoch_fn=lambda: 0)))
    model.eval()
    with torch.no_grad():
        reps, items = model.representations(), torch.unique(batch["pos"])
        expected = cmcl_loss({m: z[items] for m, z in reps["aligned"].items()}, reps["item_id"][items], model.cmcl.tau)
        torch.testing.assert_close(model.loss(batch)["cmcl"], expected)
    model.train()
    model.loss(batch)["cmcl"].backward()
    assert float(model.item_emb.grad.abs().sum()) > 0  # the ID side moves too
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.fusion.parameters())  # not via fusion


def test_unknown_user_fusion_is_an_error(tiny_synthetic, tmp_path):
    with pytest.raises(ValueError, match="model.users must be one of .*'both'"):
        small_recgoat(tiny_synthetic, tmp_path, "model.users=both")


def test_ranking_scores_equal_training_scores_in_eval_mode(tiny_synthetic, tmp_path):
    model = small_recgoat(tiny_synthetic, tmp_path).eval()
    batch = next(iter(BPRBatches(tiny_synthetic, batch_size=64, seed=0, epoch_fn=lambda: 0)))
    with torch.no_grad():
        out = model.loss(batch)
        pos, neg = model.score_pairs(batch["user"], batch["pos"]), model.score_pairs(batch["user"], batch["neg"])
    torch.testing.assert_close(out["bpr"], bpr_loss(pos, neg))


def test_dataset_without_item_features_is_a_clear_error(tiny_synthetic):
    d = RecDataset("bare", tiny_synthetic.train, tiny_synthetic.valid, tiny_synthetic.test)
    with pytest.raises(DataError, match="RecGOAT needs item modality features.*'bare' has none"):
        build_model(d, ["model=recgoat"])
    with pytest.raises(DataError, match="user LM branch needs user features.*model.user_encoder=null"):
        build_model(RecDataset("nouser", d.train, d.valid, d.test, item_features=tiny_synthetic.item_features),
                    ["model=recgoat_spec"])


def test_missing_modality_rows_error_or_documented_fallback(tiny_synthetic, tmp_path):
    feats = {k: v.copy() for k, v in tiny_synthetic.item_features.items()}
    feats["image"][[3, 7]] = 0.0
    d = RecDataset("gap", tiny_synthetic.train, tiny_synthetic.valid, tiny_synthetic.test, item_features=feats,
                   user_features=tiny_synthetic.user_features)
    missing = r"item feature 'image': 2 of 90 rows are all zeros \(missing\), first at row 3"
    with pytest.raises(DataError, match=missing):
        small_recgoat(d, tmp_path)
    model = small_recgoat(d, tmp_path, "model.missing_features=mean")
    filled = model.x_image[3]
    torch.testing.assert_close(filled, torch.from_numpy(np.delete(feats["image"], [3, 7], axis=0).mean(0)))


@pytest.mark.parametrize("experiment", [p.stem for p in sorted((CONF / "experiment").glob("*.yaml"))
                                        if p.stem != "authors_baby"])
def test_every_experiment_config_composes_and_trains_two_epochs(tmp_path, experiment):
    overrides = [f"+experiment={experiment}", *TINY_DATA, *QUIET, "trainer.max_epochs=2",
                 f"paths.cache_dir={tmp_path / 'cache'}"]
    if experiment not in ("id_only", "naive_fusion"):  # no kNN graphs
        overrides += ["model.knn_k=5", "model.user_knn_k=5"]
    res = run_in_process(overrides, tmp_path)
    assert res["name"] == experiment and len(res["valid_history"]) == 2
    assert 0.0 < res["test"]["recall@20"] <= 1.0   # 20 of 100 items: a working ranking finds some


def test_authors_preset_composes(tmp_path):
    from tests.helpers import compose_cfg
    cfg = compose_cfg(["+experiment=authors_baby"], tmp_path)
    assert cfg.model.embedding_dim == 800 and cfg.optimizer.lr == 8e-4 and cfg.datamodule.batch_size == 4096
    assert cfg.model._target_ == "recgoat.models.RecGOAT" and cfg.model.cmcl.weight == 0.032


def test_warm_started_plan_reaches_the_same_fixed_point_faster():
    g = torch.Generator().manual_seed(7)
    zm, zid = torch.randn(400, 16, generator=g), torch.randn(400, 16, generator=g)
    cold = DimensionTransport(eps=0.01, warm_start=False)
    warm = DimensionTransport(eps=0.01)
    warm.plan(zm, zid, key="text")                       # fills the cache
    nudged = zm + 1e-3 * torch.randn(400, 16, generator=g)
    p_cold, p_warm = cold.plan(nudged, zid, key="text"), warm.plan(nudged, zid, key="text")
    torch.testing.assert_close(p_warm, p_cold, atol=5e-3, rtol=0)
    torch.testing.assert_close(p_warm.sum(0), torch.ones(16), atol=1e-4, rtol=0)
    assert warm.last_iters <= cold.last_iters


def test_fused_users_are_the_fusion_of_their_id_part_and_their_items_mean_modalities(tiny_synthetic, tmp_path):
    plain = small_recgoat(tiny_synthetic, tmp_path).eval()
    fused = small_recgoat(tiny_synthetic, tmp_path, "model.users=fused").eval()
    fused.load_state_dict(plain.state_dict())
    with torch.no_grad():
        a, b = plain.representations(), fused.representations()
        torch.testing.assert_close(b["item"], a["item"])
        train = tiny_synthetic.train.tocsr()
        for u in (0, 7, 42):
            items = torch.as_tensor(train.indices[train.indptr[u]:train.indptr[u + 1]])
            parts = {"id": a["user"][u:u + 1], **{m: z[items].mean(0, keepdim=True) for m, z in a["aligned"].items()}}
            torch.testing.assert_close(b["user"][u:u + 1], plain.fusion(parts), atol=1e-5, rtol=1e-5)

