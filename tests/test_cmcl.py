"""CMCL: the supplement's bound and the mean over modalities."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recgoat.nn import CMCL, cmcl_loss, info_nce


@pytest.mark.parametrize("seed", range(5))
def test_cmcl_bound_of_the_supplement_holds(seed):
    g = torch.Generator().manual_seed(seed)
    B, d, tau = 64, 16, 0.2
    z = torch.randn(B, d, generator=g)
    zm = z + (0.3 + seed * 0.5) * torch.randn(B, d, generator=g)   # from aligned to nearly unrelated
    loss = info_nce(zm, z, tau).item()
    gap = (F.normalize(zm, dim=-1) - F.normalize(z, dim=-1)).norm(dim=-1).mean().item()
    assert gap <= math.sqrt(2 * tau * loss + 2 * tau * math.log(B))


def test_cmcl_is_the_mean_over_modalities_and_minimal_when_aligned():
    z = torch.randn(32, 8)
    a, b = torch.randn(32, 8), torch.randn(32, 8)
    assert cmcl_loss({"a": a, "b": b}, z, 0.2).item() == pytest.approx(
        (info_nce(a, z, 0.2).item() + info_nce(b, z, 0.2).item()) / 2)
    assert info_nce(z, z, 0.2) < info_nce(a, z, 0.2)


@pytest.mark.parametrize("shape", [(7, 5), (3, 7, 5)])
@pytest.mark.parametrize("tau", [0.2, 0.002])  # 0.002: logits up to 500, far beyond exp's float32 range
def test_info_nce_equals_cross_entropy_with_the_diagonal_as_targets_value_and_gradient(shape, tau):
    g = torch.Generator().manual_seed(len(shape))
    anchor = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    positive = torch.randn(*shape[-2:], generator=g, dtype=torch.float64, requires_grad=True)
    loss = info_nce(anchor, positive, tau)
    grads = torch.autograd.grad(loss, (anchor, positive))

    logits = F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).T / tau
    rows = logits.reshape(-1, shape[-2])
    reference = -torch.stack([rows[r].log_softmax(0)[r % shape[-2]] for r in range(len(rows))]).mean()
    expected = torch.autograd.grad(reference, (anchor, positive))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(reference.item(), rel=1e-12)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, p: info_nce(a, p, tau), (anchor, positive))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_info_nce_of_half_inputs_computes_in_float32_and_returns_gradients_in_the_input_dtype(dtype):
    g = torch.Generator().manual_seed(3)
    anchor64, positive64 = torch.randn(2, 16, 8, generator=g, dtype=torch.float64), torch.randn(16, 8, generator=g,
                                                                                               dtype=torch.float64)
    anchor = anchor64.to(dtype).requires_grad_()
    positive = positive64.to(dtype).requires_grad_()
    loss = info_nce(anchor, positive, 0.1)
    grads = torch.autograd.grad(loss, (anchor, positive))

    ref_inputs = (anchor.detach().double().requires_grad_(), positive.detach().double().requires_grad_())
    reference = info_nce(*ref_inputs, 0.1)
    expected = torch.autograd.grad(reference, ref_inputs)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(reference.item(), rel=2e-2)
    for got, want, like in zip(grads, expected, (anchor, positive), strict=True):
        assert got.dtype == dtype and got.shape == like.shape
        torch.testing.assert_close(got.double(), want, rtol=5e-2, atol=5e-3)


def test_cmcl_max_items_takes_the_same_random_rows_of_every_modality_and_of_the_fused_items():
    g = torch.Generator().manual_seed(0)
    z, a, b = (torch.randn(40, 8, generator=g) for _ in range(3))
    torch.manual_seed(7)
    got = CMCL(weight=1.0, tau=0.2, max_items=16)(torch.stack([a, b]), z)
    torch.manual_seed(7)
    rows = torch.randperm(40)[:16]
    assert got.item() == pytest.approx(cmcl_loss({"a": a[rows], "b": b[rows]}, z[rows], 0.2).item(), rel=1e-6)
    # a batch of at most max_items items is taken whole, and draws nothing from the random stream
    torch.manual_seed(7)
    whole = CMCL(weight=1.0, tau=0.2, max_items=40)(torch.stack([a, b]), z)
    assert whole.item() == pytest.approx(cmcl_loss({"a": a, "b": b}, z, 0.2).item(), rel=1e-6)
    assert torch.equal(torch.randperm(40)[:16], rows)


def test_cmcl_rejects_a_subset_without_negatives():
    with pytest.raises(ValueError, match="cmcl.max_items must be >= 2"):
        CMCL(weight=1.0, tau=0.2, max_items=1)
