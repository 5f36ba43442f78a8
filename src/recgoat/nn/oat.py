"""Optimal adaptive transport (OAT): distribution-level alignment of RecGOAT, with geomloss.

Two readings of the method (docs/method.md), each switchable:

1. A transport *map over embedding dimensions* (the authors' code): the entropic OT plan between
   the ``d`` dimensions of a modality embedding ``Z^m`` and of the ID embedding ``Z^id`` (each
   dimension a point in R^n, cost = mean squared difference over items), detached, rescaled to a
   doubly-stochastic matrix, plus a learnable correction: ``Z~^m = Z^m (d T* + Delta^m)``.
2. An explicit 1-Wasserstein loss: the debiased Sinkhorn divergence with p=1 between the batch's
   aligned modality embeddings and its ID item embeddings (L2-normalised point clouds).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from geomloss import SamplesLoss

# geomloss' own Sinkhorn loop, called without SamplesLoss' input handling (see SinkhornW1); pinned version
from geomloss._legacy.sinkhorn_divergence import epsilon_schedule, sinkhorn_cost, sinkhorn_loop
from geomloss._legacy.sinkhorn_samples import softmin_tensorized
from geomloss._legacy.utils import distances
from torch import Tensor, nn


def dimension_cost(zm: Tensor, zid: Tensor, scale: float = 1.0) -> Tensor:
    """``C[p, q] = scale * mean_i (zm[i, p] - zid[i, q])^2``, ``[d_m, d_id]``.

    Uses ``mean(zm^2)_p + mean(zid^2)_q - 2/n (zm^T zid)_pq``: never the ``n x d x d`` tensor.
    """
    n = zm.shape[0]
    c = (zm.pow(2).mean(0)[:, None] + zid.pow(2).mean(0)[None, :] - 2.0 / n * (zm.T @ zid))
    return scale * c.clamp_min(0)


class DimensionTransport(nn.Module):
    r"""Entropic OT plan between embedding dimensions, from geomloss's Sinkhorn potentials.

    With uniform marginals ``a = b = 1/d`` and dual potentials ``f, g`` of
    :math:`\mathrm{OT}_\varepsilon`, the plan is (log domain, no under-flow)

    .. math::
        T^*_{pq} = \exp\big(\log a_p + \log b_q + (f_p + g_q - C_{pq}) / \varepsilon\big)

    geomloss stops after its :math:`\varepsilon`-scaling schedule with marginals that are only
    approximately met (errors of 10-20% at small :math:`\varepsilon`), so log-domain Sinkhorn
    updates continue from its potentials until both marginals hold to ``tol`` (at most
    ``max_refine_iters``; the test every ``check_every`` updates). During training the embeddings move
    little between steps, so with ``warm_iters`` the previous call's potentials start exactly
    ``warm_iters`` updates instead, with no convergence test (no host synchronisation, a fixed cost per
    step): the potentials track the moving fixed point across steps. The result is returned as
    ``d T^*`` (rows and columns sum to 1 once converged) and carries no gradient.

    Args:
        eps: entropic regularisation :math:`\varepsilon` (authors: 0.01).
        cost_scale: multiplier of the cost (authors: 100), applied after ``normalize_cost``.
        normalize_cost: divide the cost by its spread (max - min) first, so ``eps`` is relative to
            the differences between dimensions and does not depend on the embeddings' scale
            (design choice: with the authors' raw cost x 100, eps 0.01 is a different regime for
            every embedding scale; subtracting a constant does not change the plan).
        scaling: geomloss's :math:`\varepsilon`-scaling ratio (closer to 1: more iterations).
        tol: marginal tolerance of the refinement (on ``d T*``, whose marginals are all ones).
        max_refine_iters: cap on the refinement iterations.
        check_every: updates between two tests of the marginals (each test a host synchronisation).
        warm_iters: Sinkhorn updates of a call that starts from the previous call's potentials for the same ``key``;
            ``None``: no warm start, every call iterates from geomloss's solution to ``tol``.
    """

    def __init__(self, eps: float = 0.01, cost_scale: float = 1.0, normalize_cost: bool = True, scaling: float = 0.5,
                 tol: float = 1e-4, max_refine_iters: int = 2000, check_every: int = 10, warm_iters: int | None = 10,
                 compile: bool = False):
        super().__init__()
        if warm_iters is not None and warm_iters < 1:
            raise ValueError(f"oat_map.warm_iters must be >= 1 or null, got {warm_iters}")
        self.warm_iters = warm_iters
        self.check_every = check_every
        self._potentials: dict[str, tuple[Tensor, Tensor]] = {}
        self.eps = eps
        self.cost_scale = cost_scale
        self.normalize_cost = normalize_cost
        self._norm = 1.0
        self.tol = tol
        self.max_refine_iters = max_refine_iters
        self.last_iters = 0
        # p=2 with a custom cost: geomloss's epsilon is blur^p
        self.solver = SamplesLoss("sinkhorn", p=2, blur=math.sqrt(eps), scaling=scaling, debias=False,
                                  potentials=True, backend="tensorized", cost=self._cost)
        self._n = 1
        self.warm_plan = _Compiled(self._warm_plan) if compile else self._warm_plan

    def _cost(self, x: Tensor, y: Tensor) -> Tensor:
        # x: [B, d, n], y: [B, d, n] -> [B, d, d]; dimensions are the points, items the coordinates
        xx = x.pow(2).sum(-1)[:, :, None]
        yy = y.pow(2).sum(-1)[:, None, :]
        return self.cost_scale / (self._n * self._norm) * (xx + yy - 2 * x @ y.transpose(1, 2)).clamp_min(0)

    def _scaled_cost(self, zm: Tensor, zid: Tensor) -> tuple[Tensor, Tensor | float]:
        """The cost ``[d_m, d_id]`` as the solver takes it, and the normalisation it was divided by."""
        cost = dimension_cost(zm, zid)
        norm = (cost.max() - cost.min()).clamp_min(1e-12) if self.normalize_cost else 1.0  # no .item(): no sync
        return cost * (self.cost_scale / norm), norm

    def _updates(self, neg_k: Tensor, big_f: Tensor, big_g_next: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` log-domain Sinkhorn updates in units of eps (``F = f/eps``, ``G = g/eps``, ``K = -C/eps``), from
        ``F`` and the ``G`` it gives; returns ``(F, G, G')``, ``G'`` the next g-update (for the marginal test)."""
        log_b = -math.log(neg_k.shape[1])
        big_g = big_g_next
        for _ in range(n):
            big_g = big_g_next
            big_f = -torch.logsumexp(log_b + big_g[None, :] + neg_k, dim=1)
            big_g_next = self._g_update(neg_k, big_f)
        return big_f, big_g, big_g_next

    def _to_plan(self, neg_k: Tensor, big_f: Tensor, big_g: Tensor) -> Tensor:
        d_m, d_id = neg_k.shape
        log_plan = -math.log(d_m) - math.log(d_id) + big_f[:, None] + big_g[None, :] + neg_k
        return (log_plan.exp() * d_m).float()

    def _warm_plan(self, zm: Tensor, zid: Tensor, f: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A step's plan from the last step's potentials: exactly ``warm_iters`` updates, no test (no host
        synchronisation); returns (plan, f, g)."""
        neg_k = -self._scaled_cost(zm, zid)[0] / self.eps
        big_f = f / self.eps
        big_f, big_g, _ = self._updates(neg_k, big_f, self._g_update(neg_k, big_f), self.warm_iters)
        return self._to_plan(neg_k, big_f, big_g), big_f * self.eps, big_g * self.eps

    @staticmethod
    def _g_update(neg_k: Tensor, big_f: Tensor) -> Tensor:
        return -torch.logsumexp(-math.log(neg_k.shape[0]) + big_f[:, None] + neg_k, dim=0)

    @torch.no_grad()
    def plan(self, zm: Tensor, zid: Tensor, key: str | None = None) -> Tensor:
        """The doubly-stochastic map ``d T*`` ``[d_m, d_id]`` for ``zm`` ``[n, d_m]``, ``zid`` ``[n, d_id]``.

        ``key`` names the problem (e.g. the modality) whose potentials warm-start the next call.
        """
        zm, zid = zm.detach().double(), zid.detach().double()
        d_m = zm.shape[1]
        cached = self._potentials.get(key) if self.warm_iters is not None and key is not None else None
        if cached is not None and cached[0].shape == (d_m,) and cached[0].device == zm.device:
            plan, f, g = self.warm_plan(zm, zid, *cached)
            self.last_iters = self.warm_iters
            self._potentials[key] = (f, g)
            return plan
        cost, self._norm = self._scaled_cost(zm, zid)
        self._n = zm.shape[0]                                              # self._cost reads _n and _norm
        neg_k = -cost / self.eps
        f, _ = self.solver(zm.T.contiguous(), zid.T.contiguous())         # same cost, via self._cost
        big_f = f.reshape(d_m) / self.eps
        # After an f-update the rows are exact; the columns then sum to b * exp(G - G'), where G' is the
        # next g-update, so the marginal check costs nothing extra: stop when |exp(G - G') - 1| < tol
        # (the plan's columns are d_id * b = 1 in the returned scale); a test every check_every updates.
        big_g_next = self._g_update(neg_k, big_f)
        self.last_iters = 0
        while self.last_iters < self.max_refine_iters:
            n = min(self.check_every, self.max_refine_iters - self.last_iters)
            big_f, big_g, big_g_next = self._updates(neg_k, big_f, big_g_next, n)
            self.last_iters += n
            if (big_g - big_g_next).exp().sub(1).abs().max() < self.tol:
                break
        if key is not None:
            self._potentials[key] = (big_f * self.eps, big_g * self.eps)
        return self._to_plan(neg_k, big_f, big_g)


class AdaptiveTransportMap(nn.Module):
    r"""``Z~^m = Z^m (d T^* + \Delta^m)``: the detached OT map plus a learnable ``d x d`` correction.

    Args:
        dim: d.
        transport: the :class:`DimensionTransport` solver.
    """

    def __init__(self, dim: int, transport: DimensionTransport, key: str | None = None):
        super().__init__()
        self.transport = transport
        self.key = key
        self.delta = nn.Parameter(torch.zeros(dim, dim))

    def forward(self, zm: Tensor, zid: Tensor) -> Tensor:
        # zm, zid: [n, d] -> [n, d]
        return zm @ (self.transport.plan(zm, zid, key=self.key) + self.delta)


class _Compiled:
    """``torch.compile(fn)``, compiled on the first call and never pickled or deep-copied (a module holding it can
    be, and compiles again where it is used)."""

    def __init__(self, fn):
        self.fn, self.compiled = fn, None

    def __call__(self, *args):
        if self.compiled is None:
            self.compiled = torch.compile(self.fn)
        return self.compiled(*args)

    def __getstate__(self):
        return {"fn": self.fn, "compiled": None}

    def __deepcopy__(self, memo):
        return _Compiled(copy.deepcopy(self.fn, memo))


class SinkhornW1(nn.Module):
    r"""Debiased Sinkhorn divergence :math:`S_\varepsilon` with p=1 between two point clouds of
    L2-normalised embeddings (uniform weights), a differentiable estimate of W1:

    .. math::
        S_\varepsilon(\alpha, \beta) = \mathrm{OT}_\varepsilon(\alpha, \beta)
            - \tfrac12 \mathrm{OT}_\varepsilon(\alpha, \alpha) - \tfrac12 \mathrm{OT}_\varepsilon(\beta, \beta),
        \qquad C(x, y) = \lVert x - y \rVert, \quad \varepsilon = \mathrm{blur}

    Clouds larger than ``max_points`` are subsampled (the same random rows of both, so paired
    items stay paired): a few hundred points is a sound stochastic estimate at a fraction of the
    quadratic cost. Several clouds against one target (one per modality) are solved as one batch.

    The solver is geomloss's tensorized Sinkhorn loop (what ``SamplesLoss("sinkhorn", p=1, debias=True,
    backend="tensorized")`` runs, to the bit) called with uniform log-weights and the epsilon schedule of the
    unit vectors' diameter (2), both fixed at construction: ``SamplesLoss`` masks the log-weights with a boolean
    index (two host synchronisations per call on a GPU) and, without a diameter, measures it (another).
    The schedule runs ``len(eps_list)`` symmetric updates: 2 -> blur by factors of ``scaling``.

    Args:
        weight: :math:`\lambda_{ot}`, the multiplier of the term in the model's loss.
        blur: the final entropic scale :math:`\varepsilon` (= blur^p, p=1).
        scaling: ratio of two successive epsilons of the annealing schedule (smaller: fewer updates).
        max_points: subsample size (``None``: all points).
        compile: run the solver (normalisation, costs, Sinkhorn loop) as one graph compiled by ``torch.compile``:
            some ten fused kernels instead of about 500 small ops, for launch-bound devices; compiled on the first
            call.

    Shapes: ``[n, d]`` or a list of ``M`` of them (their divergences summed), ``[n, d]`` -> scalar.
    """

    diameter = 2.0  # of L2-normalised points

    def __init__(self, weight: float = 0.05, blur: float = 0.05, scaling: float = 0.5, max_points: int | None = 128,
                 compile: bool = False):
        super().__init__()
        self.weight = weight
        self.max_points = max_points
        self.blur = blur
        self.eps_list = [float(e) for e in epsilon_schedule(1, self.diameter, blur, scaling)]
        self.solve = _Compiled(self._divergence) if compile else self._divergence

    def forward(self, x: Tensor | list[Tensor], y: Tensor) -> Tensor:
        xs = torch.stack(x) if isinstance(x, list | tuple) else x[None]              # [M, n, d]
        if self.max_points is not None and xs.shape[1] > self.max_points:
            idx = torch.randperm(xs.shape[1], device=xs.device)[: self.max_points]
            xs, y = xs[:, idx], y[idx]
        return self.solve(xs, y)

    def _divergence(self, xs: Tensor, y: Tensor) -> Tensor:
        # xs: [M, n, d], y: [n, d] -> the sum of the M divergences
        xs = F.normalize(xs, dim=-1)
        ys = F.normalize(y, dim=-1).expand(xs.shape[0], -1, -1)
        weights = torch.ones(xs.shape[:2], dtype=xs.dtype, device=xs.device) / xs.shape[1]   # [M, n], uniform
        log_weights = weights.log()
        # geomloss' gradient convention: the right-hand side of each cost is detached (and its order of them)
        c_xy, c_yx = distances(xs, ys.detach()), distances(ys, xs.detach())
        c_xx, c_yy = distances(xs, xs.detach()), distances(ys, ys.detach())
        f_aa, g_bb, g_ab, f_ba = sinkhorn_loop(softmin_tensorized, log_weights, log_weights, c_xx, c_yy, c_xy, c_yx,
                                               self.eps_list, None, debias=True)
        return sinkhorn_cost(self.blur, None, weights, weights, f_aa, g_bb, g_ab, f_ba, batch=True, debias=True).sum()
