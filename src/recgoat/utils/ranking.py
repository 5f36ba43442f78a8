"""Deterministic top-K selection over score matrices.

Ties are broken by item index (lower first), the same on every device and for every chunking,
so results do not depend on hardware or batch sizes.
"""
from __future__ import annotations

import torch
from torch import Tensor


def topk_stable(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` values and column indices per row, sorted by (score desc, index asc).

    ``torch.topk`` picks among equal scores arbitrarily. This takes the top ``k + 1``, fixes the
    order inside the top-k cheaply, and re-ranks by a full stable sort only the (rare) rows whose
    k-th score ties with the (k+1)-th, i.e. where the cut-off itself is ambiguous. Ties among
    ``-inf`` (masked) entries are left alone: masked items never count.
    """
    n = scores.shape[1]
    k = min(k, n)
    vals, idx = scores.topk(min(k + 1, n), dim=1)                     # [B, k(+1)]
    cut_tied = (vals[:, k] == vals[:, k - 1]) & torch.isfinite(vals[:, k - 1]) if k < n else None
    vals, idx = vals[:, :k], idx[:, :k]
    order = idx.argsort(dim=1)
    idx, vals = idx.gather(1, order), vals.gather(1, order)
    order = vals.argsort(dim=1, descending=True, stable=True)
    idx, vals = idx.gather(1, order), vals.gather(1, order)
    if cut_tied is not None:
        rows = cut_tied.nonzero().squeeze(1)
        if rows.numel():
            v, i = scores[rows].sort(dim=1, descending=True, stable=True)
            vals[rows], idx[rows] = v[:, :k], i[:, :k]
    return vals, idx


def merge_topk(vals_a: Tensor, idx_a: Tensor, vals_b: Tensor, idx_b: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Merge two per-row top lists; all of ``idx_a`` must be below all of ``idx_b`` (item chunks in order)."""
    vals = torch.cat([vals_a, vals_b], dim=1)
    idx = torch.cat([idx_a, idx_b], dim=1)
    order = vals.argsort(dim=1, descending=True, stable=True)[:, :k]
    return vals.gather(1, order), idx.gather(1, order)
