r"""Exact, differentiable Euclidean projection of a batch onto group-mean constraints.

The rows of a batch belong to *cells* ``c = k * S + s`` (label class ``k``, group ``s``;
``K = 1`` for plain parity). Two problems are solved exactly:

**Band** (demographic parity, or equalized odds with one band per class):

.. math::

    q^\star = \arg\min_q \tfrac12\|q - z\|^2 \ \text{s.t.}\
    |\bar q_c - \bar q_{c'}| \le \varepsilon \ \forall c, c' \text{ of one class},\quad
    lo \le q \le hi .

The pairwise constraints hold iff the class's cell means lie in one band
:math:`[t_k, t_k + \varepsilon]`, so the problem is :math:`\min_{q, t}` with the constraints
:math:`t_k \le \bar q_c \le t_k + \varepsilon` (multipliers :math:`\lambda^{low}_c,
\lambda^{up}_c \ge 0`).

**Fixed** (mean residual fairness): :math:`l_c \le \bar q_c \le u_c` per cell with
:math:`[l_c, u_c] = [\bar y_c - \varepsilon, \bar y_c + \varepsilon]`; the cells decouple.

KKT conditions (Boyd & Vandenberghe, *Convex Optimization*, §5.5.3). Stationarity in
:math:`q_i` gives :math:`q_i = \operatorname{clip}(z_i + \delta_c, lo, hi)` with one shift per
cell, :math:`\alpha_c := n_c\delta_c = \lambda^{low}_c - \lambda^{up}_c`; stationarity in
:math:`t_k` gives :math:`\sum_{c \in k} \alpha_c = 0`. Let
:math:`M_c(\delta) = \operatorname{mean}_{i \in c}\operatorname{clip}(z_i + \delta, lo, hi)`
(continuous, non-decreasing, piecewise linear, kinks at :math:`lo - z_i` and :math:`hi - z_i`)
and :math:`m_c = M_c(0)`. For a band position :math:`t` the cheapest shift of cell ``c`` is

.. math::

    \delta_c(t) = \begin{cases} M_c^{-1}(t) & t > m_c \\
                  M_c^{-1}(t + \varepsilon) & t + \varepsilon < m_c \\ 0 & \text{else,}
                  \end{cases}

and the optimal :math:`t` is a root of the non-decreasing, piecewise-linear
:math:`F(t) = \sum_c n_c \delta_c(t)` (the derivative of the dual function in :math:`t`).
Its kinks are the values of :math:`M_c` at the kinks of :math:`M_c` (and those minus
:math:`\varepsilon`) and :math:`m_c, m_c - \varepsilon`; where a cell's rows are all clipped,
:math:`M_c` is flat and :math:`F` jumps.

Algorithm (exact: it terminates with the root, no tolerance):

* **No box.** :math:`M_c(\delta) = m_c + \delta`; the kinks of ``F`` are the :math:`2S` values
  :math:`m_c, m_c - \varepsilon`. They are sorted (a tiny sort), ``F`` is evaluated at all of
  them at once, and since ``F`` is affine between consecutive kinks the root is the linear
  interpolation across its first rise above 0. Cost :math:`O(N + S^2)`.
* **Box.** Each cell's :math:`\alpha_c(t) = n_c\delta_c(t)` is a monotone polyline in the
  :math:`(t, \alpha)` plane. Its points come from one sort of the :math:`2N + 2C` events by
  (cell, :math:`\delta`) (an integer key: the order-preserving bits of :math:`\delta` with the
  cell above them): every row's kinks :math:`lo - z_i, hi - z_i` and two zero events per cell
  at :math:`\delta = 0`. :math:`n_c M_c` at the events is a cumulative sum of (rows inside the
  box) x (kink spacing); an event before its cell's second zero event sits at
  :math:`t = M_c - \varepsilon` (branch :math:`\delta < 0`), the others at :math:`t = M_c`, so
  the two zero events bound the dead zone :math:`[m_c - \varepsilon, m_c]` (:math:`\alpha = 0`)
  and :math:`t` is non-decreasing along each cell. A segment with equal ``t`` at both ends (a
  cell with every row on the box) is a jump of ``F``. A stable sort by ``t`` (a merge of the
  per-cell runs) then sweeps all points of a class: the slope of ``F`` is a cumulative sum of
  the segments' slope changes and ``F`` after each point a cumulative sum of slope x spacing
  plus jumps, starting from :math:`\sum_c \alpha_c` at the cells' first points (all rows at
  ``lo``), so ``F`` is non-decreasing along the sweep. With ``q`` the first point where
  ``F > 0``, ``F`` rises linearly after point ``q - 1`` and then takes point ``q``'s own step:
  the root is the interpolated ``t`` inside, or ``t = T_q`` with the part of that step (of
  point ``q``'s cell) that makes :math:`\sum_c \alpha_c = 0`. Every cell's
  :math:`\alpha_c` follows exactly from its own last point before ``q`` and the segment after
  it. The sweep's sums only pick the piece holding the root; its values carry the rounding
  of an :math:`O(N)` cumulative sum (relative :math:`\sim N \cdot 10^{-16}`), the per-cell
  points are exact. Cost: two sorts of :math:`2N + 2C` keys (the second a merge of sorted
  runs) and :math:`O(N)` cumulative sums, for any number of groups.
* **One class of two groups** (the common case, :mod:`.pair`): one unknown
  :math:`s = \alpha_0 = -\alpha_1`; a closed form without the box, and with it the gap
  :math:`M_0(s/n_0) - M_1(-s/n_1)` as one polyline from one sort of its 2N kinks. On the CPU
  its few per-cell numbers are read on the host and every branch is a Python ``if``, so a
  small batch costs a constant of a few microseconds plus that sort.

* **Fixed problem**: the same events; each cell's interval ends are looked up on its own
  polyline :math:`(M_c, \delta)` by counting its events below them (exact comparisons, no
  float search keys).

The box holds for every row: a class with fewer than two groups (nothing to compare) is only
clipped to it, with zero shifts and multipliers.

If the unbounded solution already lies in the box it is the bounded one (it is optimal for a
relaxation and feasible). On the CPU the box search runs only when it is needed; on
accelerators both are computed and selected with ``torch.where`` so nothing waits for the host.

Gradients: the solution map is piecewise affine. With :math:`F_r` the free rows
(:math:`lo < q_i < hi`), :math:`a_c` their number in cell ``c``, :math:`A_k` the cells of
class ``k`` whose constraint binds (with :math:`a_c > 0`), :math:`u = v \odot 1_{F_r}`,
:math:`U_c = \sum_{i\in c} u_i`, the vector-Jacobian product of the band problem is

.. math::

    (J^\top v)_j = u_j + 1[j \in F_r,\ c_j \in A_k]\Big(-\frac{U_{c_j}}{a_{c_j}} +
    \frac{n_{c_j}}{a_{c_j}}\,\frac{\sum_{c \in A_k} n_c U_c / a_c}
    {\sum_{c \in A_k} n_c^2 / a_c}\Big),

obtained by differentiating :math:`\delta_c = (n_c t_k \text{ or } n_c(t_k + \varepsilon) -
\text{clipped} - \sum_{\text{free}} z_i)/a_c` and the closed form of :math:`t_k` from
:math:`\sum_c \alpha_c = 0`. The fixed problem drops the coupling term, and so does a class
whose band sits on a jump of ``F`` (a binding cell with every row on the box pins
:math:`t_k`). This is the exact
derivative on each affine piece (gradcheck passes in float64); at the measure-zero switches
between pieces it is one of the one-sided derivatives.

All internal arithmetic is float64; ``q`` comes back in the dtype of ``z``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .batch import Cells, Solution, host_branch
from .grad import Apply
from .pair import pair_boxed, pair_host

__all__ = ["Cells", "Solution", "project_cells", "project_groups"]

_F64 = torch.float64


# ----------------------------------------------------------------------------- no box
def _band_unboxed(mu: Tensor, n: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Weighted projection of cell means ``mu`` (K, S) onto a band of width ``eps``.

    :math:`\\min_t \\sum_c n_c(\\operatorname{clip}(\\mu_c, t, t+\\varepsilon) - \\mu_c)^2`;
    cells with ``n == 0`` are ignored (their finite ``mu`` only adds harmless kinks) and get
    a zero shift. Returns ``(t, delta)`` of shapes (K,), (K, S).
    """
    x = torch.cat([mu, mu - eps], -1).sort(-1).values  # the kinks of F, sorted (K, 2S)
    xs, mm = x.unsqueeze(-1), mu.unsqueeze(-2)
    f = ((torch.clamp(mm, xs, xs + eps) - mm) * n.unsqueeze(-2)).sum(-1)
    # F is affine between consecutive kinks: interpolate across its first rise above 0 (F at
    # the first kink is <= 0, so that rise exists; a flat F there has F = 0 at both ends).
    j = (f <= 0).sum(-1, keepdim=True).clamp_(1, x.shape[-1] - 1)
    j = torch.cat([j - 1, j], -1)
    (x0, x1), (f0, f1) = x.gather(-1, j).unbind(-1), f.gather(-1, j).unbind(-1)
    t = torch.lerp(x0, x1, (f0 / (f0 - f1).clamp_(max=-1e-300)).clamp_(0, 1))
    tk = t.unsqueeze(-1)
    d = torch.clamp(mu, tk, tk + eps) - mu
    return t, torch.where(n > 0, d, 0.0)


