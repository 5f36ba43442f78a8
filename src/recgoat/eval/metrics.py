"""Top-K ranking metrics from hit matrices: pure tensors in, per-user values out.

Definitions follow MMRec (and docs/method.md). For a user with held-out set T and
hit indicators h_r at 1-based ranks r = 1..K:

    Recall@K    = sum_r h_r / |T|
    NDCG@K      = sum_r h_r / log2(r + 1)  /  sum_{r=1..min(|T|,K)} 1 / log2(r + 1)
    Precision@K = sum_r h_r / K
    MAP@K       = sum_r h_r * Precision@r  /  min(|T|, K)
    HitRate@K   = 1[sum_r h_r > 0]
"""
from __future__ import annotations

import torch
from torch import Tensor

METRICS = ("recall", "ndcg", "precision", "map", "hit")


def metric_names(ks, metrics=METRICS) -> list[str]:
    return [f"{m}@{k}" for k in ks for m in metrics]


def ranking_metrics(hits: Tensor, n_relevant: Tensor, ks) -> dict[str, Tensor]:
    """Per-user metrics.

    Args:
        hits: ``[B, K]`` bool, ``hits[b, r]`` = the item at rank ``r+1`` is relevant; ``K >= max(ks)``.
        n_relevant: ``[B]`` number of held-out items per user (all > 0).
        ks: cut-offs.
    Returns:
        ``{"recall@10": [B], ...}`` float tensors.
    """
    max_k = max(ks)
    if hits.shape[1] < max_k:  # fewer candidates than K: the missing ranks are misses
        hits = torch.nn.functional.pad(hits, (0, max_k - hits.shape[1]))
    h = hits[:, :max_k].to(torch.float64)
    n_rel = n_relevant.to(torch.float64)
    ranks = torch.arange(1, max_k + 1, device=h.device, dtype=torch.float64)
    discount = 1.0 / torch.log2(ranks + 1.0)
    cum_hits = h.cumsum(1)                          # [B, K]
    dcg = (h * discount).cumsum(1)                  # [B, K]
    ap = (h * cum_hits / ranks).cumsum(1)           # [B, K] sum of precision@r at hits
    idcg_table = discount.cumsum(0)                 # [K] idcg for n relevant = 1..K
    out = {}
    for k in ks:
        n_hit = cum_hits[:, k - 1]
        capped = torch.clamp(n_rel, max=k)
        out[f"recall@{k}"] = n_hit / n_rel
        out[f"ndcg@{k}"] = dcg[:, k - 1] / idcg_table[capped.long() - 1]
        out[f"precision@{k}"] = n_hit / k
        out[f"map@{k}"] = ap[:, k - 1] / capped
        out[f"hit@{k}"] = (n_hit > 0).to(torch.float64)
    return out
