"""CMCL: the supplement's bound and the mean over modalities."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recgoat.nn import cmcl_loss, info_nce


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
