"""The multimodal baselines (VBPR, FREEDOM, MGCN, LGMRec, SMORE, MENTOR) on the narrow model API."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recgoat.data import DataError, RecDataset
from recgoat.graphs import degree_sensitive_pruning, normalized_bipartite_adjacency
from recgoat.models import FREEDOM, MENTOR, MGCN, SMORE, VBPR, LGMRec
from recgoat.models.side_features import mixing_weights
from recgoat.utils.config import build_model
from tests.helpers import bpr, bpr_batches, bpr_reference

BASELINES = {"vbpr": VBPR, "freedom": FREEDOM, "mgcn": MGCN, "lgmrec": LGMRec, "smore": SMORE, "mentor": MENTOR}


def build(cls, dataset, tmp_path, *overrides: str):
    """The model's real config at d=16 (k=5 for the kNN graphs)."""
    name = next(n for n, c in BASELINES.items() if c is cls)
    small = [] if cls in (VBPR, LGMRec) else ["model.knn_k={image:5,text:5}"] if cls is SMORE else ["model.knn_k=5"]
    torch.manual_seed(0)
    return build_model(dataset, [f"model={name}", "model.embedding_dim=16", f"paths.cache_dir={tmp_path}", *small,
                                 *overrides])


def first_batch(dataset, size=64):
    return next(iter(bpr_batches(dataset, batch_size=size, seed=0, epoch_fn=lambda: 0)))


@pytest.mark.parametrize("name", list(BASELINES))
def test_full_ranking_scores_equal_the_batch_loss_scores(tiny_synthetic, tmp_path, name):
    torch.manual_seed(0)
    model = build(BASELINES[name], tiny_synthetic, tmp_path).eval()
    batch = first_batch(tiny_synthetic)
    with torch.no_grad():
        out = model.loss(batch, bpr())
        pos = model.score_pairs(batch["user"], batch["pos"])
        neg = model.score_pairs(batch["user"], batch["neg"])
    torch.testing.assert_close(out["bpr"], bpr_reference(pos, neg), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(BASELINES))
def test_gradients_reach_every_trainable_parameter(tiny_synthetic, tmp_path, name):
    torch.manual_seed(0)
    model = build(BASELINES[name], tiny_synthetic, tmp_path).train()
    model.on_train_epoch_start(0)
    model.loss(first_batch(tiny_synthetic), bpr())["loss"].backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and [n for n, p in model.named_parameters()
                          if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)] == []


@pytest.mark.parametrize("name", list(BASELINES))
def test_needs_item_features_and_names_the_model(tiny_synthetic, tmp_path, name):
    bare = RecDataset("bare", tiny_synthetic.train, tiny_synthetic.valid, tiny_synthetic.test)
    cls = BASELINES[name]
    with pytest.raises(DataError, match=f"{cls.__name__} needs item modality features.*'bare' has none"):
        build(cls, bare, tmp_path)


def test_vbpr_score_is_id_part_plus_content_part(tiny_synthetic, tmp_path):
    model = build(VBPR, tiny_synthetic, tmp_path, "model.embedding_dim=8").eval()
    u, i = torch.tensor([0, 5, 7]), torch.tensor([3, 3, 60])
    x = np.concatenate([tiny_synthetic.item_features["text"], tiny_synthetic.item_features["image"]], axis=1)
    gamma_u, theta_u = model.user_emb[u, :8], model.user_emb[u, 8:]
    content = torch.from_numpy(x[i.numpy()]) @ model.item_linear.weight.T + model.item_linear.bias
    expected = (gamma_u * model.item_emb[i]).sum(-1) + (theta_u * content).sum(-1)
    torch.testing.assert_close(model.score_pairs(u, i), expected.detach())


def test_freedom_pruning_keeps_the_configured_share_degree_sensitively():
    rng = np.random.default_rng(0)
    # users 0-9 interact with everything (high degree), users 10-209 with a few items each
    dense = np.zeros((210, 40), dtype=np.float32)
    dense[:10] = 1
    for u in range(10, 210):
        dense[u, rng.choice(40, 3, replace=False)] = 1
    train = sp.csr_matrix(dense)
    kept_counts = np.zeros_like(dense)
    for epoch in range(40):
        kept = degree_sensitive_pruning(train, 0.3, torch.Generator().manual_seed(epoch))
        assert kept.nnz == int(train.nnz * 0.3)
        assert (kept.multiply(train) != kept).nnz == 0          # a subset of the training edges, no duplicates
        assert set(kept.data) == {1.0}
        kept_counts += kept.toarray()
    share_heavy = kept_counts[:10].sum() / (40 * dense[:10].sum())
    share_light = kept_counts[10:].sum() / (40 * dense[10:].sum())
    assert share_light > 2 * share_heavy                        # edges of low-degree users survive more often
    a = degree_sensitive_pruning(train, 0.3, torch.Generator().manual_seed(1))
    b = degree_sensitive_pruning(train, 0.3, torch.Generator().manual_seed(1))
    assert (a != b).nnz == 0


def test_freedom_trains_on_the_pruned_graph_and_ranks_on_the_full_one(tiny_synthetic, tmp_path):
    model = build(FREEDOM, tiny_synthetic, tmp_path, "model.prune_ratio=0.8")
    n_nodes = tiny_synthetic.n_users + tiny_synthetic.n_items
    model.on_train_epoch_start(3)
    pruned = model.pruned_adj.matrix()
    assert pruned._nnz() == 2 * int(tiny_synthetic.train.nnz * 0.2) and pruned.shape == (n_nodes, n_nodes)
    first = pruned.col_indices().clone()
    model.on_train_epoch_start(4)
    assert not torch.equal(first, model.pruned_adj.matrix().col_indices())
    full = normalized_bipartite_adjacency(tiny_synthetic.train)
    assert model.full_adj.matrix()._nnz() == full.nnz
    model.eval()
    u_eval, _ = model()
    model.train()
    u_train, _ = model()
    assert not torch.allclose(u_eval, u_train)


def test_freedom_mixing_weights():
    assert mixing_weights(["text", "image"], {"image": 0.1}) == pytest.approx({"text": 0.9, "image": 0.1})
    assert mixing_weights(["text"], {"image": 0.1}) == {"text": 1.0}
    assert mixing_weights(["a", "b", "c"], {}) == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    with pytest.raises(ValueError, match="leave nothing"):
        mixing_weights(["a", "b"], {"a": 1.5})


def test_lgmrec_ranks_deterministically_and_trains_with_noise(tiny_synthetic, tmp_path):
    model = build(LGMRec, tiny_synthetic, tmp_path).eval()
    a, b = model.scorer(), model.scorer()
    torch.testing.assert_close(a.item_emb, b.item_emb, rtol=0, atol=0)
    model.train()
    z1, _ = model.representations()
    z2, _ = model.representations()
    assert not torch.allclose(z1, z2)
