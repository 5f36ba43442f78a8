"""Metrics and the full-ranking evaluator against hand-computed and brute-force references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recgoat.data import matrix_from_pairs
from recgoat.eval import ranking_metrics, topk_stable
from tests.helpers import make_evaluator


def brute_force(scores: np.ndarray, train: sp.csr_matrix, target: sp.csr_matrix, ks) -> dict[str, float]:
    """The protocol, one user at a time, in plain Python: ties by lower item index."""
    totals, n = {}, 0
    for u in range(scores.shape[0]):
        rel = set(target[u].indices.tolist())
        if not rel:
            continue
        n += 1
        masked = set(train[u].indices.tolist())
        ranked = sorted((i for i in range(scores.shape[1]) if i not in masked), key=lambda i: (-scores[u, i], i))
        for k in ks:
            top = ranked[:k]
            hits = [1 if i in rel else 0 for i in top] + [0] * (k - len(top))
            nh = sum(hits)
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(len(rel), k)))
            ap = sum(sum(hits[: r + 1]) / (r + 1) for r, h in enumerate(hits) if h) / min(len(rel), k)
            for name, v in (("recall", nh / len(rel)), ("ndcg", dcg / idcg), ("precision", nh / k),
                            ("map", ap), ("hit", float(nh > 0))):
                totals[f"{name}@{k}"] = totals.get(f"{name}@{k}", 0.0) + v
    return {k: v / n for k, v in totals.items()}


def evaluate(scores: np.ndarray, train, target, ks, **kw) -> dict[str, float]:
    s = torch.as_tensor(scores, dtype=torch.float32)
    ev = make_evaluator(train, ks=ks, **kw)
    return ev.evaluate(lambda users, items: s[users][:, items].clone(), target)


def test_hand_computed_single_user():
    # 5 items; user 0 trained on item 4 (masked); held-out {1, 3}.
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 10.0]])
    train = matrix_from_pairs([0], [4], 1, 5)
    target = matrix_from_pairs([0, 0], [1, 3], 1, 5)
    m = evaluate(scores, train, target, ks=[2, 3])
    # ranking without item 4: 0, 1, 2, 3 -> hits at ranks 2 and 4
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["precision@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert m["map@2"] == pytest.approx((1 / 2) / 2)
    assert m["hit@2"] == 1.0
    assert m["recall@3"] == pytest.approx(0.5)
    assert m["precision@3"] == pytest.approx(1 / 3)


def test_ties_are_broken_by_lower_item_index():
    # all scores equal: the ranking is 0, 1, 2, ...; held-out item 2 sits at rank 3
    scores = np.zeros((1, 6))
    train = matrix_from_pairs([0], [0], 1, 6)
    target = matrix_from_pairs([0], [3], 1, 6)
    m = evaluate(scores, train, target, ks=[1, 2, 3])
    # masked 0 -> order 1, 2, 3 -> item 3 at rank 3
    assert m["hit@2"] == 0.0 and m["hit@3"] == 1.0
    assert m["ndcg@3"] == pytest.approx(1 / math.log2(4))


def test_more_held_out_items_than_k_and_k_beyond_catalogue():
    scores = np.array([[5.0, 4.0, 3.0, 2.0]])
    train = matrix_from_pairs([0], [3], 1, 4)
    target = matrix_from_pairs([0, 0, 0], [0, 1, 2], 1, 4)
    m = evaluate(scores, train, target, ks=[2, 10])
    assert m["recall@2"] == pytest.approx(2 / 3)          # not capped at K
    assert m["ndcg@2"] == pytest.approx(1.0)              # IDCG over min(|T|, K) = 2
    assert m["map@2"] == pytest.approx(1.0)
    assert m["recall@10"] == pytest.approx(1.0)           # K > n_items: every candidate ranked
    assert m["precision@10"] == pytest.approx(3 / 10)     # precision divides by K regardless
    assert m["map@10"] == pytest.approx(1.0)


def test_masked_items_never_count_even_when_fewer_candidates_than_k():
    scores = np.array([[1.0, 2.0, 3.0]])
    train = matrix_from_pairs([0, 0], [0, 1], 1, 3)
    # a held-out item that is also in train would be a data error; here it only checks masking
    target = matrix_from_pairs([0], [2], 1, 3)
    m = evaluate(scores, train, target, ks=[3])
    assert m["hit@3"] == 1.0 and m["precision@3"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items = 40, 30
    # integer scores make ties frequent
    scores = rng.integers(0, 6, size=(n_users, n_items)).astype(np.float64)
    pairs = rng.random((n_users, n_items))
    train = sp.csr_matrix((pairs < 0.2).astype(np.float32))
    target = sp.csr_matrix(((pairs >= 0.2) & (pairs < 0.3)).astype(np.float32))
    ks = [1, 5, 10, 50]
    expected = brute_force(scores, train, target, ks)
    got = evaluate(scores, train, target, ks=ks)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k


def test_batching_and_item_chunks_do_not_change_results():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, size=(50, 37)).astype(np.float64)
    pairs = rng.random((50, 37))
    train = sp.csr_matrix((pairs < 0.3).astype(np.float32))
    target = sp.csr_matrix(((pairs >= 0.3) & (pairs < 0.45)).astype(np.float32))
    ref = evaluate(scores, train, target, ks=[5, 20])
    for user_batch, item_chunk in [(1, None), (7, 5), (64, 11), (3, 1)]:
        got = evaluate(scores, train, target, ks=[5, 20], user_batch=user_batch, item_chunk=item_chunk)
        assert got == pytest.approx(ref, abs=1e-12), (user_batch, item_chunk)


def test_users_without_held_out_items_are_not_averaged():
    scores = np.array([[1.0, 0.0], [0.0, 1.0]])
    train = matrix_from_pairs([0, 1], [1, 1], 2, 2)
    target = matrix_from_pairs([0], [0], 2, 2)  # user 1 has nothing held out
    m = evaluate(scores, train, target, ks=[1])
    assert m["recall@1"] == 1.0


def test_topk_stable_orders_ties_by_index():
    s = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    v, i = topk_stable(s, 2)
    assert i.tolist() == [[1, 2]] and v.tolist() == [[3.0, 3.0]]
    v, i = topk_stable(s, 4)
    assert i.tolist() == [[1, 2, 4, 3]]


def test_nan_scores_raise_a_clear_error():
    s = torch.tensor([[float("nan"), 1.0, 0.5]])
    ev = make_evaluator(matrix_from_pairs([0], [2], 1, 3), ks=[1])
    with pytest.raises(FloatingPointError, match="NaN"):
        ev.evaluate(lambda u, it: s[u][:, it].clone(), matrix_from_pairs([0], [1], 1, 3))


def test_ranking_metrics_pads_short_hit_lists():
    hits = torch.tensor([[True, False]])
    m = ranking_metrics(hits, torch.tensor([1]), ks=[5])
    assert m["recall@5"].item() == 1.0 and m["precision@5"].item() == pytest.approx(0.2)