# -------------------------------------------------------------------------------- box
_LOW63 = (1 << 63) - 1
_ZERO = 1 << 32  # event code of a cell's two points at delta = 0 (counted apart from rows)


class _Polylines:
    """Every cell's map :math:`\\delta \\mapsto M_c(\\delta)` as a sorted list of events.

    Events, sorted by (cell, delta): two per row (entering the box at :math:`lo - z_i`, leaving
    it at :math:`hi - z_i`) and two per cell at :math:`\\delta = 0` (they split the band
    problem's two branches). Per event: ``D`` the delta, ``V`` the value :math:`M_c(D)`
    (a cumulative sum of the free rows times the kink spacing, from ``lo`` at a cell's first
    event), ``lower`` whether it precedes its cell's second zero event, ``cell`` its cell and
    ``n`` the cell's size (at least 1). A cell owns the events ``start[c] .. end[c] - 1``;
    ``scale`` is the range of the kinks (with 0), for rounding tolerances.
    """

    def __init__(self, z: Tensor, cell: Tensor, n: Tensor, lo: float, hi: float) -> None:
        N, C, dev = z.numel(), n.numel(), z.device
        cells = torch.arange(C, device=dev)
        d = torch.cat([lo - z, hi - z, z.new_zeros(2 * C)])
        c = torch.cat([cell, cell, cells, cells])
        code = torch.ones(2 * N + 2 * C, dtype=torch.long, device=dev)
        code[N:2 * N] = -1
        code[2 * N:] = _ZERO
        dmin, dmax = torch.aminmax(d)
        self.scale = dmax - dmin
        # One sort on an integer key ordered by cell, then by delta: the bits of d as an
        # order-preserving int64, the lowest dropped to make room for the cell (a relative
        # rounding of 2**-45 at most, like a float key with cell offsets; integers sort faster).
        b = (C - 1).bit_length() + 1
        key = d.view(torch.int64)
        key = (key ^ ((key >> 63) & _LOW63)) >> b
        order = torch.argsort(key.add_(c << (64 - b)))
        self.D, self.cell = d.index_select(0, order), c.index_select(0, order)
        # Rows inside the box after each event (back to 0 at every cell's end) and, in the
        # high bits, the zero events passed: 2 * cell + (0, 1 or 2).
        count = code.index_select(0, order).cumsum_(0)
        self.lower = (count >> 33) == self.cell
        nn = n.reshape(-1)
        self.n = nn.clamp(min=1).index_select(0, self.cell)
        size = 2 * nn.long() + 2
        self.end = torch.cumsum(size, 0)
        self.start = self.end - size
        # n_c M_c rises by free * spacing between events (0 across cell borders: free = 0).
        V = torch.zeros_like(self.D)
        torch.diff(self.D, out=V[1:])
        V[1:].clamp_(min=0).mul_(count[:-1] & (_ZERO - 1))
        V.cumsum_(0)
        V -= V.index_select(0, self.start).index_select(0, self.cell)
        self.V = V.div_(self.n).add_(lo)


