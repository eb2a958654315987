r"""Exact projection of a batch onto its pooled band, and onto its own band and the pooled
band together, with prediction bounds inside the problem.

A batch of rows :math:`x_i` in cells :math:`c` (label class :math:`k`, group :math:`s`) joins
a pool that has already served :math:`N_c` predictions summing to :math:`o_c`. With
:math:`T_c = N_c + n_c` the pooled mean of a cell after the batch is
:math:`P_c = (o_c + \sum_{i \in c} q_i) / T_c`. We solve

.. math::

    \min_q \tfrac12 \|q - x\|^2 \quad\text{s.t.}\quad lo \le q \le hi,\quad
    \text{(B)}\ P_c \in [b_k, b_k + \varepsilon_k]\ \forall c \in k,\quad
    \text{(A, optional)}\ \bar q_c \in [a_k, a_k + \varepsilon]\ \forall c \in k,

(A) over the cells present in the batch. A cell absent from the batch has a fixed pooled mean
:math:`p_c = o_c / N_c`.

**KKT.** Every constraint sees a cell through its sum only, so stationarity gives one shift
per cell, :math:`q_i = \operatorname{clip}(x_i + \delta_c, lo, hi)`, and the cell's mean
:math:`M_c(\delta)` is continuous, non-decreasing and piecewise linear (the polylines of
:mod:`.solver`). Its inverse gives the shift that reaches a target mean.

**(B) alone** (:func:`pooled_band_boxed`). For a band position :math:`b` each present cell
moves its pooled mean into :math:`[b, b + \varepsilon]` by the smallest change: to
:math:`\operatorname{clamp}(P_c(0), b, b + \varepsilon)`. Stationarity in :math:`b` says
:math:`\Phi(b) = \sum_c T_c \delta_c(b) = 0` (multipliers :math:`T_c\delta_c` of the cells'
band constraints) with :math:`b` inside the interval that the fixed cells allow.
:math:`\Phi` is non-decreasing and piecewise linear in :math:`b`, with kinks where a cell's
target crosses a vertex of its polyline (:math:`b = P_{c,j}` or :math:`P_{c,j} -
\varepsilon`). It is evaluated at every kink at once; on the piece where it first turns
positive it is affine, read off two interior points, and its root there is exact. The served
rows depend on :math:`b` only (a flat piece of :math:`M_c` changes the shift, not the rows).
When the fixed cells lie more than :math:`\varepsilon` apart or the bounds keep a cell out
of reach, :math:`\varepsilon_k` widens to the smallest reachable gap.

**(A) and (B), two groups** (:func:`joint_boxed`). The feasible cell means form a convex
polygon and the cost :math:`\sum_c f_c(\bar q_c)` is separable and convex, so the optimum is
the unconstrained point (the clipped rows), the projection onto (A) alone
(:func:`~.solver.project_cells`) or onto (B) alone when that one satisfies the other band,
and otherwise a vertex where both bands bind: one of four intersections of their lines,
each a 2 x 2 linear system, of which the cheapest inside the box wins.

**Three or more groups** (:func:`_both_bands`). When neither single projection satisfies
the other band, the cost :math:`G(b) = \min_a g(a, b)` is convex in the pooled band's
position :math:`b`; a search (33 positions at once, refined eight times) over the
interval of :math:`b` for which some batch band fits runs with the batch band solved
exactly for each :math:`b` (each cell's
target also held in the interval that keeps its pooled mean in the pooled band). Every
point evaluated is feasible, so both bands and the bounds hold exactly; the cost is
optimal to the resolution of the search.

All arithmetic is float64 on the rows' device; nothing is differentiated here (serving).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from .solver import _Polylines, project_cells

__all__ = ["joint_boxed", "pooled_band_boxed"]

_F64 = torch.float64


class _CellMaps:
    """Every cell's map shift -> mean of its clipped rows, as padded tables, and its inverse.

    ``D``/``V``: (C, L) the shifts and means at the cell's polyline vertices (the events of
    :class:`~.solver._Polylines`), padded by repeating the last vertex; ``m0``: (C,) the mean
    of the clipped rows at shift 0.
    """

    def __init__(self, x: Tensor, cell: Tensor, n: Tensor, lo: float, hi: float) -> None:
        P = _Polylines(x, cell, n, lo, hi)
        size = P.end - P.start
        L = int(size.max())
        idx = torch.minimum(P.start.unsqueeze(1) + torch.arange(L, device=x.device),
                            (P.end - 1).unsqueeze(1))
        self.D = P.D.index_select(0, idx.reshape(-1)).view_as(idx)
        self.V = P.V.index_select(0, idx.reshape(-1)).view_as(idx)
        nn = n.reshape(-1)
        self.m0 = torch.bincount(cell, weights=x.clamp(lo, hi), minlength=nn.numel()) \
            / nn.clamp(min=1)
        self.lo, self.hi = lo, hi

    def shift(self, target: Tensor) -> Tensor:
        """Shifts (C, Q) that bring each cell's mean to ``target`` (C, Q) (the smallest such
        shift; targets beyond the bounds give the end shifts)."""
        V, D = self.V, self.D
        L = V.shape[1]
        j = torch.searchsorted(V, target.contiguous()).clamp_(1, max(L - 1, 1))
        jm = j - 1
        v0, v1 = V.gather(1, jm), V.gather(1, j)
        d0, d1 = D.gather(1, jm), D.gather(1, j)
        den = v1 - v0
        t = torch.where(den > 0, (target - v0) / torch.where(den > 0, den, 1.0),
                        (target > v0).to(_F64))
        return torch.lerp(d0, d1, t.clamp_(0, 1))


def _pool(n: Tensor, prior_sum: Tensor, prior_count: Tensor, lo: float, hi: float,
          m0: Tensor, eps: float) -> tuple[Tensor, ...]:
    """Per cell (K, S): T, the pooled mean at shift 0, the reachable pooled range, and per
    class the tolerance and the interval of band positions that keep every cell in reach."""
    T = prior_count + n
    present = n > 0
    fixed = ~present & (prior_count > 0)
    safe_t = torch.where(present | fixed, T, 1.0)
    p_fixed = prior_sum / torch.where(fixed, prior_count, 1.0)
    p0 = torch.where(present, (prior_sum + n * m0) / safe_t, p_fixed)
    p_lo = torch.where(present, (prior_sum + n * lo) / safe_t, p_fixed)
    p_hi = torch.where(present, (prior_sum + n * hi) / safe_t, p_fixed)
    active = present | fixed
    low_end = torch.where(active, p_lo, -torch.inf).amax(-1)
    high_end = torch.where(active, p_hi, torch.inf).amin(-1)
    eps_k = torch.clamp(low_end - high_end, min=eps)
    return T, p0, present, eps_k, low_end - eps_k, high_end


def pooled_band_boxed(x: Tensor, cell: Tensor, K: int, S: int, eps: float,
                      bounds: tuple[float, float], prior_sum: Tensor, prior_count: Tensor
                      ) -> tuple[Tensor, Tensor]:
    """Projection of the rows onto (B) and the bounds (see the module docstring).

    ``x``: (N,) float64 rows; ``cell``: (N,) cells ``class * S + group``; ``prior_sum`` and
    ``prior_count``: (K, S) float64 served sums and counts before this batch. Returns
    ``(delta, eps_k)``: the shifts (K, S) (0 for cells absent from the batch; rows are
    ``clip(x + delta[cell])``) and the pooled tolerance used per class (K,).
    """
    lo, hi = bounds
    n = torch.bincount(cell, minlength=K * S).to(_F64).view(K, S)
    maps = _CellMaps(x, cell, n, lo, hi)
    T, _, present, eps_k, b_min, b_max = _pool(n, prior_sum, prior_count, lo, hi,
                                               maps.m0.view(K, S), eps)
    _, delta = _band_solve(maps, n, prior_sum, T, present, eps_k, b_min, b_max)
    return delta, eps_k


def _band_solve(maps: _CellMaps, n: Tensor, o: Tensor, T: Tensor, present: Tensor,
                eps_k: Tensor, b_min: Tensor, b_max: Tensor, jlo: Tensor | None = None,
                jhi: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""One band on :math:`P_c = (o_c + n_c M_c(\delta_c)) / T_c` over the present cells,
    band positions in ``[b_min, b_max]`` (K,), width ``eps_k`` (K,); optionally each cell's
    target also clamped into ``[jlo, jhi]`` (K, S) (another constraint's interval, whose
    multipliers then take the cell's force). Returns the band position (K,) and the shifts
    (K, S): the root of the non-decreasing, piecewise-linear force
    :math:`\Phi(b) = \sum_c T_c \delta_c(b)` over the cells bound by the band."""
    K, S = n.shape
    safe_n = n.clamp(min=1)
    safe_t = torch.where(present, T, 1.0)
    p0 = (o + n * maps.m0.view(K, S)) / safe_t
    e = eps_k.unsqueeze(-1)

    def forces(b: Tensor) -> tuple[Tensor, Tensor]:
        """Phi at band positions ``b`` (K, Q), and the shifts (K, S, Q)."""
        band = torch.minimum(torch.maximum(p0.unsqueeze(-1), b.unsqueeze(1)),
                             (b + e).unsqueeze(1))
        target = band if jlo is None else torch.minimum(
            torch.maximum(band, jlo.unsqueeze(-1)), jhi.unsqueeze(-1))  # type: ignore[union-attr]
        mean = (target * T.unsqueeze(-1) - o.unsqueeze(-1)) / safe_n.unsqueeze(-1)
        d = maps.shift(mean.reshape(K * S, -1)).view(K, S, -1)
        moved = present.unsqueeze(-1) & (target != p0.unsqueeze(-1))
        d = torch.where(moved, d, 0.0)
        by_band = moved & (target == band)
        return (T.unsqueeze(-1) * torch.where(by_band, d, 0.0)).sum(1), d

    # Kinks of Phi: every vertex of every present cell, on both branches (and the ends of
    # the clamps, where a cell's force changes hands).
    pv = (o.reshape(-1, 1) + n.reshape(-1, 1) * maps.V) / safe_t.reshape(-1, 1)
    pv = torch.where(present.reshape(-1, 1), pv, b_min.repeat_interleave(S).unsqueeze(1))
    pv = pv.view(K, -1)
    parts = [pv, pv - e, b_min.unsqueeze(1), b_max.unsqueeze(1)]
    if jlo is not None:
        parts += [torch.where(present, jlo, b_min.unsqueeze(1)),
                  torch.where(present, jhi - e, b_min.unsqueeze(1))]  # type: ignore[operator]
    cand = torch.minimum(torch.maximum(torch.cat(parts, 1), b_min.unsqueeze(1)),
                         b_max.unsqueeze(1))
    cand = cand.sort(1).values
    phi, _ = forces(cand)
    Q = cand.shape[1]
    j = (phi <= 0).sum(1, keepdim=True)
    # Phi is affine strictly between consecutive kinks: read it off two interior points.
    jl, jr = (j - 1).clamp(0, Q - 1), j.clamp(0, Q - 1)
    b0, b1 = cand.gather(1, jl), cand.gather(1, jr)
    inner = torch.cat([torch.lerp(b0, b1, 1 / 3), torch.lerp(b0, b1, 2 / 3)], 1)
    f, _ = forces(inner)
    slope = (f[:, 1] - f[:, 0]) / (inner[:, 1] - inner[:, 0])
    root = torch.where(slope > 0, inner[:, 0] - f[:, 0] / torch.where(slope > 0, slope, 1.0),
                       b0[:, 0])
    b = torch.minimum(torch.maximum(root, b0[:, 0]), b1[:, 0])
    b = torch.where(j[:, 0] == 0, cand[:, 0], torch.where(j[:, 0] == Q, cand[:, -1], b))
    _, d = forces(b.unsqueeze(1))
    return b, d[..., 0]


