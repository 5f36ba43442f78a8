"""Losses shared by the recommenders."""
from __future__ import annotations

import torch
from torch import Tensor


def embedding_norm_penalty(*embeddings: Tensor) -> Tensor:
    """MMRec's ``EmbLoss``: the sum of the Frobenius norms of the batch's embeddings over the batch size.

    Note the norms are not squared; ``reg_weight`` values of MMRec's configs assume this form.
    """
    total = sum(torch.linalg.vector_norm(e) for e in embeddings)
    return total / embeddings[-1].shape[0]