def _band_boxed(z: Tensor, cell: Tensor, n: Tensor, K: int, S: int, eps: float, lo: float,
                hi: float) -> tuple[Tensor, Tensor, Tensor]:
    """Band problem with the box; returns ``(t, delta, scale)`` of shapes (K,), (K, S), ()."""
    P = _Polylines(z, cell, n, lo, hi)
    E = P.D.numel()
    # Every cell's alpha_c(t) = n_c delta_c(t) as a polyline through the points (T, A), in
    # the cell's event order (T non-decreasing): an event of the lower branch sits at
    # T = V - eps, the others at T = V; the two zero events bound the dead zone
    # [m_c - eps, m_c] where A = 0. A segment with equal T at both ends is a jump.
    T = P.V.add_(P.lower, alpha=-eps)
    A = P.D.mul_(P.n)
    dA, dT = A.diff(), T.diff()
    vertical = dT <= 0  # also from a cell's last event to the next cell's first
    jump = torch.zeros_like(A)
    torch.mul(dA, vertical, out=jump[1:])
    jump.index_fill_(0, P.start, 0.0)  # every cell starts at its first point (A <= 0)
    slope = torch.zeros_like(A)  # of the segment after each event (0 after a cell's last)
    torch.div(dA, dT, out=slope[:-1]).masked_fill_(vertical, 0.0)
    del dA, dT, vertical
    # Sweep the points of each class in t order: F = sum_c alpha_c after each point, from
    # sum_c A_(first point of c) (every cell at lo) on; F is non-decreasing.
    if K == 1:
        g = torch.sort(T, stable=True).indices  # runs sorted per cell: a cheap merge
    else:
        cls = torch.div(P.cell, S, rounding_mode="floor")
        g = torch.sort(cls * (hi - lo + eps + 1.0) + T, stable=True).indices
    Tg, F = T.index_select(0, g), jump.index_select(0, g)
    del jump
    Sg = torch.diff(slope, prepend=slope[-1:]).index_select(0, g).cumsum_(0)  # slope of F
    F[1:].addcmul_(Sg[:-1], Tg.diff().clamp_(min=0))  # 0 across class borders
    F.cumsum_(0)
    cell_g = P.cell.index_select(0, g)
    F0 = A.index_select(0, P.start).view(K, S).sum(1)
    if K == 1:
        F += F0
        q = (F <= 0).sum().clamp(1, E - 1).view(1)
    else:
        size = (P.end - P.start).view(K, S).sum(1)
        last = torch.cumsum(size, 0) - 1
        first = last - size + 1
        cls_g = cls.index_select(0, g)
        F += (F0 - torch.cat([F.new_zeros(1), F.index_select(0, last[:-1])])).index_select(
            0, cls_g)
        q = first + torch.zeros(K, dtype=torch.long, device=z.device).index_add_(
            0, cls_g, (F <= 0).long())
        q = torch.minimum(torch.maximum(q, first + 1), last)
    # F <= 0 after point q - 1 and > 0 after point q: in between F rises with slope S0, then
    # point q adds its own step. The root t is inside, or at T1 with the part of that step
    # (taken by point q's cell) that makes sum alpha = 0 exactly.
    p = torch.cat([q - 1, q])
    (T0, T1), (F0, F1) = Tg.index_select(0, p).view(2, K), F.index_select(0, p).view(2, K)
    S0 = Sg.index_select(0, q - 1)
    t = torch.where(S0 > 0, T0 - F0 / S0, T1)
    t = torch.minimum(torch.maximum(t, T0), T1)
    before = F0 + S0 * (T1 - T0)  # F just before point q
    take = torch.minimum((-(F0 + S0 * (t - T0))).clamp(min=0), F1 - before)
    # Each cell after point q - 1: its last point e so far, on the segment that follows.
    done = torch.arange(E, device=z.device) < (q if K == 1 else q.index_select(0, cls_g))
    e = torch.maximum(P.start + torch.zeros_like(P.start).index_add_(0, cell_g, done.long()) - 1,
                      P.start)
    alpha = A.index_select(0, e) + slope.index_select(0, e) * (
        t.view(K, 1) - T.index_select(0, e).view(K, S)).view(-1)
    alpha = alpha.index_add(0, cell_g.index_select(0, q), take)
    return t, (alpha / n.reshape(-1).clamp(min=1)).view(K, S), P.scale


