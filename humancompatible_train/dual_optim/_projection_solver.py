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

* **No box.** :math:`M_c(\delta) = m_c + \delta`; the kinks are the :math:`2S` values
  :math:`m_c, m_c - \varepsilon`. ``F`` is evaluated at all of them at once, the bracket
  between consecutive kinks holding the root is read off with a masked max/min (no sort), and
  one Newton step from the bracket's midpoint lands on the root (``F`` is affine there).
  Cost :math:`O(N + S^2)`.
* **Box.** The :math:`2N` kinks :math:`lo - z_i, hi - z_i` are sorted once per cell and
  :math:`M_c` at them follows from a cumulative sum of slopes. ``F`` at any ``t`` takes one
  segmented ``searchsorted`` per cell. The root is bracketed by evaluating ``F`` (its left
  limit) at every kink, or, for larger problems, at every ``k``-th kink (``k`` about
  :math:`\sqrt{2N / C}`) and then at the fewer than ``k`` kinks of each cell inside that
  bracket. The result is an interval ``(a, b)`` free of kinks, on which every
  :math:`\delta_c` is affine: the root and the shifts follow by linear interpolation between
  the right limit at ``a`` and the left limit at ``b``. When the root sits on a jump (at
  ``a``), the flat cells' shifts are interpolated between the two limits so that
  :math:`\sum_c\alpha_c = 0` holds exactly. Kinks enter as exact pairs
  ``(x, x + eps)`` so that rounding cannot move a candidate across a jump. Cost: one sort of
  :math:`2N` keys plus :math:`O((N/k + Ck)\,S\log N)` lookups.

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
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Solution", "project_cells", "project_groups"]

_F64 = torch.float64
#: Largest groups x kinks for which F is evaluated at every kink in one round.
_ONE_ROUND = 4096


@dataclass
class Solution:
    """Result of :func:`project_cells` (all tensors; nothing read back by the host).

    Attributes:
        q: the projection, shaped and typed like ``z``.
        shifts: ``(K, S)`` each cell's shift :math:`\\delta_c` before the box.
        counts: ``(K, S)`` rows per cell (float).
        band: ``(K,)`` the band position :math:`t_k` (NaN for the fixed problem).
        changed: ``(K,)`` bool, the class had at least two groups (band) or rows (fixed), so
            its constraints were enforced; rows of other classes are returned as they are.
        box_active: 0-d bool, the box changed the solution (the bounded search was needed).
    """

    q: Tensor
    shifts: Tensor
    counts: Tensor
    band: Tensor
    changed: Tensor
    box_active: Tensor


