"""Cross-modal contrastive learning (CMCL): instance-level alignment of RecGOAT."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def info_nce(anchor: Tensor, positive: Tensor, tau: float) -> Tensor:
    r"""In-batch InfoNCE from ``anchor[i]`` to ``positive[i]`` with the batch as negatives:

    .. math::
        \mathcal{L} = -\frac{1}{B}\sum_i \log
            \frac{\exp(\langle \hat a_i, \hat p_i\rangle / \tau)}{\sum_j \exp(\langle \hat a_i, \hat p_j\rangle/\tau)}

    with L2-normalised vectors. Several anchor sets against the same positives (``[M, B, d]``) give the mean of
    their M losses, from one product.

    Shapes: ``anchor`` ``[B, d]`` or ``[M, B, d]``, ``positive`` ``[B, d]`` -> scalar.
    """
    a = F.normalize(anchor, dim=-1) / tau                    # 1/tau on [B, d], not on the [B, B] logits
    p = F.normalize(positive, dim=-1)
    logits = a @ p.T                                         # [(M,) B, B]
    target = torch.arange(len(p), device=p.device).expand(logits.shape[:-1])
    return F.cross_entropy(logits.reshape(-1, len(p)), target.reshape(-1))


def cmcl_loss(modalities: dict[str, Tensor], fused: Tensor, tau: float) -> Tensor:
    r"""``L_CMCL``: the mean over modalities of InfoNCE from each modality ``z^m_i`` to the fused
    item representation ``z_i`` of the same item (``[B, d]`` each). Modalities are pulled
    *towards* the fused space; unlike the authors' released code there is no ``1 - InfoNCE`` term.
    """
    return info_nce(torch.stack(list(modalities.values())), fused, tau)


class CMCL(nn.Module):
    r"""RecGOAT's instance-level alignment term, :func:`cmcl_loss` with its temperature and its weight
    in the model's objective.

    Args:
        weight: :math:`\lambda_{cl}`, the multiplier of the term in the model's loss.
        tau: InfoNCE temperature.

    Shapes: ``modalities`` ``{m: [B, d]}``, ``fused`` ``[B, d]`` -> scalar (unweighted).
    """

    def __init__(self, weight: float, tau: float):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"cmcl.tau must be > 0, got {tau}")
        self.weight = weight
        self.tau = tau

    def forward(self, modalities: dict[str, Tensor], fused: Tensor) -> Tensor:
        return cmcl_loss(modalities, fused, self.tau)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, tau={self.tau}"