def _fixed_boxed(z: Tensor, cell: Tensor, n: Tensor, K: int, S: int, lower: Tensor,
                 upper: Tensor, lo: float, hi: float) -> tuple[Tensor, Tensor]:
    """Each cell's mean into its own interval [lower_c, upper_c] (within [lo, hi]);
    returns ``(delta, scale)``."""
    P = _Polylines(z, cell, n, lo, hi)
    C = K * S
    # Smallest shift with mean >= lower_c and largest with mean <= upper_c: on the segment
    # from the cell's last event below the threshold (V < lower, V <= upper) to the next.
    x = torch.stack([lower.reshape(-1), upper.reshape(-1)], -1)  # (C, 2)
    xe = x.index_select(0, P.cell)
    below = torch.stack([P.V < xe[:, 0], P.V <= xe[:, 1]], -1).cumsum(0).index_select(
        0, P.end - 1)
    idx = P.start.unsqueeze(1) + below.diff(dim=0, prepend=below[:1] * 0)
    i0 = torch.maximum(idx - 1, P.start.unsqueeze(1)).view(-1)
    i1 = torch.minimum(idx, (P.end - 1).unsqueeze(1)).view(-1)
    v0, v1 = P.V.index_select(0, i0).view(C, 2), P.V.index_select(0, i1).view(C, 2)
    d0, d1 = P.D.index_select(0, i0).view(C, 2), P.D.index_select(0, i1).view(C, 2)
    dv = v1 - v0
    AB = torch.lerp(d0, d1, ((x - v0) / torch.where(dv > 0, dv, 1.0)).clamp(0, 1))
    A, B = AB[:, 0].view(K, S), AB[:, 1].view(K, S)
    d = torch.where(A > 0, A, torch.where(B < 0, B, 0.0))
    return torch.where(n > 0, d, 0.0), P.scale


