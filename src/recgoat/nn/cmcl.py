"""Cross-modal contrastive learning (CMCL): instance-level alignment of RecGOAT."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


class _InfoNCE(torch.autograd.Function):
    r"""``mean_r (logsumexp_j x_rj - x_rr)`` over the rows r of the logits ``x = a @ p^T`` (``[..., B, B]``;
    cross-entropy with the diagonal as targets); its backward, from the saved softmax ``S``,
    ``G = (S - I) / R``, ``grad_a = G p``, ``grad_p = sum G^T a``.

    The function makes its logits and keeps working in that one buffer: shifted, exponentiated and normalised in
    place into the softmax, which the backward reads without another ``B x B`` buffer. One is allocated per step
    instead of three; at MENTOR's all-user size (8,442 users: 285 MB) every fresh buffer of that size is
    new memory the kernel maps page by page, and those page faults took longer than the arithmetic. Logits are
    float32 at least (half inputs are upcast for the exponentials)."""

    @staticmethod
    def forward(ctx, a: Tensor, p: Tensor) -> Tensor:
        logits = a @ p.T                                             # [(M,) B, B]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        target = logits.diagonal(dim1=-2, dim2=-1).clone()
        shift = logits.amax(-1, keepdim=True)
        softmax = logits.sub_(shift).exp_()
        total = softmax.sum(-1, keepdim=True)
        lse = total.log().add_(shift).squeeze(-1)
        ctx.save_for_backward(a, p, softmax.div_(total))
        return (lse - target).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        a, p, softmax = ctx.saved_tensors
        scale = grad / (softmax.numel() // softmax.shape[-1])       # the mean over all rows
        softmax = softmax.to(a.dtype)
        # G p = scale (S p - p) and G^T a = scale (S^T a - a): the identity needs no B x B buffer
        grad_a = (softmax @ p).sub_(p).mul_(scale)
        grad_p = (softmax.mT @ a).sub_(a)
        if grad_p.dim() == 3:                                       # M anchor sets against the same positives
            grad_p = grad_p.sum(0)
        return grad_a, grad_p.mul_(scale)


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
    return _InfoNCE.apply(a, F.normalize(positive, dim=-1))


def cmcl_loss(modalities: dict[str, Tensor], fused: Tensor, tau: float) -> Tensor:
    r"""``L_CMCL``: the mean over modalities of InfoNCE from each modality ``z^m_i`` to the fused
    item representation ``z_i`` of the same item (``[B, d]`` each). Modalities are pulled
    *towards* the fused space; unlike the authors' released code there is no ``1 - InfoNCE`` term.
    """
    return info_nce(torch.stack(list(modalities.values())), fused, tau)


class CMCL(nn.Module):
    r"""RecGOAT's instance-level alignment term, :func:`cmcl_loss` with its temperature and its weight
    in the model's objective.

    The in-batch InfoNCE costs ``O(M B^2 d)`` for ``B`` distinct items; ``max_items`` bounds ``B`` by a random
    subset of them (the same rows of every modality and of the fused items, so pairs stay pairs), the other
    subset items its negatives, as W1's ``max_points`` does for the transport term.

    Args:
        weight: :math:`\lambda_{cl}`, the multiplier of the term in the model's loss.
        tau: InfoNCE temperature.
        max_items: at most this many of the batch's items per step (``None``: all of them, the method's).

    Shapes: ``modalities`` ``[M, B, d]`` (stacked), ``fused`` ``[B, d]`` -> scalar (unweighted).
    """

    def __init__(self, weight: float, tau: float, max_items: int | None):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"cmcl.tau must be > 0, got {tau}")
        if max_items is not None and max_items < 2:
            raise ValueError(f"cmcl.max_items must be >= 2 (an item needs a negative) or null, got {max_items}")
        self.weight = weight
        self.tau = tau
        self.max_items = max_items

    def forward(self, modalities: Tensor, fused: Tensor, unit: bool = False) -> Tensor:
        """``unit``: the inputs are unit vectors already (not normalised again)."""
        if self.max_items is not None and fused.shape[0] > self.max_items:
            rows = torch.randperm(fused.shape[0], device=fused.device)[: self.max_items]
            modalities, fused = modalities[:, rows], fused[rows]
        if unit:
            return _InfoNCE.apply(modalities / self.tau, fused)
        return info_nce(modalities, fused, self.tau)        # cmcl_loss of the stacked modalities

    def extra_repr(self) -> str:
        return f"weight={self.weight}, tau={self.tau}, max_items={self.max_items}"
