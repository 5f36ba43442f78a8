"""Deterministic top-K selection over score matrices.

Ties are broken by item index (lower first), the same on every device and for every chunking,
so results do not depend on hardware or batch sizes.
"""
from __future__ import annotations

import torch
from torch import Tensor


def topk_stable(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` values and column indices per row, sorted by (score desc, index asc).

    ``torch.topk`` picks among equal scores arbitrarily; this fixes the order inside the top-k
    cheaply and re-ranks the (rare) rows whose k-th score is tied with a score left out by a
    full stable sort of those rows only.
    """
    k = min(k, scores.shape[1])
    vals, idx = scores.topk(k, dim=1)                                  # [B, k]
    order = idx.argsort(dim=1)
    idx, vals = idx.gather(1, order), vals.gather(1, order)
    order = vals.argsort(dim=1, descending=True, stable=True)
    idx, vals = idx.gather(1, order), vals.gather(1, order)
    n_at_least_kth = (scores >= vals[:, -1:]).sum(1)                   # [B]
    ambiguous = (n_at_least_kth > k).nonzero().squeeze(1)
    if ambiguous.numel():
        v, i = scores[ambiguous].sort(dim=1, descending=True, stable=True)
        vals[ambiguous], idx[ambiguous] = v[:, :k], i[:, :k]
    return vals, idx


def merge_topk(vals_a: Tensor, idx_a: Tensor, vals_b: Tensor, idx_b: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Merge two per-row top lists; all of ``idx_a`` must be below all of ``idx_b`` (item chunks in order)."""
    vals = torch.cat([vals_a, vals_b], dim=1)
    idx = torch.cat([idx_a, idx_b], dim=1)
    order = vals.argsort(dim=1, descending=True, stable=True)[:, :k]
    return vals.gather(1, order), idx.gather(1, order)