# ----------------------------------------------------------------------------- driver
def project_cells(z: Tensor, cell: Tensor, K: int, S: int, eps: float,
                  bounds: tuple[float, float] | None = None, targets: Tensor | None = None,
                  cells: Cells | None = None) -> Solution:
    """Exact projection of ``z`` (N,) with rows in cells ``cell`` (N,) of ``0..K*S-1``.

    Args:
        z: predictions (floating, finite; not checked here).
        cell: int64 cell of every row, ``class * S + group``.
        K, S: number of classes and of groups.
        eps: tolerance :math:`\\varepsilon \\ge 0`.
        bounds: optional ``(lo, hi)`` box with ``lo < hi``; it holds for every row, also in
            a class with fewer than two groups (there it is the whole projection).
        targets: ``None`` for the band problem; else ``(K, S)`` centres :math:`\\bar y_c` of the
            fixed intervals :math:`[\\bar y_c - \\varepsilon, \\bar y_c + \\varepsilon]`, which
            must meet ``[lo, hi]`` for every present cell (the caller checks).
        cells: ``Cells(z, cell, K, S, band=targets is None)`` when the caller built it
            already (to check the inputs from its sums).

    Returns a :class:`~.batch.Solution`. Differentiable in ``z``.

    Raises:
        IndexError: a cell id outside ``0..K*S-1`` (when ``cells`` is not given).
    """
    if cells is None:
        cells = Cells(z, cell, K, S, band=targets is None)
    grad = z.requires_grad and torch.is_grad_enabled()
    if cells.host:
        if math.isfinite(cells.total):
            sol: Solution = pair_host(cells, eps, bounds)
        else:  # unchecked NaN/Inf rows give NaN, as on the other paths, without NumPy warnings
            with np.errstate(all="ignore"):
                sol = pair_host(cells, eps, bounds)
        qn = sol.q.numpy()
        sol.q = torch.from_numpy(qn.astype(np.float32, copy=False)) \
            if z.dtype == torch.float32 else sol.q
        if grad:  # the derivative on the host too
            (d0, d1), n = sol.shifts_host, sol.counts_host
            free = None if bounds is None else (qn > bounds[0]) & (qn < bounds[1])
            active = np.array([[d0 != 0, d1 != 0]])
            sol.q = Apply.apply(z, (sol.q, cells.cn.copy(), free, np.array([n]), active),
                                K, S, True)
        return sol
    qd, shifts, band, changed, box_active = _solve(
        cells.zd, cell, cells.n.view(K, S), cells.sums.view(K, S), K, S, eps, bounds, targets)
    sol = Solution(qd.to(z.dtype), shifts, cells.n.view(K, S), band, changed, box_active)
    if grad:
        free = None if bounds is None else (qd > bounds[0]) & (qd < bounds[1])
        sol.q = Apply.apply(z, (sol.q, cell, free, sol.counts, shifts != 0), K, S,
                            targets is None)
    return sol


