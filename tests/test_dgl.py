"""The optional DGL backend: parity with the default PyG path (run by `make test-dgl`, where DGL is installed),
and, everywhere, that the package never imports DGL unless it is selected and says how to get it."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
from hydra.errors import InstantiationException
from torch_geometric.nn import GATConv

from recgoat.graphs import DeviceCSR, normalized_bipartite_adjacency
from recgoat.graphs.csr import to_torch_csr
from recgoat.nn import FusedGATConv, LightGCNPropagation, check_backend
from recgoat.utils.config import build_model
from tests.helpers import QUIET, TINY_DATA, run_in_process


def dgl_importable() -> bool:
    if importlib.util.find_spec("dgl") is None:
        return False
    try:
        check_backend("dgl")
        return True
    except ImportError:
        return False


HAS_DGL = dgl_importable()
needs_dgl = pytest.mark.skipif(not HAS_DGL, reason="DGL is not importable in this environment (its wheels need "
                                                   "torch <= 2.2.1); `make test-dgl` runs these tests in .venv-dgl")
pytestmark = pytest.mark.dgl

TOL = {"rtol": 1e-5, "atol": 1e-5}


def random_graph(n: int, avg_degree: int, seed: int) -> DeviceCSR:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (n * avg_degree,), generator=g)
    dst = torch.randint(0, n, (n * avg_degree,), generator=g)
    loops = torch.arange(n)
    edges = torch.unique(torch.stack([torch.cat([src, loops]), torch.cat([dst, loops])]), dim=1)
    return DeviceCSR.from_edge_index(edges, n)


# ---- everywhere --------------------------------------------------------------------------------
@needs_dgl  # where DGL cannot be imported it cannot be imported by mistake either
def test_the_package_does_not_import_dgl_unless_selected():
    code = ("import sys, recgoat, recgoat.run, recgoat.models, recgoat.nn, recgoat.graphs, recgoat.training, "
            "recgoat.recommend, recgoat.export, recgoat.report; print('dgl' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def small_recgoat(dataset, tmp_path, *overrides: str):
    torch.manual_seed(0)
    return build_model(dataset, ["model=recgoat", "model/user_branch=gat", "model.embedding_dim=16",
                                 "model.modality_branches.knn_k=5", "model.user_branch.knn_k=5",
                                 "model.modality_branches.encoder.heads=4", "model.user_branch.encoder.heads=4",
                                 f"paths.cache_dir={tmp_path}", *overrides])


def test_unknown_backend_is_an_error(tiny_synthetic, tmp_path):
    # Hydra builds the components first and wraps their error with the failing node's target
    with pytest.raises(InstantiationException, match=r"model.backend must be one of \('pyg', 'dgl'\), got 'jax'"):
        small_recgoat(tiny_synthetic, tmp_path, "model.backend=jax")


@pytest.mark.skipif(HAS_DGL, reason="DGL is importable here: the missing-DGL message cannot be seen")
def test_selecting_dgl_without_dgl_fails_at_start_up_with_instructions(tiny_synthetic, tmp_path):
    with pytest.raises(InstantiationException, match=r"model.backend=dgl needs DGL.*make test-dgl"):
        small_recgoat(tiny_synthetic, tmp_path, "model.backend=dgl")


# ---- parity (DGL installed) ----------------------------------------------------------------------
@needs_dgl
@pytest.mark.parametrize("heads,channels", [(1, 8), (4, 4), (8, 8)])
def test_gat_layer_outputs_and_gradients_match_pyg(heads, channels):
    from recgoat.nn.dgl_backend import DGLGATConv

    torch.manual_seed(0)
    n, d_in = 300, 24
    graph = random_graph(n, 6, seed=heads)
    fused = FusedGATConv(d_in, channels, heads=heads).eval()
    torch.nn.init.normal_(fused.bias)
    pyg = GATConv(d_in, channels, heads=heads, add_self_loops=False).eval()
    dgl_layer = DGLGATConv(d_in, channels, heads=heads).eval()
    # the same weights, through the checkpoint path: PyG names load into the DGL layer and come back out
    pyg.load_state_dict(fused.state_dict())
    dgl_layer.load_state_dict(fused.state_dict())
    assert set(dgl_layer.state_dict()) == set(fused.state_dict())
    for name, value in dgl_layer.state_dict().items():
        torch.testing.assert_close(value, fused.state_dict()[name], rtol=0, atol=0)

    x = torch.randn(n, d_in)
    outs, grads = [], []
    for layer, g in ((fused, graph), (pyg, graph.edge_index()), (dgl_layer, graph)):
        xi = x.clone().requires_grad_(True)
        out = layer(xi, g)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append({"x": xi.grad, **{k: p.grad for k, p in layer.named_parameters()}})
    names = {"lin.weight": "fc.weight", "att_src": "attn_l", "att_dst": "attn_r", "bias": "bias"}
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], **TOL)
    torch.testing.assert_close(grads[2]["x"], grads[0]["x"], **TOL)
    for pyg_name, dgl_name in names.items():
        torch.testing.assert_close(grads[1][pyg_name], grads[0][pyg_name], **TOL)
        torch.testing.assert_close(grads[2][dgl_name], grads[0][pyg_name], **TOL)


@needs_dgl
def test_lightgcn_propagation_outputs_and_gradients_match(tiny_synthetic):
    from recgoat.nn.dgl_backend import DGLLightGCNPropagation

    adj = to_torch_csr(normalized_bipartite_adjacency(tiny_synthetic.train))
    x = torch.randn(adj.shape[0], 16, generator=torch.Generator().manual_seed(1))
    results = []
    for layer in (LightGCNPropagation(3), DGLLightGCNPropagation(3)):
        xi = x.clone().requires_grad_(True)
        out = layer(xi, adj)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), xi.grad))
    torch.testing.assert_close(results[1][0], results[0][0], **TOL)
    torch.testing.assert_close(results[1][1], results[0][1], **TOL)


@needs_dgl
@pytest.mark.parametrize("ui", ["lightgcn", "attention"])
def test_recgoat_checkpoint_loads_under_either_backend_and_scores_the_same(tiny_synthetic, tmp_path, ui):
    extra = ["+experiment=ui_attention", "ablate.id_encoder.heads=4"] if ui == "attention" else []
    pyg = small_recgoat(tiny_synthetic, tmp_path, *extra).eval()
    dgl_model = small_recgoat(tiny_synthetic, tmp_path, "model.backend=dgl", *extra).eval()
    dgl_model.load_state_dict(pyg.state_dict(), strict=True)
    assert set(dgl_model.state_dict()) == set(pyg.state_dict())
    users = torch.arange(tiny_synthetic.n_users)
    torch.testing.assert_close(dgl_model.scorer().score(users), pyg.scorer().score(users), **TOL)
    pyg.load_state_dict(dgl_model.state_dict(), strict=True)


@needs_dgl
def test_short_recgoat_training_gives_the_same_metrics_under_both_backends(tmp_path):
    results = {}
    for backend in ("pyg", "dgl"):
        overrides = ["+experiment=recgoat", *TINY_DATA, *QUIET, "trainer.max_epochs=3", "seed=5",
                     "model.modality_branches.knn_k=5", f"model.backend={backend}",
                     f"paths.cache_dir={tmp_path / 'cache'}"]
        results[backend] = run_in_process(overrides, tmp_path / backend)
    for split in ("valid", "test"):
        for metric, value in results["pyg"][split].items():
            assert results["dgl"][split][metric] == pytest.approx(value, abs=1e-4), (split, metric)
    for a, b in zip(results["pyg"]["valid_history"], results["dgl"]["valid_history"], strict=True):
        assert b["recall@20"] == pytest.approx(a["recall@20"], abs=1e-4)


@needs_dgl
@pytest.mark.parametrize("name", ["lightgcn", "freedom", "mgcn", "lgmrec"])
def test_every_lightgcn_model_scores_the_same_under_both_backends(tiny_synthetic, tmp_path, name):
    small = ["model.knn_k=5"] if name in ("freedom", "mgcn") else []
    torch.manual_seed(0)
    pyg = build_model(tiny_synthetic, [f"model={name}", f"paths.cache_dir={tmp_path}", *small]).eval()
    torch.manual_seed(0)
    dgl_model = build_model(tiny_synthetic, [f"model={name}", f"paths.cache_dir={tmp_path}", "model.backend=dgl",
                                             *small]).eval()
    for name_, value in pyg.state_dict().items():   # same seed, same initial weights
        torch.testing.assert_close(dgl_model.state_dict()[name_], value, rtol=0, atol=0)
    users = torch.arange(tiny_synthetic.n_users)
    torch.testing.assert_close(dgl_model.scorer().score(users), pyg.scorer().score(users), **TOL)
