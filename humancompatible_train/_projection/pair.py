r"""Two groups of one label class: the common case of the band problem, at constant overhead.

With two cells the stationarity :math:`\alpha_0 + \alpha_1 = 0` of the band problem
(:mod:`.solver`) leaves one unknown, :math:`s = \alpha_0 = n_0\delta_0 = -n_1\delta_1`.

* **No box**: :math:`M_c(\delta) = m_c + \delta`, so with the gap :math:`g = m_0 - m_1` and
  its part beyond the band :math:`x = g - \operatorname{clip}(g, -\varepsilon, \varepsilon)`
  the projection is :math:`\delta_0 = -x\,n_1/(n_0 + n_1)`, :math:`\delta_1 = x\,n_0/(n_0 +
  n_1)` (the closed form of the weighted band projection of two means).
* **Box**: the gap :math:`G(s) = M_0(s/n_0) - M_1(-s/n_1)` is continuous, non-decreasing and
  piecewise linear in ``s``, with slope :math:`a_0/n_0^2 + a_1/n_1^2` (:math:`a_c` the cell's
  rows inside the box) and kinks at :math:`s = k_c(lo - z_i)` and :math:`k_c(hi - z_i)`,
  :math:`k = (n_0, -n_1)`. From :math:`s \to -\infty` (cell 0 on ``lo``, cell 1 on ``hi``,
  :math:`G = lo - hi`) one sort of the 2N kinks and two cumulative sums give ``G`` at every
  kink (:func:`gap_polyline`). If the gap of the clipped rows is within :math:`\varepsilon`,
  clipping alone is the projection (``s = 0``: it is optimal for the box alone and feasible);
  otherwise the root of :math:`G(s) = \pm\varepsilon` (the sign of that gap) nearest 0 is
  interpolated on the piece that holds it. Where ``G`` is flat at the target (both cells
  entirely on the box) the ``s`` nearest 0 is taken: the smallest multipliers that certify
  the solution. The root carries the rounding of the cumulative sums (relative
  :math:`\sim N \cdot 10^{-16}`).

Two drivers share :func:`gap_polyline`:

* :func:`pair_host` (CPU tensors): the few per-cell numbers are read on the host (there is no
  device to wait for) and every branch is a Python ``if``; the O(N) work runs on NumPy views
  of the tensors' memory, whose per-call overhead is a fraction of torch's on small arrays.
  This is the small-batch path: its cost is a sort of the 2N kinks plus a constant of a few
  microseconds, and nothing is searched when clipping alone, or no box, suffices.
* :func:`pair_boxed` (any device): tensor operations only, nothing read back by the host.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .batch import PairSolution, segment_sum

__all__ = ["gap_polyline", "pair_boxed", "pair_host"]

_F64 = torch.float64
# Up to this many rows NumPy's lower per-call cost wins; above, torch's radix sort of integer
# keys (the polyline's one sort) does.
_NUMPY_ROWS = 4096


_LOW63 = (1 << 63) - 1


def _sort(xp: Any, x: Any) -> tuple[Any, Any]:
    """``(sorted x, order)`` for a float64 ``x``. torch sorts the float's bits as an
    order-preserving int64 key (a radix sort, about three times faster than a float sort at a
    million rows) and turns the sorted keys back into the floats (exact, no gather)."""
    if xp is np:
        order = np.argsort(x, kind="stable")
        return x[order], order
    key = x.view(torch.int64)
    keys, order = torch.sort(key ^ ((key >> 63) & _LOW63))
    return (keys ^ ((keys >> 63) & _LOW63)).view(torch.float64), order


def _take(xp: Any, x: Any, index: Any) -> Any:
    return x[index] if xp is np else x.index_select(0, index)


def gap_polyline(xp: Any, z: Any, first: Any, n0: Any, n1: Any, lo: float, hi: float
                 ) -> tuple[Any, Any, Any]:
    """``(es, G, slope)``: the sorted kinks of :math:`G(s)`, ``G`` at them and its slope after
    each. ``xp`` is :mod:`numpy` (arrays, float sizes) or :mod:`torch` (tensors, 0-d sizes):
    only operations spelled alike in both are used."""
    k = xp.where(first, n0, -n1)
    es, order = _sort(xp, xp.concatenate([(lo - z) * k, (hi - z) * k]))
    # Each row changes the slope by 1 / (k_c n_c) at its lo kink (entering the box for cell 0,
    # leaving it for cell 1) and by the opposite at its hi kink; kept >= 0 so that rounding
    # cannot make G decrease (it is searched).
    u = xp.where(first, 1.0 / (n0 * n0), -1.0 / (n1 * n1))
    slope = _take(xp, xp.concatenate([u, -u]), order).cumsum(0)
    slope = xp.where(slope > 0, slope, 0.0)
    G = xp.concatenate([es[:1] * 0.0 + (lo - hi), (es[1:] - es[:-1]) * slope[:-1]]).cumsum(0)
    return es, G, slope


def pair_boxed(z: Tensor, cell: Tensor, n: Tensor, eps: float, lo: float, hi: float
               ) -> tuple[Tensor, Tensor, Tensor]:
    """The box search with tensor operations only; returns ``(t, delta, scale)`` of shapes
    (1,), (1, 2), () like the general sweep of :mod:`.solver`."""
    nn = n.reshape(2).clamp(min=1)
    es, G, slope = gap_polyline(torch, z, cell == 0, nn[0], nn[1], lo, hi)
    m = segment_sum(z.clamp(lo, hi), cell, 2) / nn
    gap = m[0] - m[1]
    target = gap.sign() * eps  # a zero gap is slack: its target is never used
    # The root nearest s = 0: after the last kink with G <= target when s < 0, with
    # G < target when s > 0 (a flat G then keeps the smaller multiplier); the latter is
    # G <= the float just below the target.
    key = torch.where(gap > 0, target, torch.nextafter(target, target - 1.0))
    j = torch.searchsorted(G, key.view(1), right=True).clamp_(1, es.numel() - 1)
    ij = torch.cat([j - 1, j])
    (e0, e1), G0, S0 = es.index_select(0, ij), G.index_select(0, j - 1), slope.index_select(
        0, j - 1)
    s = torch.minimum(torch.maximum(e0 + (target - G0) / S0.clamp(min=1e-300), e0), e1)
    s = torch.where(gap.abs() <= eps, 0.0, s)
    delta = s / torch.cat([nn[:1], -nn[1:]])
    q = (z + delta.index_select(0, cell)).clamp_(lo, hi)
    t = (segment_sum(q, cell, 2) / nn).min()
    zmin, zmax = torch.aminmax(z)
    return t.view(1), delta.view(1, 2), zmax - zmin + (hi - lo)


def _root(xp: Any, z: Any, first: Any, n0: Any, n1: Any, eps: float, lo: float,
          hi: float, gap: float) -> float:
    """``s`` where the gap meets its band edge (``|gap| > eps``), the O(N) work in ``xp``."""
    es, G, slope = gap_polyline(xp, z, first, n0, n1, lo, hi)
    target = math.copysign(eps, gap)
    key = target if gap > 0 else math.nextafter(target, -math.inf)
    j = min(max(int(xp.searchsorted(G, key, side="right")), 1), len(es) - 1)
    e0, e1 = float(es[j - 1]), float(es[j])
    return min(max(e0 + (target - float(G[j - 1])) / max(float(slope[j - 1]), 1e-300), e0), e1)


def pair_host(cells: Any, eps: float, bounds: tuple[float, float] | None) -> PairSolution:
    """The projection of two cells of one class on the host (a :class:`~.batch.Cells` with
    ``host`` set). Fewer than two cells with rows: nothing to compare, so no shift, only the
    box (and a NaN band)."""
    (n0, n1), (s0, s1) = (float(v) for v in cells.n), cells.sums
    zn, cn = cells.zn, cells.cn
    d0 = d1 = 0.0
    t = math.nan
    changed = n0 > 0 and n1 > 0
    if changed:
        m0, m1 = s0 / n0, s1 / n1
        excess = (m0 - m1) - min(max(m0 - m1, -eps), eps)
        if excess:
            d0, d1 = -excess * n1 / (n0 + n1), excess * n0 / (n0 + n1)
        t = min(m0 + d0, m1 + d1)
    q = zn + np.array([d0, d1])[cn]
    box = False
    if bounds is not None:
        lo, hi = bounds
        box = bool(np.minimum.reduce(q) < lo) or bool(np.maximum.reduce(q) > hi)
        if box:
            q = np.minimum(np.maximum(zn, lo), hi)
            if changed:
                # The box binds: clipping alone, or the root of the gap polyline.
                c0, c1 = np.bincount(cn, q, 2).tolist()
                gap = c0 / n0 - c1 / n1
                d0 = d1 = 0.0
                if abs(gap) > eps:
                    if zn.size <= _NUMPY_ROWS:
                        s = _root(np, zn, cn == 0, n0, n1, eps, lo, hi, gap)
                    else:
                        zt = torch.from_numpy(zn)  # sizes as float64 tensors, not scalars
                        s = _root(torch, zt, cells.cell == 0, zt.new_tensor(n0),
                                  zt.new_tensor(n1), eps, lo, hi, gap)
                    d0, d1 = s / n0, -s / n1
                    q = zn + np.array([d0, d1])[cn]
                    np.minimum(np.maximum(q, lo, out=q), hi, out=q)
                    c0, c1 = np.bincount(cn, q, 2).tolist()
                t = min(c0 / n0, c1 / n1)
    return PairSolution(torch.from_numpy(q), (d0, d1), (float(n0), float(n1)), t, changed, box)
