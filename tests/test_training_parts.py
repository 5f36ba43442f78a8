"""BPR sampling, sparse propagation and the model API against dense references."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recgoat.data import DataError, RecDataset, matrix_from_pairs
from recgoat.graphs import normalized_bipartite_adjacency
from recgoat.graphs.csr import DeviceCSR, spmm, to_torch_csr
from recgoat.models import MostPop
from recgoat.nn import LightGCNPropagation, embedding_norm_penalty
from recgoat.utils.config import build_model
from tests.helpers import bpr, bpr_batches, bpr_reference, from_yaml


def test_negatives_never_hit_training_items(tiny_synthetic):
    d = tiny_synthetic
    sampler = from_yaml("loss.negatives")(dataset=d)
    users = torch.from_numpy(d.train_pairs()[0]).repeat(20)
    neg = sampler.sample(users, torch.Generator().manual_seed(0))
    dense = torch.from_numpy(d.train.toarray()).bool()
    assert not dense[users, neg].any()
    assert neg.min() >= 0 and neg.max() < d.n_items
    # roughly uniform over each user's non-training items: every item appears
    assert len(torch.unique(neg)) == d.n_items


def test_user_with_every_item_cannot_be_sampled():
    m = matrix_from_pairs([0, 0, 1], [0, 1, 0], 2, 2)
    d = RecDataset("full", m, matrix_from_pairs([1], [1], 2, 2), matrix_from_pairs([1], [1], 2, 2))
    with pytest.raises(DataError, match="user index 0 has every item in training"):
        from_yaml("loss.negatives")(dataset=d)


def test_epochs_are_deterministic_and_shards_partition_the_pairs(tiny_synthetic):
    d = tiny_synthetic
    epoch = {"e": 0}
    loader = bpr_batches(d, batch_size=64, seed=5, epoch_fn=lambda: epoch["e"])
    first = [b["neg"].clone() for b in loader]
    assert all(torch.equal(a, b["neg"]) for a, b in zip(first, loader, strict=True))
    epoch["e"] = 1
    assert not torch.equal(first[0], next(iter(loader))["neg"])
    # two ranks: together they cover every training pair exactly once (plus padding)
    epoch["e"] = 0
    seen = []
    for rank in range(2):
        shard = bpr_batches(d, batch_size=64, seed=5, epoch_fn=lambda: 0, rank_fn=lambda r=rank: (r, 2))
        batches = list(shard)
        assert len(batches) == len(shard)
        seen += [(int(u), int(i)) for b in batches for u, i in zip(b["user"], b["pos"], strict=True)]
    pairs = set(zip(*(a.tolist() for a in d.train_pairs()), strict=True))
    assert set(seen) == pairs and len(seen) - len(pairs) <= 1


def test_spmm_gradient_matches_dense():
    rng = np.random.default_rng(0)
    a = (rng.random((7, 5)) < 0.4).astype(np.float32) * rng.random((7, 5)).astype(np.float32)
    import scipy.sparse as sp
    adj, adj_t = to_torch_csr(sp.csr_matrix(a)), to_torch_csr(sp.csr_matrix(a.T))
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(7, 3)
    (spmm(adj, x, adj_t) * w).sum().backward()
    xd = x.detach().clone().requires_grad_()
    (torch.from_numpy(a) @ xd * w).sum().backward()
    torch.testing.assert_close(x.grad, xd.grad)


def test_lightgcn_propagation_matches_dense_reference(tiny_synthetic):
    d = tiny_synthetic
    a_hat = normalized_bipartite_adjacency(d.train)
    dense = torch.from_numpy(a_hat.toarray())
    # symmetric normalisation: every entry is 1/sqrt(deg_u deg_i)
    deg = torch.from_numpy(np.asarray((a_hat != 0).sum(1)).ravel()).float()
    r, c = a_hat.nonzero()
    torch.testing.assert_close(dense[r, c], 1 / torch.sqrt(deg[r] * deg[c]))
    x = torch.randn(d.n_users + d.n_items, 4, dtype=torch.float32)
    expected = (x + dense @ x + dense @ dense @ x + dense @ dense @ dense @ x) / 4
    got = LightGCNPropagation(3)(x, DeviceCSR(a_hat))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["bpr", "lightgcn"])
def test_ranking_scores_equal_the_scores_the_loss_uses(tiny_synthetic, name):
    torch.manual_seed(0)
    model = build_model(tiny_synthetic, [f"model={name}", "model.embedding_dim=8"])
    batch = next(iter(bpr_batches(tiny_synthetic, batch_size=32, seed=0, epoch_fn=lambda: 0)))
    out = model.loss(batch, bpr())
    # recompute the BPR term from the full-ranking scores
    pos = model.score_pairs(batch["user"], batch["pos"])
    neg = model.score_pairs(batch["user"], batch["neg"])
    torch.testing.assert_close(out["bpr"], bpr_reference(pos, neg))
    assert out["loss"].requires_grad
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_mostpop_ranks_by_training_popularity(tiny_synthetic):
    scores = MostPop(tiny_synthetic).scorer().score(torch.tensor([0, 1]))
    pop = tiny_synthetic.item_popularity()
    assert torch.equal(scores[0], torch.as_tensor(pop, dtype=torch.float32)) and torch.equal(scores[0], scores[1])


def test_embedding_penalty_is_mmrec_embloss():
    a, b = torch.ones(4, 3), 2 * torch.ones(4, 3)
    assert embedding_norm_penalty(a, b).item() == pytest.approx((np.sqrt(12) + np.sqrt(48)) / 4)
