"""Exact full-ranking evaluation: every item is a candidate, only training items are masked.

The evaluator knows nothing about models: it takes a score function
``score_fn(users [B], items: slice) -> [B, n_items_in_slice]`` and the dataset's sparse matrices.
Users are processed in batches and, for very large catalogues, items in chunks whose top-K lists
are merged exactly, so memory is bounded by ``user_batch x item_chunk`` scores. Everything runs
on the device of the scores; there is no Python loop over users.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from recgoat.eval.metrics import METRICS, metric_names, ranking_metrics
from recgoat.graphs.csr import DeviceCSR
from recgoat.utils.ranking import merge_topk, topk_stable

ScoreFn = Callable[[Tensor, slice], Tensor]


class MetricSums:
    """Per-metric sums over users and the user count: adds exactly across batches and DDP ranks."""

    def __init__(self, names: Iterable[str], device: torch.device | str = "cpu"):
        self.names = list(names)
        self.values = torch.zeros(len(self.names) + 1, dtype=torch.float64, device=device)  # last = count

    def add(self, per_user: dict[str, Tensor]) -> None:
        n = next(iter(per_user.values())).numel()
        update = torch.stack([per_user[k].sum() for k in self.names] + [
            torch.tensor(float(n), dtype=torch.float64, device=self.values.device)])
        self.values += update.to(self.values.device)

    @property
    def count(self) -> int:
        return int(self.values[-1].item())

    def means(self) -> dict[str, float]:
        count = self.values[-1].item()
        if count == 0:
            return {k: float("nan") for k in self.names}
        return {k: (self.values[i] / count).item() for i, k in enumerate(self.names)}


def users_with_items(m: sp.csr_matrix) -> np.ndarray:
    """Indices of the rows of ``m`` that have at least one item."""
    return np.flatnonzero(np.diff(m.indptr) > 0)


def top_k(score_fn: ScoreFn, users: Tensor, k: int, n_items: int, masks: Iterable[DeviceCSR] = (),
          item_chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """Top-``k`` (scores, items) per user over all items, items of ``masks`` excluded.

    Items are scored ``item_chunk`` at a time and the per-chunk lists merged exactly; ties go to
    the lower item index. Masked items score -inf; when fewer than ``k`` items remain, the tail
    holds -inf entries.
    """
    masks = list(masks)
    k = min(k, n_items)
    chunk = item_chunk or n_items
    best_v = best_i = None
    for start in range(0, n_items, chunk):
        cols = slice(start, min(start + chunk, n_items))
        scores = score_fn(users, cols)  # a fresh tensor: masked in place below
        if scores.shape != (len(users), cols.stop - cols.start):
            raise RuntimeError(f"score function returned shape {tuple(scores.shape)} for {len(users)} users "
                               f"x items {cols.start}..{cols.stop - 1}")
        scores = scores.float()
        for mask in masks:
            pos, col = mask.coords(users, cols)
            scores[pos, col] = -torch.inf
        v, i = topk_stable(scores, k)
        if torch.isnan(v).any():  # topk ranks NaN above everything, so any NaN shows up here
            raise FloatingPointError("the model produced NaN scores; training has diverged "
                                     "(lower the learning rate or check the inputs)")
        i = i + start
        best_v, best_i = (v, i) if best_v is None else merge_topk(best_v, best_i, v, i, k)
    return best_v, best_i


class FullRankingEvaluator:
    """Recall/NDCG/Precision/MAP/HitRate@K over all items with training items masked.

    Args:
        train: the training matrix ``[n_users, n_items]``; its items are masked (score -inf).
        ks: cut-offs, e.g. ``(10, 20)``.
        user_batch: users scored at once.
        item_chunk: items scored at once (``None``: all); top-K lists of chunks are merged exactly.
        metrics: which of ``recall, ndcg, precision, map, hit``.
    """

    def __init__(self, train: sp.csr_matrix, *, ks: Iterable[int], user_batch: int, item_chunk: int | None,
                 metrics: Iterable[str]):
        self.n_users, self.n_items = train.shape
        self.ks = sorted({int(k) for k in ks})
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"ks must be positive integers, got {ks}")
        if int(user_batch) < 1 or item_chunk is not None and int(item_chunk) < 1:
            raise ValueError(f"evaluation.user_batch and evaluation.item_chunk must be positive integers (item_chunk "
                             f"may be null: all items), got {user_batch} and {item_chunk}")
        self.user_batch = int(user_batch)
        self.item_chunk = int(item_chunk) if item_chunk else self.n_items
        self.metrics = list(metrics)
        unknown = set(self.metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metric(s) {sorted(unknown)}; available: {METRICS}")
        self.names = metric_names(self.ks, self.metrics)
        self.train = DeviceCSR(train)
        self._targets: dict[int, tuple[sp.csr_matrix, DeviceCSR]] = {}

    def device_csr(self, m: sp.csr_matrix) -> DeviceCSR:
        """``m`` mirrored on devices, cached while ``m`` is the same object (valid/test of a run)."""
        hit = self._targets.get(id(m))
        if hit is None or hit[0] is not m:
            if len(self._targets) >= 4:
                self._targets.clear()
            hit = self._targets[id(m)] = (m, DeviceCSR(m))
        return hit[1]

    def rank(self, score_fn: ScoreFn, users: Tensor, k: int, exclude: Iterable[DeviceCSR] = ()
             ) -> tuple[Tensor, Tensor]:
        """Top-``k`` (scores, items) for ``users`` with training items (and ``exclude``) masked."""
        return top_k(score_fn, users, k, self.n_items, masks=[self.train, *exclude], item_chunk=self.item_chunk)

    @torch.no_grad()
    def evaluate_users(self, score_fn: ScoreFn, users: Tensor, target: sp.csr_matrix, sums: MetricSums | None = None
                       ) -> MetricSums:
        """Add the metrics of ``users`` (each must have held-out items in ``target``) to ``sums``."""
        tgt = self.device_csr(target)
        device = users.device
        if sums is None:
            sums = MetricSums(self.names, device)
        for b in range(0, len(users), self.user_batch):
            batch = users[b:b + self.user_batch]
            vals, items = self.rank(score_fn, batch, max(self.ks))
            relevant = torch.zeros(len(batch), self.n_items, dtype=torch.bool, device=device)
            pos, col = tgt.coords(batch)
            relevant[pos, col] = True
            hits = relevant.gather(1, items) & torch.isfinite(vals)
            per_user = ranking_metrics(hits, tgt.row_counts(batch), self.ks)
            sums.add({k: per_user[k] for k in self.names})
        return sums

    @torch.no_grad()
    def evaluate(self, score_fn: ScoreFn, target: sp.csr_matrix, device: torch.device | str = "cpu",
                 users: np.ndarray | None = None) -> dict[str, float]:
        """Mean metrics over every user with at least one item in ``target`` (or the given ``users``)."""
        if users is None:
            users = users_with_items(target)
        users_t = torch.as_tensor(users, dtype=torch.long, device=device)
        return self.evaluate_users(score_fn, users_t, target).means()
