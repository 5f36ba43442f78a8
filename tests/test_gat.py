"""Graph attention: the fused CSR kernel against PyG's GATConv, and LightGCN-style attention propagation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch_geometric.nn import GATConv
from torch_geometric.utils import scatter

from recgoat.graphs import DeviceCSR, bipartite_adjacency
from recgoat.nn import AttentionPropagation, FusedGATConv, GraphAttentionEncoder, edge_dropout
from tests.helpers import binary_knn, edge_index


@pytest.mark.parametrize("csr", [True, False])
def test_attention_weights_over_each_nodes_in_edges_sum_to_one(csr):
    x = np.random.default_rng(3).normal(size=(40, 5)).astype(np.float32)
    ei = edge_index(binary_knn(x, 4))
    graph = DeviceCSR.from_edge_index(ei, 40) if csr else ei
    enc = GraphAttentionEncoder(5, 16, n_layers=1, heads=4, dropout=0.1, negative_slope=0.2, backend="pyg").eval()
    h = enc.proj(torch.from_numpy(x))
    _, (ei_out, alpha) = enc.layers[0](h, graph, return_attention_weights=True)
    assert alpha.shape == (ei.shape[1], 4)
    sums = scatter(alpha, ei_out[1], dim=0, dim_size=40, reduce="sum")  # per target node and head
    torch.testing.assert_close(sums, torch.ones(40, 4))
    assert (alpha > 0).all()


def test_fused_gat_equals_pyg_gatconv_outputs_and_gradients():
    x = np.random.default_rng(4).normal(size=(300, 6)).astype(np.float32)
    ei = edge_index(binary_knn(x, 7))
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


def test_attention_propagation_is_the_layer_mean_of_pyg_gatconv_layers():
    # a bipartite graph with a cold item (no in-edges): its layer output is the bias alone
    rng = np.random.default_rng(0)
    n_users, n_items = 12, 9
    rows, cols = np.nonzero(rng.random((n_users, n_items - 1)) < 0.3)
    train = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    ei = edge_index(bipartite_adjacency(train))
    n = n_users + n_items
    torch.manual_seed(0)
    prop = AttentionPropagation(16, n_layers=2, heads=4, dropout=0.0, negative_slope=0.2, backend="pyg")
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
