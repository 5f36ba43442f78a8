"""Optimal adaptive transport (OAT): distribution-level alignment of RecGOAT. Its Sinkhorn loops are geomloss'
algorithms written out for stacked problems and held to geomloss' public ``SamplesLoss`` in tests (tests/test_oat.py).

Two readings of the method (docs/method.md), each switchable:

1. A transport *map over embedding dimensions* (the authors' code): the entropic OT plan between
   the ``d`` dimensions of a modality embedding ``Z^m`` and of the ID embedding ``Z^id`` (each
   dimension a point in R^n, cost = mean squared difference over items), detached, rescaled to a
   doubly-stochastic matrix, plus a learnable correction: ``Z~^m = Z^m (d T* + Delta^m)``.
2. An explicit 1-Wasserstein loss: the debiased Sinkhorn divergence with p=1 between the batch's
   aligned modality embeddings and its ID item embeddings (L2-normalised point clouds).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dimension_cost(zm: Tensor, zid: Tensor, scale: float = 1.0) -> Tensor:
    """``C[p, q] = scale * mean_i (zm[i, p] - zid[i, q])^2``, ``[d_m, d_id]`` (``zm`` may carry a leading batch of
    ``M`` problems against the one ``zid``: ``[M, d_m, d_id]``).

    Uses ``mean(zm^2)_p + mean(zid^2)_q - 2/n (zm^T zid)_pq``: never the ``n x d x d`` tensor.
    """
    n = zm.shape[-2]
    c = (zm.pow(2).mean(-2).unsqueeze(-1) + zid.pow(2).mean(0) - 2.0 / n * (zm.transpose(-1, -2) @ zid))
    return scale * c.clamp_min(0)


class DimensionTransport(nn.Module):
    r"""Entropic OT plan between embedding dimensions, by log-domain Sinkhorn updates.

    With uniform marginals ``a = b = 1/d`` and dual potentials ``f, g`` of
    :math:`\mathrm{OT}_\varepsilon`, the plan is (log domain, no under-flow)

    .. math::
        T^*_{pq} = \exp\big(\log a_p + \log b_q + (f_p + g_q - C_{pq}) / \varepsilon\big)

    A cold start iterates from zero potentials until both marginals hold to ``tol`` (at most
    ``max_refine_iters`` updates; the test every ``check_every`` updates). During training the embeddings move
    little between steps, so with ``warm_iters`` the previous call's potentials start exactly
    ``warm_iters`` updates instead, with no convergence test (no host synchronisation, a fixed cost per
    step): the potentials track the moving fixed point across steps. The same updates either way. The result is
    returned as ``d T^*`` (rows and columns sum to 1 once converged) and carries no gradient. Several problems
    against one target (one per modality) are solved as one batch: the same updates, one kernel each for all.

    Args:
        eps: entropic regularisation :math:`\varepsilon` (authors: 0.01).
        cost_scale: multiplier of the cost (authors: 100), applied after ``normalize_cost``.
        normalize_cost: divide the cost by its spread (max - min) first, so ``eps`` is relative to
            the differences between dimensions and does not depend on the embeddings' scale
            (design choice: with the authors' raw cost x 100, eps 0.01 is a different regime for
            every embedding scale; subtracting a constant does not change the plan).
        tol: marginal tolerance of a cold start (on ``d T*``, whose marginals are all ones).
        max_refine_iters: cap on a cold start's updates.
        check_every: updates between two tests of the marginals (each test a host synchronisation).
        warm_iters: Sinkhorn updates of a call that starts from the previous call's potentials for the same ``key``;
            ``None``: no warm start, every call iterates from zero potentials to ``tol``.

    Shapes: :meth:`plan` ``zm`` ``[n, d_m]`` or ``[M, n, d_m]``, ``zid`` ``[n, d_id]`` -> ``[d_m, d_id]`` or
    ``[M, d_m, d_id]``.
    """

    def __init__(self, *, eps: float, cost_scale: float, normalize_cost: bool, tol: float, max_refine_iters: int,
                 check_every: int, warm_iters: int | None):
        super().__init__()
        if warm_iters is not None and warm_iters < 1:
            raise ValueError(f"oat_map.warm_iters must be >= 1 or null, got {warm_iters}")
        self.warm_iters = warm_iters
        self.check_every = check_every
        self._potentials: dict[object, tuple[Tensor, Tensor]] = {}
        self.eps = eps
        self.cost_scale = cost_scale
        self.normalize_cost = normalize_cost
        self.tol = tol
        self.max_refine_iters = max_refine_iters
        self.last_iters = 0

    # The warm-start potentials are part of the training state: a checkpoint carries them, so a resumed run takes
    # the same warm updates as an uninterrupted one (a cold start would land on a plan a rounding error away).
    def get_extra_state(self) -> list[tuple[object, Tensor, Tensor]]:
        return [(key, p, q) for key, (p, q) in self._potentials.items()]

    def set_extra_state(self, state: list[tuple[object, Tensor, Tensor]]) -> None:
        self._potentials = {tuple(key) if isinstance(key, list) else key: (p, q) for key, p, q in state}

    def _scaled_cost(self, zm: Tensor, zid: Tensor) -> Tensor:
        """The cost ``[M, d_m, d_id]`` as the updates take it (each problem normalised by its own spread)."""
        cost = dimension_cost(zm, zid)
        if not self.normalize_cost:
            return cost * self.cost_scale
        low, high = cost.flatten(1).aminmax(dim=1)
        return cost * (self.cost_scale / (high - low).clamp_min(1e-12)[:, None, None])   # no .item(): no sync

    # The updates keep the negated potentials in units of eps, P = -f/eps ([M, d_m, 1]) and Q = -g/eps
    # ([M, 1, d_id]), shaped to broadcast against the kernel's log plus the log-marginal, folded in once,
    # Ka = log a - C/eps and Kb = log b - C/eps (two ops an update):
    #   P = logsumexp_q(Kb - Q_q),  Q = logsumexp_p(Ka - P_p)
    @staticmethod
    def _p_update(kb: Tensor, q: Tensor) -> Tensor:
        return torch.logsumexp(kb - q, dim=-1, keepdim=True)

    @staticmethod
    def _q_update(ka: Tensor, p: Tensor) -> Tensor:
        return torch.logsumexp(ka - p, dim=-2, keepdim=True)

    def _updates(self, ka: Tensor, kb: Tensor, p: Tensor, q_next: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` Sinkhorn updates from ``P`` and the ``Q`` it gives; returns ``(P, Q, Q')``: the last P-update, the
        ``Q`` it read, and the next Q-update (for the marginal test)."""
        q = q_next
        for _ in range(n):
            q = q_next
            p = self._p_update(kb, q)
            q_next = self._q_update(ka, p)
        return p, q, q_next

    @staticmethod
    def _to_plan(kb: Tensor, p: Tensor, q: Tensor) -> Tensor:
        # d_m * exp(log a + log b - C/eps + f/eps + g/eps), with log a = -log d_m: rows exact after a P-update
        return (kb - p - q).exp().float()

    def _kernels(self, cost: Tensor) -> tuple[Tensor, Tensor]:
        neg_k = cost / -self.eps
        ka = neg_k - math.log(cost.shape[-2])
        return ka, (ka if cost.shape[-1] == cost.shape[-2] else neg_k - math.log(cost.shape[-1]))

    def warm_plan(self, zm: Tensor, zid: Tensor, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A step's plan from the last step's potentials: exactly ``warm_iters`` updates, no test (no host
        synchronisation); returns (plan, P, Q)."""
        ka, kb = self._kernels(self._scaled_cost(zm, zid))
        for _ in range(self.warm_iters):             # ends on a P-update: no marginal test reads the next Q
            q = self._q_update(ka, p)
            p = self._p_update(kb, q)
        return self._to_plan(kb, p, q), p, q

    @torch.no_grad()
    def plan(self, zm: Tensor, zid: Tensor, key: object = None, keep: bool = True) -> Tensor:
        """The doubly-stochastic map ``d T*`` of ``zm`` ``[n, d_m]`` (or of each of ``[M, n, d_m]``) to ``zid``
        ``[n, d_id]``. ``key`` names the problem (e.g. the modality, or the tuple of a batch's modalities) whose
        potentials warm-start the next call; ``keep=False`` reads them without replacing them (an evaluation, so
        that scoring a model twice, or from its checkpoint, gives the same plan)."""
        single = zm.dim() == 2
        zm, zid = (zm[None] if single else zm).detach().double(), zid.detach().double()
        batch_shape = zm.shape[:1] + zm.shape[2:] + (1,)                           # P's: [M, d_m, 1]
        cached = self._potentials.get(key) if self.warm_iters is not None and key is not None else None
        if cached is not None and cached[0].shape == batch_shape and cached[0].device == zm.device:
            plan, p, q = self.warm_plan(zm, zid, *cached)
            self.last_iters = self.warm_iters
            if keep:
                self._potentials[key] = (p, q)
            return plan[0] if single else plan
        ka, kb = self._kernels(self._scaled_cost(zm, zid))
        p = zm.new_zeros(batch_shape)                                              # zero potentials
        # After a P-update the rows are exact; the columns then sum to b * exp(Q' - Q), where Q' is the
        # next Q-update, so the marginal check costs nothing extra: stop when |exp(Q' - Q) - 1| < tol
        # (the plan's columns are d_id * b = 1 in the returned scale); a test every check_every updates.
        q_next = self._q_update(ka, p)
        self.last_iters = 0
        while self.last_iters < self.max_refine_iters:
            n = min(self.check_every, self.max_refine_iters - self.last_iters)
            p, q, q_next = self._updates(ka, kb, p, q_next, n)
            self.last_iters += n
            if (q_next - q).exp().sub(1).abs().max() < self.tol:
                break
        if key is not None and keep:
            self._potentials[key] = (p, q)
        plan = self._to_plan(kb, p, q)
        return plan[0] if single else plan


class AdaptiveTransportMap(nn.Module):
    r"""``Z~^m = Z^m (d T^*_m + \Delta^m)`` for M modalities at once: each modality's detached OT map plus its
    learnable ``d x d`` correction (one ``[M, d, d]`` parameter: one product for all).

    Args:
        n_maps: M.
        dim: d.

    Shapes: ``z`` ``[M, n, d]``, ``plans`` ``[M, d, d]`` (:meth:`DimensionTransport.plan`) -> ``[M, n, d]``.
    """

    def __init__(self, n_maps: int, dim: int):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(n_maps, dim, dim))

    def forward(self, z: Tensor, plans: Tensor) -> Tensor:
        return z @ (plans + self.delta)


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

    The solver is geomloss's tensorized Sinkhorn loop, what ``SamplesLoss("sinkhorn", p=1, debias=True,
    backend="tensorized")`` computes, to rounding (a test, value and gradient): its symmetric updates with
    epsilon-scaling, then one last update with gradients through the costs only. The loop is written out here
    (:func:`sinkhorn_loop_stacked`) so that the four problems of the debiased divergence (x-y, y-x, x-x, y-y), for
    every cloud, take one stacked soft-min per update instead of four, each update in six ops. Uniform log-weights
    (a constant) and the epsilon schedule of the unit vectors' diameter (2, fixed at construction) read nothing on
    the host: ``SamplesLoss`` masks the log-weights with a boolean index (two host synchronisations per call on a
    GPU) and, without a diameter, measures it (another).
    The schedule runs ``len(eps_list)`` symmetric updates: 2 -> blur by factors of ``scaling``.

    Args:
        weight: :math:`\lambda_{ot}`, the multiplier of the term in the model's loss.
        blur: the final entropic scale :math:`\varepsilon` (= blur^p, p=1).
        scaling: ratio of two successive epsilons of the annealing schedule (smaller: fewer updates).
        max_points: subsample size (``None``: all points).

    Shapes: ``[n, d]``, or ``M`` of them (``[M, n, d]`` or a list; their divergences summed), ``[n, d]`` -> scalar.
    """

    diameter = 2.0  # of L2-normalised points

    def __init__(self, *, weight: float, blur: float, scaling: float, max_points: int | None):
        super().__init__()
        self.weight = weight
        self.max_points = max_points
        self.blur = blur
        self.eps_list = epsilon_schedule(self.diameter, blur, scaling)

    def forward(self, x: Tensor | list[Tensor], y: Tensor, unit: bool = False) -> Tensor:
        """``unit``: the points are unit vectors already (not normalised again)."""
        xs = torch.stack(x) if isinstance(x, list | tuple) else x if x.dim() == 3 else x[None]   # [M, n, d]
        if self.max_points is not None and xs.shape[1] > self.max_points:
            idx = torch.randperm(xs.shape[1], device=xs.device)[: self.max_points]
            xs, y = xs[:, idx], y[idx]
        m, n = xs.shape[:2]
        if not unit:
            xs, y = F.normalize(xs, dim=-1), F.normalize(y, dim=-1)
        ys = y.expand(m, -1, -1)
        # the problems stacked [4M, n, n]: C_xy, C_yx, C_xx, C_yy; geomloss' gradient convention: the right-hand
        # side of each cost is detached
        costs = unit_distances(torch.cat([xs, ys, xs, ys]), torch.cat([ys, xs, xs, ys]).detach())
        potentials = sinkhorn_loop_stacked(costs, self.eps_list)                     # f_ba, g_ab, f_aa, g_bb
        # uniform weights 1/n: S = sum_m <1/n, f_ba - f_aa> + <1/n, g_ab - g_bb>
        cross, own = potentials.view(2, -1).sum(1).unbind()
        return (cross - own) / n


def epsilon_schedule(diameter: float, blur: float, scaling: float) -> list[float]:
    """geomloss' epsilon-scaling schedule for p=1 (``epsilon_schedule(1, diameter, blur, scaling)``): the diameter,
    then ``exp(t)`` for ``t`` from ``log(diameter)`` down to ``log(blur)`` in steps of ``log(scaling)`` (exclusive),
    then the blur. A test holds it to geomloss' own."""
    step = math.log(scaling)
    start, stop = math.log(diameter), math.log(blur)
    count = max(0, math.ceil((stop - start) / step))
    return [diameter, *(math.exp(start + k * step) for k in range(count)), blur]


def unit_distances(x: Tensor, y: Tensor) -> Tensor:
    """``||x_i - y_j||`` of unit vectors, ``sqrt(2 - 2 <x_i, y_j>)`` (clamped at geomloss' 1e-8 below the root):
    geomloss' ``distances`` less the squared norms, which are 1 (their gradient is radial, and the normalisation
    that made the vectors removes it). Shapes: ``[B, n, d]``, ``[B, m, d]`` -> ``[B, n, m]``."""
    return torch.rsub(x @ y.mT, 2.0, alpha=2.0).clamp_min(1e-8).sqrt()


def sinkhorn_loop_stacked(costs: Tensor, eps_list: list[float]) -> Tensor:
    r"""geomloss' ``sinkhorn_loop`` (debiased, balanced, one scale, uniform weights) on the four problems of a
    debiased divergence stacked in the batch dimension: ``costs`` ``[4M, n, n]`` are ``C_xy, C_yx, C_xx, C_yy`` (in
    that order, M each) and the potentials ``[4M, n]`` come back as ``f_ba, g_ab, f_aa, g_bb``. Each update of a
    problem reads its partner's potential (x-y reads y-x's and the reverse; x-x and y-y their own):

    .. math::
        f \leftarrow \tfrac12 \big(f - \varepsilon \log \textstyle\sum_j \exp(\log\tfrac1n + g_j/\varepsilon
            - C_{ij}/\varepsilon)\big)

    geomloss' soft-min (``softmin_tensorized``) and averaging with the scalars folded into each op (``alpha=``), so
    six ops an update instead of eleven and the same values to rounding; the loop runs without gradients and
    the last update with them (through the costs), as geomloss' ``last_extrapolation``."""
    m, n = costs.shape[0] // 4, costs.shape[-1]
    # pot[partner] is [4M, 1, n]: the partner's potential as a row against each problem's cost rows
    partner = torch.arange(4 * m, device=costs.device).view(4, m)[[1, 0, 2, 3]].view(-1, 1)
    log_w = torch.full((4 * m, 1, n), -math.log(n), dtype=costs.dtype, device=costs.device)

    def log_sum(eps: float, potentials: Tensor) -> Tensor:       # log sum_j exp(log w_j + g_j/eps - C_ij/eps)
        return torch.add(log_w, potentials[partner], alpha=1 / eps).sub(costs, alpha=1 / eps).logsumexp(2)

    with torch.no_grad():
        eps = eps_list[0]
        potentials = torch.sub(log_w, costs, alpha=1 / eps).logsumexp(2).mul_(-eps)
        for eps in eps_list:
            potentials = log_sum(eps, potentials).mul_(-0.5 * eps).add_(potentials, alpha=0.5)
    return log_sum(eps, potentials).mul(-eps)