def _tolerance(maps: _CellMaps, o: Tensor, T: Tensor, present: Tensor, seen: Tensor) -> float:
    """Rounding tolerance of a feasibility test, relative to the size of the means."""
    K, S = o.shape
    pooled = torch.where(seen, o / torch.where(seen, T, 1.0), 0.0)
    m0 = torch.where(present, maps.m0.view(K, S), 0.0)
    return 1e-12 * (1.0 + float(torch.maximum(pooled.abs().max(), m0.abs().max())))


def _means(x: Tensor, cell: Tensor, n: Tensor, delta: Tensor, bounds: tuple[float, float]
           ) -> tuple[Tensor, Tensor]:
    """Cell means (K, S) and the cost per class (K,) of the rows clip(x + delta[cell])."""
    K, S = n.shape
    q = (x + delta.reshape(-1).index_select(0, cell)).clamp(*bounds)
    sums = torch.bincount(cell, weights=q, minlength=K * S).view(K, S)
    cost = torch.bincount(cell, weights=(q - x) ** 2, minlength=K * S).view(K, S).sum(1)
    return sums / n.clamp(min=1), cost


def _gap(values: Tensor, mask: Tensor) -> Tensor:
    hi = torch.where(mask, values, -torch.inf).amax(-1)
    lo = torch.where(mask, values, torch.inf).amin(-1)
    return torch.where(mask.sum(-1) >= 2, hi - lo, 0.0)


