"""OAT: the dimension transport plan and the Sinkhorn W1 term against exact references (POT)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F
from geomloss import SamplesLoss
from hydra.errors import InstantiationException
from torch.utils._python_dispatch import TorchDispatchMode

from recgoat.nn import dimension_cost
from tests.helpers import make_transport, make_w1


def test_dimension_cost_expansion_equals_the_definition():
    zm, zid = torch.randn(50, 6, dtype=torch.float64), torch.randn(50, 7, dtype=torch.float64)
    brute = ((zm[:, :, None] - zid[:, None, :]) ** 2).mean(0)
    torch.testing.assert_close(dimension_cost(zm, zid), brute)


@pytest.mark.parametrize("eps", [0.01, 0.05, 0.2])
def test_sinkhorn_plan_marginals_and_pot_reference(eps):
    g = torch.Generator().manual_seed(int(eps * 100))
    zm = torch.randn(300, 16, generator=g)
    zid = 0.5 * torch.randn(300, 16, generator=g) + zm[:, torch.randperm(16, generator=g)]
    transport = make_transport(eps=eps)
    plan = transport.plan(zm, zid)                                       # d T*: all marginals 1
    torch.testing.assert_close(plan.sum(1), torch.ones(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(plan.sum(0), torch.ones(16), atol=1e-4, rtol=0)
    cost = dimension_cost(zm.double(), zid.double())
    cost = (cost / (cost.max() - cost.min())).numpy()
    with warnings.catch_warnings():  # at eps 0.05 POT's marginal error stalls near 1e-9 in float64: capped
        warnings.filterwarnings("ignore", message="Sinkhorn did not converge")
        ref = ot.sinkhorn(np.full(16, 1 / 16), np.full(16, 1 / 16), cost, eps, method="sinkhorn_log",
                          numItermax=2000, stopThr=1e-10) * 16
    np.testing.assert_allclose(plan.numpy(), ref, atol=2e-3)
    assert not plan.requires_grad


def test_plan_is_a_permutation_when_dimensions_are_permuted_copies():
    zm = torch.randn(500, 8)
    perm = torch.randperm(8)
    plan = make_transport(eps=0.01).plan(zm, zm[:, perm])
    assert torch.equal(plan.argmax(1), torch.argsort(perm))  # dimension p of zm goes where it went


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_w1_matches_exact_optimal_transport_within_the_entropic_bias(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(80, 6, generator=g)
    y = torch.randn(80, 6, generator=g) + 0.5
    blur = 0.01
    value = make_w1(blur=blur, scaling=0.9, max_points=None)(x, y).item()
    xn, yn = F.normalize(x, dim=-1).double(), F.normalize(y, dim=-1).double()
    exact = ot.emd2(np.full(80, 1 / 80), np.full(80, 1 / 80), torch.cdist(xn, yn).numpy())
    # the debiased divergence differs from W1 by the entropic bias, O(blur log(1/blur)) ~ 0.05 here
    assert abs(value - exact) < blur * math.log(1 / blur) + 0.02
    assert make_w1(blur=blur, max_points=None)(x, x).item() == pytest.approx(0.0, abs=1e-4)


def test_w1_subsampling_keeps_pairs_and_every_sampled_row_gets_gradient():
    x = torch.randn(1000, 8, requires_grad=True)
    loss = make_w1(weight=1.0, blur=0.05, scaling=0.5, max_points=100)(x, x.detach() + 0.1)
    loss.backward()
    assert int((x.grad.abs().sum(1) > 0).sum()) == 100   # exactly the sampled rows (fails on a zero gradient)
    small = torch.randn(50, 8, requires_grad=True)
    make_w1(weight=1.0, blur=0.05, scaling=0.5, max_points=100)(small, small.detach() + 0.1).backward()
    assert bool((small.grad.abs().sum(1) > 0).all())     # below max_points: every row


def test_warm_started_plans_track_the_fixed_point_with_a_fixed_number_of_updates():
    g = torch.Generator().manual_seed(7)
    zm, zid = torch.randn(400, 16, generator=g), torch.randn(400, 16, generator=g)
    cold = make_transport(eps=0.01, warm_iters=None)
    warm = make_transport(eps=0.01, warm_iters=10)
    warm.plan(zm, zid, key="text")                       # a cold start: iterates to tol, fills the cache
    assert warm.last_iters > 10
    nudged = zm + 1e-3 * torch.randn(400, 16, generator=g)
    p_cold = cold.plan(nudged, zid, key="text")
    p_warm = warm.plan(nudged, zid, key="text")
    assert warm.last_iters == 10                          # exactly warm_iters updates, no convergence test
    torch.testing.assert_close(p_warm, p_cold, atol=5e-3, rtol=0)
    for _ in range(20):                                   # steps on the same embeddings converge to the cold plan
        p_warm = warm.plan(nudged, zid, key="text")
    torch.testing.assert_close(p_warm, p_cold, atol=1e-4, rtol=0)
    torch.testing.assert_close(p_warm.sum(0), torch.ones(16), atol=1e-4, rtol=0)
    other = warm.plan(zid, zm, key="image")               # another key: a cold start of its own
    torch.testing.assert_close(other, cold.plan(zid, zm), atol=1e-6, rtol=0)
    with pytest.raises(InstantiationException, match="warm_iters must be >= 1 or null"):   # hydra wraps it
        make_transport(eps=0.01, warm_iters=0)


def test_w1_of_several_clouds_is_the_sum_of_their_divergences_on_the_same_rows():
    g = torch.Generator().manual_seed(11)
    a, b, y = (torch.randn(60, 8, generator=g) for _ in range(3))
    w1 = make_w1(weight=1.0, blur=0.05, scaling=0.5, max_points=None)
    torch.testing.assert_close(w1([a, b], y), w1(a, y) + w1(b, y), atol=1e-5, rtol=1e-5)
    sampled = make_w1(weight=1.0, blur=0.05, scaling=0.5, max_points=20)
    torch.manual_seed(0)
    both = sampled([a, b], y)
    torch.manual_seed(0)
    idx = torch.randperm(60)[:20]                                      # the rows it drew, the same for both clouds
    torch.testing.assert_close(both, w1(a[idx], y[idx]) + w1(b[idx], y[idx]), atol=1e-5, rtol=1e-5)


class _HostReads(TorchDispatchMode):
    """Counts the ops that read a device value on the host (``.item()``, ``bool(tensor)``, boolean-mask indexing)."""

    READS = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.nonzero")

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) in self.READS:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def test_w1_is_geomloss_sinkhorn_divergence_to_rounding_value_and_gradient_without_host_reads():
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(90, 16, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    y = torch.randn(90, 16, generator=g, dtype=torch.float64)
    with _HostReads() as mode:
        ours = make_w1(weight=1.0, blur=0.05, scaling=0.5, max_points=None)(xs, y)
        grads = torch.autograd.grad(ours, xs)
    assert mode.reads == []                                   # SamplesLoss masks its log-weights: two reads a call
    reference = SamplesLoss("sinkhorn", p=1, blur=0.05, scaling=0.5, debias=True, backend="tensorized", diameter=2.0)
    ref = reference(F.normalize(torch.stack(xs), dim=-1), F.normalize(y, dim=-1).expand(2, -1, -1)).sum()
    # in double precision: the same algorithm, other roundings (scalars folded into the ops, no unit norms)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    for ours_grad, ref_grad in zip(grads, torch.autograd.grad(ref, xs), strict=True):
        torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-9, atol=1e-12)
    # in float32 both carry the rounding noise of the self-costs' zero diagonal (sqrt of ~1e-7): about 1e-4
    xs32, y32 = [x.detach().float() for x in xs], y.float()
    ours32 = make_w1(weight=1.0, blur=0.05, scaling=0.5, max_points=None)(xs32, y32)
    torch.testing.assert_close(ours32, ref.float(), rtol=5e-4, atol=0)


@pytest.mark.parametrize("blur,scaling", [(0.05, 0.3), (0.01, 0.9), (0.25, 0.5), (2.0, 0.5)])
def test_w1s_epsilon_schedule_is_geomloss_at_any_blur_and_scaling(blur, scaling):
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randn(40, 5, generator=g, dtype=torch.float64)
    ours = make_w1(weight=1.0, blur=blur, scaling=scaling, max_points=None)(x, y)
    reference = SamplesLoss("sinkhorn", p=1, blur=blur, scaling=scaling, debias=True, backend="tensorized",
                            diameter=2.0)(F.normalize(x, dim=-1), F.normalize(y, dim=-1))
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-15)   # a schedule off by one update differs


def test_a_cold_plan_iterates_from_zero_potentials_to_the_tolerance():
    g = torch.Generator().manual_seed(12)
    zid = torch.randn(200, 12, generator=g)
    zm = 0.3 * torch.randn(200, 12, generator=g) + zid.flip(1)
    transport = make_transport(eps=0.01, tol=1e-6, check_every=1, warm_iters=None)
    plan = transport.plan(zm, zid)
    assert 1 <= transport.last_iters < transport.max_refine_iters
    torch.testing.assert_close(plan.sum(0), torch.ones(12), atol=1e-5, rtol=0)   # columns to tol, rows exact
    torch.testing.assert_close(plan.sum(1), torch.ones(12), atol=1e-6, rtol=0)
    cost = dimension_cost(zm.double(), zid.double())
    cost = (cost / (cost.max() - cost.min())).numpy()
    ref = ot.sinkhorn(np.full(12, 1 / 12), np.full(12, 1 / 12), cost, 0.01, method="sinkhorn_log",
                      numItermax=5000, stopThr=1e-12) * 12
    np.testing.assert_allclose(plan.numpy(), ref, atol=1e-5)


def test_a_batch_of_problems_gives_each_problems_own_plan_cold_and_warm():
    g = torch.Generator().manual_seed(11)
    zid = torch.randn(150, 8, generator=g)
    zms = [torch.randn(150, 8, generator=g), 3.0 * torch.randn(150, 8, generator=g) + zid]  # scales differ
    batched = make_transport(eps=0.01, warm_iters=10)
    alone = [make_transport(eps=0.01, warm_iters=10) for _ in zms]
    for step in range(3):                                   # a cold start, then two warm steps
        zms = [z + 0.01 * step for z in zms]
        plans = batched.plan(torch.stack(zms), zid, key=("a", "b"))
        assert plans.shape == (2, 8, 8)
        for plan, solver, z in zip(plans, alone, zms, strict=True):
            # the cold start's test covers the worst problem of the batch: each is at least as converged
            torch.testing.assert_close(plan, solver.plan(z, zid, key="m"), atol=1e-4, rtol=0)
            if step == 0:                                   # converged to tol (warm steps track, not converge)
                torch.testing.assert_close(plan.sum(0), torch.ones(8), atol=1e-3, rtol=0)


def test_warm_plans_read_nothing_on_the_host():
    g = torch.Generator().manual_seed(5)
    zm, zid = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g)
    transport = make_transport(eps=0.01, warm_iters=10)
    transport.plan(zm, zid, key="text")                       # the cold start tests convergence (reads)
    with _HostReads() as mode:
        transport.plan(zm + 0.01, zid, key="text")
    assert mode.reads == []


def test_the_warm_start_potentials_travel_in_the_state_dict_so_a_resumed_plan_is_the_uninterrupted_one(tmp_path):
    g = torch.Generator().manual_seed(21)
    zms, zid = torch.randn(2, 120, 8, generator=g), torch.randn(120, 8, generator=g)
    transport = make_transport(eps=0.01, warm_iters=10)
    transport.plan(zms, zid, key=("image", "text"))                          # cold, then one warm step
    transport.plan(zms + 0.01, zid, key=("image", "text"))
    torch.save(transport.state_dict(), tmp_path / "ckpt.pt")
    uninterrupted = transport.plan(zms + 0.02, zid, key=("image", "text"))

    resumed = make_transport(eps=0.01, warm_iters=10)
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    assert torch.equal(resumed.plan(zms + 0.02, zid, key=("image", "text")), uninterrupted)
    cold = make_transport(eps=0.01, warm_iters=10)                       # without them: a cold start
    assert not torch.equal(cold.plan(zms + 0.02, zid, key=("image", "text")), uninterrupted)
