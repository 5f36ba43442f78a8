"""Losses shared by the recommenders."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """Bayesian personalised ranking: ``mean(-log sigmoid(s_pos - s_neg))``.

    Written with ``softplus`` (``-log sigmoid(x) = softplus(-x)``), which is exact where MMRec's
    ``-log(1e-10 + sigmoid(x))`` saturates.
    """
    return F.softplus(neg_scores - pos_scores).mean()


def embedding_norm_penalty(*embeddings: Tensor) -> Tensor:
    """MMRec's ``EmbLoss``: the sum of the Frobenius norms of the batch's embeddings over the batch size.

    Note the norms are not squared; ``reg_weight`` values of MMRec's configs assume this form.
    """
    total = sum(torch.linalg.vector_norm(e) for e in embeddings)
    return total / embeddings[-1].shape[0]