def joint_boxed(x: Tensor, cell: Tensor, K: int, S: int, eps: float,
                bounds: tuple[float, float], prior_sum: Tensor, prior_count: Tensor,
                use_a: bool, use_b: bool) -> tuple[Tensor, Tensor]:
    """Projection of the rows onto (A) (when ``use_a``), (B) (when ``use_b``) and the bounds.

    Arguments as in :func:`pooled_band_boxed`. Returns ``(q, eps_k)``: the rows (N,) and the
    pooled tolerance per class.
    """
    lo, hi = bounds
    n = torch.bincount(cell, minlength=K * S).to(_F64).view(K, S)
    present = n > 0
    if not use_b:
        q = project_cells(x, cell, K, S, eps, bounds).q if use_a else x.clamp(lo, hi)
        return q, torch.full((K,), eps, dtype=_F64, device=x.device)
    maps = _CellMaps(x, cell, n, lo, hi)
    T, _, present, eps_k, b_min, b_max = _pool(n, prior_sum, prior_count, lo, hi,
                                               maps.m0.view(K, S), eps)
    _, d_b = _band_solve(maps, n, prior_sum, T, present, eps_k, b_min, b_max)
    multi = present & (present.sum(-1, keepdim=True) >= 2)
    if not use_a or not bool(multi.any()):
        return _rows(x, cell, d_b, bounds), eps_k
    seen = present | (prior_count > 0)
    tol = _tolerance(maps, prior_sum, T, present, seen)

    def pooled_means(m: Tensor) -> Tensor:
        return torch.where(present, (prior_sum + n * m) / T.clamp(min=1),
                           prior_sum / prior_count.clamp(min=1))

    m_b, _ = _means(x, cell, n, d_b, bounds)
    m_0, _ = _means(x, cell, n, torch.zeros_like(d_b), bounds)
    d_a = project_cells(x, cell, K, S, eps, bounds).shifts.to(_F64)
    m_a, _ = _means(x, cell, n, d_a, bounds)
    zero = torch.zeros_like(d_b)
    # Per class, in order of preference: the unconstrained rows, (A) alone, (B) alone.
    ok_0 = (_gap(m_0, multi) <= eps + tol) & (_gap(pooled_means(m_0), seen) <= eps_k + tol)
    ok_a = _gap(pooled_means(m_a), seen) <= eps_k + tol
    ok_b = _gap(m_b, multi) <= eps + tol
    choice = torch.where(ok_0.unsqueeze(1), zero, torch.where(ok_a.unsqueeze(1), d_a, d_b))
    done = ok_0 | ok_a | ok_b
    if not bool(done.all()):
        both, ok_v = (_vertex if S == 2 else _both_bands)(
            maps, x, cell, n, T, prior_sum, present, eps, eps_k, b_min, b_max, bounds)
        choice = torch.where((~done & ok_v).unsqueeze(1), both, choice)
    return _rows(x, cell, choice, bounds), eps_k