# ----------------------------------------------------------------------------- no box
def _band_unboxed(mu: Tensor, n: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Weighted projection of cell means ``mu`` (K, S) onto a band of width ``eps``.

    :math:`\\min_t \\sum_c n_c(\\operatorname{clip}(\\mu_c, t, t+\\varepsilon) - \\mu_c)^2`;
    cells with ``n == 0`` are ignored. Returns ``(t, delta)`` of shapes (K,), (K, S).
    """
    present = n > 0
    inf = torch.full_like(mu, math.inf)
    cand = torch.cat([torch.where(present, mu, inf), torch.where(present, mu - eps, inf)], -1)
    finite = torch.isfinite(cand)
    x = torch.where(finite, cand, torch.zeros_like(cand))

    def F(t: Tensor) -> tuple[Tensor, Tensor]:  # t (K, Q) -> F, F' of shape (K, Q)
        m = mu.unsqueeze(1)
        d = torch.clamp(torch.maximum(m, t.unsqueeze(-1)), max=t.unsqueeze(-1) + eps) - m
        act = ((m < t.unsqueeze(-1)) | (m > t.unsqueeze(-1) + eps)) & present.unsqueeze(1)
        w = n.unsqueeze(1)
        return (w * d).sum(-1), (w * act).sum(-1)

    f, _ = F(x)
    a = torch.where(finite & (f <= 0), x, -math.inf).amax(-1)
    b = torch.where(finite & (x > a.unsqueeze(-1)), x, math.inf).amin(-1)
    a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))  # no group present
    t = _newton_in_bracket(F, a, b)
    d = torch.clamp(torch.maximum(mu, t.unsqueeze(-1)), max=t.unsqueeze(-1) + eps) - mu
    return t, torch.where(present, d, torch.zeros_like(d))


def _newton_in_bracket(F: Any, a: Tensor, b: Tensor) -> Tensor:
    """Root of a non-decreasing ``F`` that is affine on (a, b) (K,), from the midpoint."""
    tm = torch.where(torch.isfinite(b), 0.5 * (a + b), a + 1.0)
    f, fp = F(tm.unsqueeze(-1))
    f, fp = f.squeeze(-1), fp.squeeze(-1)
    newton = tm - f / torch.where(fp > 0, fp, torch.ones_like(fp))
    flat = torch.where(f > 0, a, torch.where(f < 0, b, tm))  # F constant: root at a jump
    t = torch.where(fp > 0, newton, flat)
    return torch.minimum(torch.maximum(t, a), b)


# -------------------------------------------------------------------------------- box
class _MeanMaps:
    """The maps :math:`M_c(\\delta)` of all cells, as sorted polylines in one flat array.

    Events ``e`` (two per row: entering the box at :math:`lo - z_i`, leaving it at
    :math:`hi - z_i`) are sorted by (cell, delta); ``D[e]`` is the kink and ``V[e]`` the
    value :math:`M_c` there (``lo`` at a cell's first event, ``hi`` at its last), obtained
    from a cumulative sum of the slope (rows inside the box) times the kink spacing.
    """

    def __init__(self, z: Tensor, cell: Tensor, n: Tensor, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi
        N = z.numel()
        d = torch.cat([lo - z, hi - z])
        c = torch.cat([cell, cell])
        one = torch.ones(N, dtype=_F64, device=z.device)
        typ = torch.cat([one, -one])
        # One sort on a key that orders by cell, then by delta (offsets wider than any range).
        dmin = d.amin()
        width = d.amax() - dmin + 1.0
        order = torch.argsort(c.to(_F64) * width + (d - dmin))
        D, c, typ = d[order], c[order], typ[order]
        nn = n.reshape(-1)
        self.end = torch.cumsum(2 * nn, 0).long()
        self.start = self.end - (2 * nn).long()
        first = torch.ones(2 * N, dtype=torch.bool, device=z.device)
        first[1:] = c[1:] != c[:-1]
        active = torch.cumsum(typ, 0)  # rows inside the box after each event; 0 at cell ends
        step = torch.zeros_like(D)
        step[1:] = (active[:-1] * (D[1:] - D[:-1]).clamp(min=0)) / nn[c[1:]].clamp(min=1)
        step = torch.where(first, torch.zeros_like(step), step)
        G = torch.cumsum(step, 0)
        V = (lo + G - G[self.start.clamp(max=2 * N - 1)][c]).clamp(lo, hi)
        self.cell, self.V = c, V
        self.DV = torch.stack([D, V], -1)
        self.dmin, self.dmax = dmin - 1.0, dmin + width  # beyond every kink
        self.W = 2.0 * (hi - lo) + 1.0
        self.keys = c.to(_F64) * self.W + V
        self.E = 2 * N
        self.m0 = torch.zeros(nn.shape[0], dtype=_F64, device=z.device).index_add_(
            0, cell, z.clamp(lo, hi)) / nn.clamp(min=1)  # M_c(0)

    def inverse(self, cells: Tensor, v: Tensor, right: bool) -> Tensor:
        """Smallest delta with :math:`M_c(\\delta) \\ge v` (``right=False``) or largest with
        :math:`M_c(\\delta) \\le v` (``right=True``), for ``cells`` of the shape of ``v``.
        Where no finite delta exists (``v <= lo`` resp. ``v >= hi``) the answer is a delta
        beyond every kink, where all rows sit on the box (so ``q`` is the same)."""
        vc = v.clamp(self.lo, self.hi)
        j = torch.searchsorted(self.keys, (cells.to(_F64) * self.W + vc).reshape(-1),
                               right=right).view(v.shape)
        j = torch.minimum(torch.maximum(j, self.start[cells] + 1), self.end[cells] - 1)
        j = j.clamp(1, self.E - 1)
        p0, p1 = self.DV[j - 1], self.DV[j]
        dv = p1[..., 1] - p0[..., 1]
        ok = dv > 0
        d = p0[..., 0] + torch.where(ok, (vc - p0[..., 1]) * (p1[..., 0] - p0[..., 0])
                                     / torch.where(ok, dv, 1.0), 0.0)
        below, above = (v < self.lo, v >= self.hi) if right else (v <= self.lo, v > self.hi)
        return torch.where(below, self.dmin, torch.where(above, self.dmax, d))

    def band_shift(self, cells: Tensor, x: Tensor, xe: Tensor, right: bool) -> Tensor:
        """:math:`\\delta_c(x) = [M_c^{-1}(x)]_+ + [M_c^{-1}(x+\\varepsilon)]_-`, the
        cheapest shift into the band ``[x, xe]`` (``xe = x + eps``, passed exactly: a kink
        ``V`` enters as ``(V - eps, V)``, so rounding cannot move it across a jump); its left
        limit in ``x`` (``right=False``) or its right limit (they differ where :math:`M_c` is
        flat). At most one of the two terms is non-zero, so one inverse suffices."""
        m = self.m0[cells]
        use_x = (x >= m) if right else (x > m)
        d = self.inverse(cells, torch.where(use_x, x, xe), right)
        return torch.where(use_x, d.clamp(min=0), d.clamp(max=0))


def _band_boxed(z: Tensor, cell: Tensor, n: Tensor, K: int, S: int, eps: float, lo: float,
                hi: float) -> tuple[Tensor, Tensor]:
    """Band problem with the box; returns ``(t, delta)`` of shapes (K,), (K, S)."""
    C = K * S
    maps = _MeanMaps(z, cell, n, lo, hi)
    present = n > 0
    all_cells = torch.arange(C, device=z.device).view(K, 1, S)
    inf = torch.full((), math.inf, dtype=_F64, device=z.device)  # no host-to-device copy

    def deltas(x: Tensor, xe: Tensor, right: bool) -> tuple[Tensor, Tensor]:
        """delta_c (K, Q, S) at bands [x, xe] (K, Q) and F = sum_c n_c delta_c (K, Q)."""
        Q = x.shape[1]
        d = maps.band_shift(all_cells.expand(K, Q, S), x.unsqueeze(-1).expand(K, Q, S),
                            xe.unsqueeze(-1).expand(K, Q, S), right)
        d = torch.where(present.unsqueeze(1), d, 0.0)
        return d, (n.unsqueeze(1) * d).sum(-1)

    def search(x: Tensor, xe: Tensor, valid: Tensor) -> list[Tensor]:
        """Among candidates x (K, Q) (with xe = x + eps): a = the largest with F(a-) <= 0,
        b = the next one; returns [a, a + eps, F(a-), delta(a-), b, F(b-), delta(b-)]."""
        d, f = deltas(torch.where(valid, x, lo), torch.where(valid, xe, lo + eps), right=False)
        ia = torch.where(valid & (f <= 0), x, -inf).argmax(-1, keepdim=True)
        a = x.gather(-1, ia)
        ib = torch.where(valid & (x > a), x, inf).argmin(-1, keepdim=True)
        b = torch.where(valid.gather(-1, ib) & (x.gather(-1, ib) > a), x.gather(-1, ib), inf)
        da = d.gather(1, ia.unsqueeze(-1).expand(K, 1, S)).squeeze(1)
        db = d.gather(1, ib.unsqueeze(-1).expand(K, 1, S)).squeeze(1)
        return [a.squeeze(-1), xe.gather(-1, ia).squeeze(-1), f.gather(-1, ia).squeeze(-1), da,
                b.squeeze(-1), f.gather(-1, ib).squeeze(-1), db]

    # Round 1: every k-th kink (k = 1 for small problems), the m_c and m_c - eps, lo - eps, hi.
    E = maps.E
    k = 1 if S * E <= _ONE_ROUND else max(1, math.isqrt(E // C))
    idx = torch.arange(0, E, k, device=z.device)
    Vs = maps.V[idx].expand(K, -1)
    mine = torch.div(maps.cell[idx], S, rounding_mode="floor").unsqueeze(0) \
        == torch.arange(K, device=z.device).unsqueeze(1)
    m0 = maps.m0.view(K, S)
    ends = torch.cat([torch.full((K, 1), lo - eps, dtype=_F64, device=z.device),
                      torch.full((K, 1), hi, dtype=_F64, device=z.device)], -1)
    x1 = torch.cat([Vs, Vs - eps, m0, m0 - eps, ends], -1)
    x1e = torch.cat([Vs + eps, Vs, m0 + eps, m0, ends + eps], -1)
    v1 = torch.cat([mine, mine, present, present, torch.ones_like(ends, dtype=torch.bool)], -1)
    a, ae, fa, da, b, fb, db = search(x1, x1e, v1)
    if k > 1:
        # Round 2: the fewer than k kinks of each cell inside (a, b), for V and for V - eps.
        win = torch.arange(k, device=z.device)
        xs, xes, vs = [], [], []
        for off in (0.0, eps):
            key = all_cells.view(K, S).to(_F64) * maps.W + (a.unsqueeze(-1) + off).clamp(lo, hi)
            j = torch.searchsorted(maps.keys, key.reshape(-1), right=True).view(K, S, 1) + win
            vs.append(((j < maps.end.view(K, S, 1)) & present.unsqueeze(-1)).reshape(K, -1))
            Vj = maps.V[j.clamp(max=E - 1)].reshape(K, -1)
            xs.append(Vj - off)
            xes.append(Vj + (eps - off))
        a2, ae2, fa2, da2, b2, fb2, db2 = search(torch.cat(xs, -1), torch.cat(xes, -1),
                                                 torch.cat(vs, -1))
        up, down = a2 > a, b2 < b
        a, ae, fa, da = (torch.where(up, a2, a), torch.where(up, ae2, ae),
                         torch.where(up, fa2, fa), torch.where(up.unsqueeze(-1), da2, da))
        b, fb, db = (torch.where(down, b2, b), torch.where(down, fb2, fb),
                     torch.where(down.unsqueeze(-1), db2, db))
    # F is affine on (a, b) and every delta_c too: the root from the limits at the ends.
    dap, fap = deltas(a.unsqueeze(-1), ae.unsqueeze(-1), right=True)
    dap, fap = dap.squeeze(1), fap.squeeze(-1)
    at_a = (fap >= 0) | ~torch.isfinite(b)
    # Root at a (a jump of F): the flat cells' shifts interpolated so that sum n delta = 0.
    gap = fap - fa
    th1 = torch.where(gap > 0, -fa / torch.where(gap > 0, gap, 1.0), 0.0).clamp(0, 1)
    # Root inside (a, b).
    span = fb - fap
    th2 = torch.where(~at_a & (span > 0), -fap / torch.where(span > 0, span, 1.0), 0.0)
    th2 = th2.clamp(0, 1)
    t = torch.where(at_a, a, a + th2 * torch.where(at_a, 0.0, b - a))
    delta = torch.where(at_a.unsqueeze(-1), da + th1.unsqueeze(-1) * (dap - da),
                        dap + th2.unsqueeze(-1) * (db - dap))
    return t, delta


def _fixed_boxed(z: Tensor, cell: Tensor, n: Tensor, K: int, S: int, lower: Tensor,
                 upper: Tensor, lo: float, hi: float) -> Tensor:
    """Each cell's mean into its own interval [lower_c, upper_c] (within [lo, hi])."""
    maps = _MeanMaps(z, cell, n, lo, hi)
    cells = torch.arange(K * S, device=z.device).view(K, S)
    A = maps.inverse(cells, lower, right=False)  # smallest shift with mean >= lower
    B = maps.inverse(cells, upper, right=True)  # largest shift with mean <= upper
    d = torch.where(A > 0, A, torch.where(B < 0, B, torch.zeros_like(A)))
    return torch.where(n > 0, d, torch.zeros_like(d))


# --------------------------------------------------------------------------- autograd
class _Apply(torch.autograd.Function):
    """q = clip(z + delta[cell], lo, hi) on changed rows, with the exact piecewise-affine
    derivative of the projection (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, delta: Tensor, cell: Tensor, keep: Tensor,
                n: Tensor, active: Tensor, K: int, S: int, coupled: bool,
                bounds: tuple[float, float] | None) -> Tensor:
        shifted = z.to(_F64) + delta.reshape(-1)[cell]
        if bounds is not None:
            shifted = shifted.clamp(*bounds)
        q = torch.where(keep, z, shifted.to(z.dtype))
        if bounds is not None:
            free = (shifted > bounds[0]) & (shifted < bounds[1]) | keep
        else:
            free = torch.ones_like(keep)
        ctx.save_for_backward(cell, keep, free, n, active)
        ctx.shape = (K, S, coupled)
        return q

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        (v,) = grads
        cell, keep, free, n, active = ctx.saved_tensors
        K, S, coupled = ctx.shape
        C = K * S
        u = torch.where(free, v.to(_F64), torch.zeros((), dtype=_F64, device=v.device))
        solved = free & ~keep
        a = torch.zeros(C, dtype=_F64, device=v.device).index_add_(0, cell, solved.to(_F64))
        U = torch.zeros(C, dtype=_F64, device=v.device).index_add_(
            0, cell, torch.where(solved, u, torch.zeros_like(u)))
        act = active.reshape(-1) & (a > 0)
        inv_a = torch.where(act, 1.0 / a.clamp(min=1), torch.zeros_like(a))
        corr = -U * inv_a
        if coupled:
            nn = n.reshape(-1)
            num = (nn * U * inv_a).view(K, S).sum(-1)
            den = (nn * nn * inv_a).view(K, S).sum(-1)
            # A binding cell with every row on the box has a flat mean map: the band sits on
            # that jump of F, so t_k is locally constant and the cells decouple.
            pinned = (active.reshape(-1) & (a == 0)).view(K, S).any(-1)
            ratio = torch.where((den > 0) & ~pinned, num / torch.where(den > 0, den, 1.0), 0.0)
            corr = corr + nn * inv_a * ratio.repeat_interleave(S)
        g = u + torch.where(solved, corr[cell], torch.zeros_like(u))
        return (g.to(v.dtype),) + (None,) * 9


# ----------------------------------------------------------------------------- driver
def _host_branch(device: torch.device) -> bool:
    """Whether reading a flag back costs nothing (CPU tensors): then the bounded search
    is skipped when the box is inactive instead of computed and discarded."""
    return device.type == "cpu"


def project_cells(z: Tensor, cell: Tensor, K: int, S: int, eps: float,
                  bounds: tuple[float, float] | None = None, targets: Tensor | None = None
                  ) -> Solution:
    """Exact projection of ``z`` (N,) with rows in cells ``cell`` (N,) of ``0..K*S-1``.

    Args:
        z: predictions (floating, finite; not checked here).
        cell: int64 cell of every row, ``class * S + group``.
        K, S: number of classes and of groups.
        eps: tolerance :math:`\\varepsilon \\ge 0`.
        bounds: optional ``(lo, hi)`` box with ``lo < hi``.
        targets: ``None`` for the band problem; else ``(K, S)`` centres :math:`\\bar y_c` of the
            fixed intervals :math:`[\\bar y_c - \\varepsilon, \\bar y_c + \\varepsilon]`, which
            must meet ``[lo, hi]`` for every present cell (the caller checks).

    Returns a :class:`Solution`. Differentiable in ``z``.
    """
    C = K * S
    zd = z.detach().to(_F64)
    n = torch.zeros(C, dtype=_F64, device=z.device).index_add_(
        0, cell, torch.ones_like(zd)).view(K, S)
    mu = torch.zeros(C, dtype=_F64, device=z.device).index_add_(0, cell, zd).view(K, S) \
        / n.clamp(min=1)
    present = n > 0
    fixed = targets is not None
    if fixed:
        lower, upper = targets.to(_F64) - eps, targets.to(_F64) + eps  # type: ignore[union-attr]
        if bounds is not None:
            lower, upper = lower.clamp(*bounds), upper.clamp(*bounds)
        band = torch.full((K,), math.nan, dtype=_F64, device=z.device)
        delta = torch.where(present, torch.minimum(torch.maximum(mu, lower), upper) - mu, 0.0)
        changed = present.any(-1)
    else:
        band, delta = _band_unboxed(mu, n, eps)
        changed = present.sum(-1) >= 2
    box_active = torch.zeros((), dtype=torch.bool, device=z.device)
    if bounds is not None:
        lo, hi = bounds
        keep_rows = ~changed.repeat_interleave(S)[cell]
        shifted = zd + delta.reshape(-1)[cell]
        outside = ((shifted < lo) | (shifted > hi)) & ~keep_rows
        box_active = outside.any()
        # CPU: run the bounded search only when needed. Elsewhere: always, and select, so
        # that no step waits for the host.
        if not _host_branch(z.device) or bool(box_active):
            if fixed:
                d_box = _fixed_boxed(zd, cell, n, K, S, lower, upper, lo, hi)
                t_box = band
            else:
                t_box, d_box = _band_boxed(zd, cell, n, K, S, eps, lo, hi)
            # Shifts at rounding level (a cell whose mean sits exactly on a kink of the
            # interpolated map) are zero: its constraint does not bind.
            tiny = 1e-12 * (1.0 + zd.abs().amax() + max(abs(lo), abs(hi)))
            d_box = torch.where(d_box.abs() <= tiny, torch.zeros_like(d_box), d_box)
            delta = torch.where(box_active, d_box, delta)
            band = torch.where(box_active, t_box, band)
    delta = torch.where(changed.unsqueeze(-1) & present, delta, torch.zeros_like(delta))
    keep = ~changed.repeat_interleave(S)[cell]
    active = delta != 0
    q = _Apply.apply(z, delta, cell, keep, n, active, K, S, not fixed, bounds)
    return Solution(q, delta, n, band, changed, box_active)


def project_groups(z: Tensor, cell: Tensor, n_cells: int, n_classes: int, eps: float,
                   bounds: tuple[float, float] | None) -> tuple[Tensor, Tensor]:
    """Band projection by (class, group) cell, as FairInference and FairModel use it: returns
    ``(q, delta)`` with ``delta`` of shape (C, S) (a drop-in replacement)."""
    sol = project_cells(z, cell, n_classes, n_cells // n_classes, eps, bounds)
    return sol.q, sol.shifts.to(z.dtype)