def _solve(zd: Tensor, cell: Tensor, n: Tensor, sums: Tensor, K: int, S: int, eps: float,
           bounds: tuple[float, float] | None, targets: Tensor | None
           ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Any number of classes and groups, any device: ``(qd, shifts, band, changed,
    box_active)`` with ``qd`` the float64 solution."""
    mu = sums / n.clamp(min=1)
    present = n > 0
    fixed = targets is not None
    if fixed:
        lower, upper = targets.to(_F64) - eps, targets.to(_F64) + eps  # type: ignore[union-attr]
        if bounds is not None:
            lower, upper = lower.clamp(*bounds), upper.clamp(*bounds)
        band = torch.full((K,), math.nan, dtype=_F64, device=zd.device)
        delta = torch.minimum(torch.maximum(mu, lower), upper) - mu
        changed = present.any(-1)
    else:
        band, delta = _band_unboxed(mu, n, eps)
        changed = present.sum(-1) >= 2
        band = torch.where(changed, band, math.nan)  # no constraint: no band
    # A class whose constraints cannot apply keeps its rows (then only the box acts).
    use = changed.unsqueeze(-1) & present
    delta = torch.where(use, delta, 0.0)
    shifted = zd + delta.view(-1).index_select(0, cell)
    box_active = torch.zeros((), dtype=torch.bool, device=zd.device)
    if bounds is None:
        return shifted, delta, band, changed, box_active
    lo, hi = bounds
    outside = (shifted < lo) | (shifted > hi)
    box_active = outside.any()
    # The bounded search is needed when the box cuts rows of a constrained class; the box
    # alone is the projection of the others.
    if K == 1:
        need = box_active & changed[0]
    else:
        need = (outside & changed.repeat_interleave(S).index_select(0, cell)).any()
    # CPU: run the bounded search only when needed. Elsewhere: always, and select, so that no
    # step waits for the host.
    if not host_branch(zd.device) or bool(need):
        if fixed:
            d_box, scale = _fixed_boxed(zd, cell, n, K, S, lower, upper, lo, hi)
            t_box = band
        else:
            t_box, d_box, scale = pair_boxed(zd, cell, n, eps, lo, hi) \
                if K == 1 and S == 2 else _band_boxed(zd, cell, n, K, S, eps, lo, hi)
        # Shifts at rounding level (a cell whose mean sits exactly on a kink of the
        # interpolated map) are zero: its constraint does not bind.
        tiny = 1e-12 * (1.0 + max(abs(lo), abs(hi)) + scale)
        d_box = torch.where((d_box.abs() > tiny) & use, d_box, 0.0)
        delta = torch.where(need, d_box, delta)
        band = torch.where(need & changed, t_box, band)
        shifted = zd + delta.view(-1).index_select(0, cell)
    return shifted.clamp_(lo, hi), delta, band, changed, box_active


def project_groups(z: Tensor, cell: Tensor, n_cells: int, n_classes: int, eps: float,
                   bounds: tuple[float, float] | None) -> tuple[Tensor, Tensor]:
    """Band projection by (class, group) cell, as FairInference and FairModel use it: returns
    ``(q, delta)`` with ``delta`` of shape (C, S) (a drop-in replacement)."""
    sol = project_cells(z, cell, n_classes, n_cells // n_classes, eps, bounds)
    return sol.q, sol.shifts.to(z.dtype)