def _rows(x: Tensor, cell: Tensor, delta: Tensor, bounds: tuple[float, float]) -> Tensor:
    return (x + delta.reshape(-1).index_select(0, cell)).clamp(*bounds)


def _vertex(maps: _CellMaps, x: Tensor, cell: Tensor, n: Tensor, T: Tensor,
            prior_sum: Tensor, present: Tensor, eps: float, eps_k: Tensor, b_min: Tensor,
            b_max: Tensor, bounds: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """Two groups: the cheapest of the four points where both bands bind, inside the box.
    Returns the shifts (K, 2) and whether one exists per class (K,)."""
    lo, hi = bounds
    K = n.shape[0]
    s = n / T.clamp(min=1)
    k = prior_sum[:, 1] / T[:, 1].clamp(min=1) - prior_sum[:, 0] / T[:, 0].clamp(min=1)
    sign = torch.tensor([-1.0, 1.0], dtype=_F64, device=x.device)
    sa = sign.repeat(2).view(1, 4)  # (A side, B side) over the four combinations
    sb = sign.repeat_interleave(2).view(1, 4)
    # m1 = m0 + sa eps and s1 m1 - s0 m0 = sb eps_k - k.
    den = (s[:, 1] - s[:, 0]).unsqueeze(1)
    safe = torch.where(den != 0, den, 1.0)
    m0 = (sb * eps_k.unsqueeze(1) - k.unsqueeze(1) - s[:, 1:2] * sa * eps) / safe
    m1 = m0 + sa * eps
    m = torch.stack([m0, m1], 1)  # (K, 2, 4)
    inside = (den != 0) & ((m >= lo) & (m <= hi)).all(1)
    d = maps.shift(m.reshape(2 * K, 4)).view(K, 2, 4)
    costs = []
    for j in range(4):
        _, c = _means(x, cell, n, d[..., j], bounds)
        costs.append(c)
    cost = torch.where(inside, torch.stack(costs, 1), torch.inf)
    best = cost.argmin(1)
    d_best = d.gather(2, best.view(K, 1, 1).expand(K, 2, 1))[..., 0]
    return d_best, torch.isfinite(cost.min(1).values)


_GRID = 33  # band positions evaluated at once
_LEVELS = 8  # the bracket shrinks 16-fold per level: to 2e-10 of its width


def _both_bands(maps: _CellMaps, x: Tensor, cell: Tensor, n: Tensor, T: Tensor,
                o: Tensor, present: Tensor, eps: float, eps_k: Tensor, b_min: Tensor,
                b_max: Tensor, bounds: tuple[float, float]) -> tuple[Tensor, Tensor]:
    r"""Three or more groups, both bands binding: the pooled band's position :math:`b` by a
    grid refinement of the convex cost :math:`G(b) = \min_a g(a, b)`, the batch band's
    :math:`a` exactly for each :math:`b` (:func:`_band_solve` with every cell's target also
    inside the interval that keeps its pooled mean in :math:`[b, b + \varepsilon_B]`). Every
    candidate is feasible, so both bands hold exactly; the cost is optimal to the search's
    resolution. Returns the shifts (K, S) and whether the bands are jointly reachable (K,)."""
    lo, hi = bounds
    K, S = n.shape
    safe_n = n.clamp(min=1)
    # Band positions b for which some a fits every present cell (linear in b, pairwise).
    u = torch.where(present, T / safe_n, 0.0)  # 1 / (n / T)
    v = torch.where(present, o / safe_n, 0.0)
    pair = present.unsqueeze(2) & present.unsqueeze(1)
    du = u.unsqueeze(2) - u.unsqueeze(1)
    rhs = v.unsqueeze(2) - v.unsqueeze(1) + eps_k.view(K, 1, 1) * u.unsqueeze(1) + eps
    upper = torch.where(pair & (du > 0), rhs / torch.where(du > 0, du, 1.0), torch.inf)
    lower = torch.where(pair & (du < 0), rhs / torch.where(du < 0, du, -1.0), -torch.inf)
    # Rounding: an exact-fit band (eps = 0) leaves an interval of one point.
    tol = _tolerance(maps, o, T, present, present)
    bad = (pair & (du == 0) & (rhs < -tol)).flatten(1).any(1)
    top = torch.where(present, (o + n * (hi + eps)) / torch.where(present, T, 1.0), torch.inf)
    bottom = torch.where(present, (o + n * (lo - eps)) / torch.where(present, T, 1.0)
                         - eps_k.unsqueeze(1), -torch.inf)
    b_lo = torch.maximum(torch.maximum(lower.flatten(1).amax(1), bottom.amax(1)), b_min)
    b_hi = torch.minimum(torch.minimum(upper.flatten(1).amin(1), top.amin(1)), b_max)
    ok = ~bad & (b_lo <= b_hi + tol)
    mid = 0.5 * (b_lo + b_hi)
    b_lo, b_hi = torch.minimum(b_lo, mid), torch.maximum(b_hi, mid)
    B = _GRID
    tiled = copy.copy(maps)
    tiled.V, tiled.D, tiled.m0 = maps.V.repeat(B, 1), maps.D.repeat(B, 1), maps.m0.repeat(B)
    nB, oB, presentB = n.repeat(B, 1), o.repeat(B, 1), present.repeat(B, 1)
    tt = torch.where(presentB, T.repeat(B, 1), 1.0)
    safe_nB = nB.clamp(min=1)
    epsB = eps_k.repeat(B)
    epsa = torch.full_like(epsB, eps)
    zeros = torch.zeros_like(oB)
    KS = K * S

    def solve(b: Tensor) -> tuple[Tensor, Tensor]:
        """Shifts (B, K, S) and costs (B, K) for the band positions ``b`` (B, K)."""
        bf = b.reshape(-1)
        jlo = ((bf.unsqueeze(1) * tt - oB) / safe_nB).clamp(lo, hi)
        jhi = (((bf + epsB).unsqueeze(1) * tt - oB) / safe_nB).clamp(lo, hi)
        a_min = torch.where(presentB, jlo, -torch.inf).amax(1) - eps
        a_max = torch.maximum(torch.where(presentB, jhi, torch.inf).amin(1), a_min)
        _, d = _band_solve(tiled, nB, zeros, nB, presentB, epsa, a_min, a_max, jlo, jhi)
        d = d.view(B, KS)
        q = (x + d.index_select(1, cell)).clamp(lo, hi)
        cost = torch.zeros(B, KS, dtype=_F64, device=x.device).index_add_(
            1, cell, (q - x) ** 2).view(B, K, S).sum(-1)
        return d.view(B, K, S), cost

    # Grid refinement: G is convex, so its minimum over the grid's points lies within one
    # spacing of the best point; each level narrows the bracket by (B - 1) / 2.
    steps = torch.linspace(0.0, 1.0, B, dtype=_F64, device=x.device).unsqueeze(1)
    left, right = b_lo.clone(), b_hi.clone()
    for _ in range(_LEVELS):
        b = left + steps * (right - left)  # (B, K)
        d, cost = solve(b)
        i = cost.argmin(0)  # (K,)
        best = d.gather(0, i.view(1, K, 1).expand(1, K, S))[0]
        width = (right - left) / (B - 1)
        centre = b.gather(0, i.view(1, K))[0]
        left = torch.maximum(centre - width, left)
        right = torch.minimum(centre + width, right)
    return best, ok
