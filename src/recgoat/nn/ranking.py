r"""Ranking objectives (``conf/loss/``): what turns a model's user and item vectors of a batch into its ranking loss.

Every model gives, per batch, the users' vectors :math:`u` ``[B, d]``, their positives' :math:`p` ``[B, d]`` and
their negatives' :math:`n` ``[B, d]`` (one negative) or ``[B, N, d]``; scores are inner products
:math:`s = \langle u, i \rangle`. The objective is computed here, once, for every model.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def negative_scores(u: Tensor, n: Tensor) -> Tensor:
    """``<u, n>``: ``[B]`` for one negative per user (``n`` ``[B, d]``), ``[B, N]`` for ``n`` ``[B, N, d]``."""
    return (u * n).sum(-1) if n.dim() == u.dim() else (u.unsqueeze(-2) * n).sum(-1)


class RankingObjective(nn.Module):
    """The ranking term of the training loss. ``name`` is the key it is logged under (``train/<name>``).

    Shapes: ``u`` ``[B, d]``, ``p`` ``[B, d]``, ``n`` ``[B, d]`` or ``[B, N, d]``; ``batch`` the training batch
    (item ids ``pos``, and ``neg_logq`` where the negatives are not uniform) -> scalar.
    """

    name: str

    def forward(self, u: Tensor, p: Tensor, n: Tensor, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError


class BPR(RankingObjective):
    r"""Bayesian personalised ranking over every (positive, negative) pair of a user:

    .. math::
        \mathcal{L} = \frac{1}{B N} \sum_b \sum_j \operatorname{softplus}(s_{b,j}^- - s_b^+)
        = -\operatorname{mean} \log \sigma(s^+ - s^-)

    With one negative it is what every model computed before the objective became a config group. Written with
    ``softplus`` (``-log sigmoid(x) = softplus(-x)``), which is exact where MMRec's ``-log(1e-10 + sigmoid(x))``
    saturates.
    """

    name = "bpr"

    def forward(self, u: Tensor, p: Tensor, n: Tensor, batch: dict[str, Tensor]) -> Tensor:
        pos, neg = (u * p).sum(-1), negative_scores(u, n)
        return F.softplus(neg - (pos if neg.dim() == 1 else pos.unsqueeze(-1))).mean()


class BCE(RankingObjective):
    r"""Binary cross-entropy: the positive is a 1, each negative a 0, negatives averaged per user:

    .. math::
        \mathcal{L} = \frac{1}{B} \sum_b \Big[\operatorname{softplus}(-s_b^+)
            + \frac{1}{N} \sum_j \operatorname{softplus}(s_{b,j}^-)\Big]
    """

    name = "bce"

    def forward(self, u: Tensor, p: Tensor, n: Tensor, batch: dict[str, Tensor]) -> Tensor:
        pos, neg = (u * p).sum(-1), negative_scores(u, n)
        neg = neg if neg.dim() == 2 else neg.unsqueeze(-1)
        return (F.softplus(-pos) + F.softplus(neg).mean(-1)).mean()


class SampledSoftmax(RankingObjective):
    r"""Sampled softmax (InfoNCE) of each positive against the user's sampled negatives and, with ``in_batch``, the
    batch's other positives, at temperature :math:`\tau`, with the log-q correction of every candidate that was not
    drawn uniformly:

    .. math::
        \mathcal{L} = \frac{1}{B} \sum_b \Big[-\frac{s_b^+}{\tau} + \log\Big(e^{s_b^+/\tau}
            + \sum_j e^{s_{b,j}^-/\tau - \log q_j}
            + \sum_{b' \ne b,\, i_{b'} \ne i_b} e^{\langle u_b, p_{b'}\rangle/\tau - \log q^{batch}_{i_{b'}}}\Big)\Big]

    ``q_j`` is the probability the sampler drew negative ``j`` with (``neg_logq`` in the batch; absent for uniform
    negatives, whose correction is one constant for all of them and is left out); ``q^{batch}_i`` an item's share of
    the training pairs, which is how often it is another user's positive. Another user's positive that is this
    user's own positive item is left out (not a negative).

    Args:
        dataset: the data (the training pairs' item frequencies, for in-batch negatives).
        tau: the temperature :math:`\tau`.
        in_batch: also rank against the batch's other positives.
    """

    name = "softmax"

    def __init__(self, dataset, tau: float, in_batch: bool):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"loss.objective.tau must be > 0, got {tau}")
        self.tau = float(tau)
        self.in_batch = bool(in_batch)
        counts = np.bincount(dataset.train.indices, minlength=dataset.n_items).astype(np.float64)
        self.register_buffer("log_share", torch.from_numpy(np.log(np.maximum(counts, 1) / counts.sum())).float(),
                             persistent=False)

    def forward(self, u: Tensor, p: Tensor, n: Tensor, batch: dict[str, Tensor]) -> Tensor:
        pos = (u * p).sum(-1) / self.tau                                    # [B]
        neg = negative_scores(u, n) / self.tau
        neg = neg if neg.dim() == 2 else neg.unsqueeze(-1)                   # [B, N]
        if "neg_logq" in batch:
            neg = neg - batch["neg_logq"].view_as(neg)
        logits = [pos.unsqueeze(-1), neg]
        if self.in_batch:
            items = batch["pos"]
            other = (u @ p.T) / self.tau - self.log_share[items].unsqueeze(0)  # [B, B]
            logits.append(other.masked_fill(items.unsqueeze(1) == items.unsqueeze(0), float("-inf")))
        return (torch.logsumexp(torch.cat(logits, dim=-1), dim=-1) - pos).mean()
