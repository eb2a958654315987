r"""Exact Euclidean projection of a batch of predictions onto group-parity constraints.

Problem (per label class for equalized odds):

.. math::

    q^\star = \arg\min_q \tfrac12 \|q - z\|^2 \quad\text{s.t.}\quad
    |\bar q_g - \bar q_h| \le \varepsilon \ \forall g, h, \qquad lo \le q \le hi .

The pairwise constraints hold iff all group means lie in one band :math:`[t, t+\varepsilon]`.
By the KKT conditions every member of group :math:`g` moves by the same shift before the
box: :math:`q_i = \operatorname{clip}(z_i + \delta_g, lo, hi)`.

* **No box.** The group means move freely, so the problem is the weighted projection of the
  means onto the band, :math:`\min \sum_g n_g (y_g - m_g)^2`: a convex piecewise-quadratic in
  :math:`t` with breakpoints :math:`m_g, m_g - \varepsilon`, solved exactly by evaluating the
  stationary point of every piece (:func:`band_project`).
* **Box.** The group mean :math:`M_g(\delta)` is continuous, non-decreasing and
  piecewise-linear in :math:`\delta` (kinks at :math:`lo - z_i, hi - z_i`). For a band
  position :math:`t` the cheapest shifts are
  :math:`\delta_g(t) = [M_g^{-1}(t)]_+ + [M_g^{-1}(t+\varepsilon)]_-` and the optimal
  :math:`t` solves :math:`F(t) = \sum_g n_g \delta_g(t) = 0` (stationarity in :math:`t`;
  :math:`n_g\delta_g` is the derivative of group :math:`g`'s cost, Danskin). :math:`F` is
  non-decreasing and affine between the kinks :math:`M_g` of the breakpoints (and those
  minus :math:`\varepsilon`), with jumps where a group's mean map is flat (all its members
  clipped); a binary search of fixed length over the sorted kinks locates the piece holding
  the root, and the line through two interior points of that piece gives it exactly
  (clamped to the piece when the root sits on a jump). No step depends on a value read back
  by the host.

The multipliers of the band constraints are :math:`\alpha_g = n_g \delta_g` (positive: the
lower edge binds, negative: the upper edge).

Everything is built from differentiable tensor operations once the discrete choices (sort
orders, pieces) are made, so autograd differentiates the piecewise-affine solution map
exactly on each piece.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["band_project", "project_groups", "group_mean_inverse"]


def band_project(x: Tensor, w: Tensor, eps: float | Tensor, present: Tensor) -> Tensor:
    """Weighted projection of group values ``x`` (..., S) onto a band of width ``eps``.

    Solves :math:`\\min_y \\sum_g w_g (y_g - x_g)^2` s.t. :math:`|y_g - y_h| \\le \\varepsilon`
    over the groups in ``present``; the others are returned unchanged.
    """
    if x.shape[-1] == 2:
        return _band_two(x, w, eps, present)
    big = torch.finfo(x.dtype).max / 4
    w = torch.where(present, w, torch.zeros_like(w))
    xs = torch.where(present, x, torch.zeros_like(x))
    bps = torch.cat([torch.where(present, x, big), torch.where(present, x - eps, big)], dim=-1)
    bps, _ = torch.sort(bps, dim=-1)
    lo = torch.cat([torch.full_like(bps[..., :1], -big), bps], dim=-1)
    hi = torch.cat([bps, torch.full_like(bps[..., :1], big)], dim=-1)
    mid = torch.where((lo > -big) & (hi < big), 0.5 * (lo + hi),
                      torch.where(lo > -big, lo + 1.0, hi - 1.0))
    below = (x.unsqueeze(-2) < mid.unsqueeze(-1)) & present.unsqueeze(-2)
    above = (x.unsqueeze(-2) > mid.unsqueeze(-1) + eps) & present.unsqueeze(-2)
    wl = (w.unsqueeze(-2) * below).sum(-1)
    wh = (w.unsqueeze(-2) * above).sum(-1)
    num = (w.unsqueeze(-2) * below * xs.unsqueeze(-2)).sum(-1) + \
        (w.unsqueeze(-2) * above * (xs.unsqueeze(-2) - eps)).sum(-1)
    den = wl + wh
    t_star = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), mid)
    t_star = torch.minimum(torch.maximum(t_star, lo), hi)
    y = torch.minimum(torch.maximum(xs.unsqueeze(-2), t_star.unsqueeze(-1)),
                      t_star.unsqueeze(-1) + eps)
    sq = torch.where(present.unsqueeze(-2), (y - xs.unsqueeze(-2)) ** 2, torch.zeros_like(y))
    cost = (w.unsqueeze(-2) * sq).sum(-1)
    # Pieces past the last real breakpoint (padding of absent groups) are not candidates.
    cost = torch.where(lo >= big, torch.full_like(cost, float("inf")), cost)
    best = cost.argmin(dim=-1, keepdim=True)
    y_best = torch.gather(y, -2, best.unsqueeze(-1).expand(*best.shape[:-1], 1, x.shape[-1]))
    return torch.where(present, y_best.squeeze(-2), x)


def _band_two(x: Tensor, w: Tensor, eps: float | Tensor, present: Tensor) -> Tensor:
    """Two groups in closed form: remove the excess of the gap, split inversely to weight."""
    gap = x[..., 1] - x[..., 0]
    excess = torch.sign(gap) * torch.clamp(gap.abs() - eps, min=0.0)
    both = present.all(-1)
    excess = torch.where(both, excess, 0.0)
    w0, w1 = w[..., 0], w[..., 1]
    total = torch.where(both, w0 + w1, 1.0)
    return torch.stack([x[..., 0] + excess * w1 / total, x[..., 1] - excess * w0 / total], -1)


class _GroupMeans:
    """Group means under a per-group shift and box, for a padded (G, L) layout of sorted
    values (``G`` = every (class, group) cell). Padding is ``+inf``."""

    def __init__(self, zs: Tensor, n: Tensor, lo: float, hi: float) -> None:
        self.zs, self.n, self.lo, self.hi = zs, n, lo, hi
        finite = torch.where(torch.isfinite(zs), zs, torch.zeros_like(zs))
        self.prefix = torch.cat([torch.zeros_like(zs[:, :1]), finite.cumsum(-1)], -1)
        # Kinks of M in delta: lo - z and hi - z, sorted; padding stays +inf.
        kinks = torch.cat([lo - zs.flip(-1), hi - zs.flip(-1)], -1)
        kinks = torch.where(torch.isfinite(kinks), kinks, torch.full_like(kinks, math.inf))
        self.kinks, _ = torch.sort(kinks, -1)
        self.values = self.mean(self.kinks)  # M at each kink, non-decreasing

    def mean(self, delta: Tensor) -> Tensor:
        """M_g(delta) for delta of shape (G, K) (any K)."""
        n = self.n.unsqueeze(-1)
        nf = n.to(self.zs.dtype).clamp(min=1)
        d = torch.where(torch.isfinite(delta), delta, torch.zeros_like(delta))
        a = torch.searchsorted(self.zs, (self.lo - d).contiguous(), right=True).clamp(max=n)
        b = torch.searchsorted(self.zs, (self.hi - d).contiguous(), right=False).clamp(max=n)
        b = torch.maximum(a, b)
        mid = torch.gather(self.prefix, -1, b) - torch.gather(self.prefix, -1, a) \
            + (b - a).to(d.dtype) * d
        m = (self.lo * a.to(d.dtype) + self.hi * (n - b).to(d.dtype) + mid) / nf
        return torch.where(torch.isinf(delta), torch.where(delta > 0, self.hi, self.lo), m)

    def inverse(self, m: Tensor, left: bool) -> Tensor:
        """Smallest (``left``) or largest delta with M(delta) = m, m of shape (G, K) within
        [lo, hi]; linear interpolation on the piece found by binary search."""
        return group_mean_inverse(self.kinks, self.values, m, left)


def group_mean_inverse(kinks: Tensor, values: Tensor, m: Tensor, left: bool) -> Tensor:
    """Invert a non-decreasing piecewise-linear map given at sorted ``kinks`` (G, P)."""
    P = kinks.shape[-1]
    j = torch.searchsorted(values.contiguous(), m.contiguous(), right=not left)
    j = j.clamp(1, P - 1)
    k0, k1 = torch.gather(kinks, -1, j - 1), torch.gather(kinks, -1, j)
    v0, v1 = torch.gather(values, -1, j - 1), torch.gather(values, -1, j)
    k1 = torch.where(torch.isfinite(k1), k1, k0)
    slope_ok = v1 > v0
    frac = torch.where(slope_ok, (m - v0) / torch.where(slope_ok, v1 - v0, 1.0), 0.0)
    return k0 + frac * (k1 - k0)


def project_groups(z: Tensor, cell: Tensor, n_cells: int, n_classes: int, eps: float,
                   bounds: tuple[float, float] | None) -> tuple[Tensor, Tensor]:
    """Exact projection of ``z`` (N,) whose rows belong to ``cell`` = class * S + group.

    Returns ``(q, delta)`` with ``delta`` of shape (C, S): each cell's shift before the box.
    """
    S = n_cells // n_classes
    n = torch.bincount(cell, minlength=n_cells).view(n_classes, S)
    present = n > 0
    if bounds is None:
        sums = torch.zeros(n_cells, dtype=z.dtype, device=z.device).index_add(0, cell, z)
        mean = sums.view(n_classes, S) / n.clamp(min=1).to(z.dtype)
        target = band_project(mean, n.to(z.dtype), eps, present)
        delta = torch.where(present, target - mean, torch.zeros_like(mean))
        return z + delta.reshape(-1)[cell], delta
    lo, hi = bounds
    # Sorted values of each cell, padded with +inf to the largest cell.
    order = torch.argsort(z, stable=True)  # by value first...
    order = order[torch.argsort(cell[order], stable=True)]  # ...then by cell, stably
    counts = n.reshape(-1)
    L = int(z.numel())  # static bound on any cell's size: no host read of the counts
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(z.numel(), device=z.device) - starts[cell[order]]
    zs = torch.full((n_cells, L), math.inf, dtype=z.dtype, device=z.device)
    zs = zs.index_put((cell[order], rank), z[order])
    gm = _GroupMeans(zs, counts, lo, hi)
    m0 = gm.mean(torch.zeros_like(zs[:, :1])).view(n_classes, S)  # means before any shift
    pres = present.reshape(-1)

    def shifts(t: Tensor) -> Tensor:
        """delta_g(t) for t of shape (C, K): (C, S, K)."""
        K = t.shape[-1]
        tt = t.unsqueeze(1).expand(n_classes, S, K).reshape(n_cells, K)
        low = gm.inverse(tt.clamp(lo, hi), left=True)
        up = gm.inverse((tt + eps).clamp(lo, hi), left=False)
        m0c = m0.reshape(-1, 1)
        d = torch.where(tt > m0c, low, torch.zeros_like(low)) + \
            torch.where(tt + eps < m0c, up, torch.zeros_like(up))
        d = torch.where(pres.unsqueeze(-1), d, torch.zeros_like(d))
        return d.view(n_classes, S, K)

    def F(t: Tensor) -> Tensor:
        return (n.to(z.dtype).unsqueeze(-1) * shifts(t)).sum(1)

    # Kinks of F in t: M at the kinks of every present cell, the same minus eps, and m0.
    vals = torch.where(pres.unsqueeze(-1) & torch.isfinite(gm.kinks), gm.values,
                       torch.full_like(gm.values, math.inf)).view(n_classes, -1)
    m0v = torch.where(present, m0, torch.full_like(m0, math.inf))
    cand = torch.cat([vals, vals - eps, m0v, m0v - eps,
                      torch.full_like(m0v[:, :1], lo - eps),
                      torch.full_like(m0v[:, :1], hi)], -1)
    cand, _ = torch.sort(cand, -1)
    finite = torch.isfinite(cand)
    last = finite.sum(-1, keepdim=True) - 1
    # Largest candidate index with F <= 0 (F is non-decreasing): a binary search of fixed
    # length, so no step waits for a value read back by the host.
    left = torch.zeros_like(last)
    right = last
    for _ in range(max(1, math.ceil(math.log2(cand.shape[-1] + 1)))):
        midx = (left + right + 1) // 2
        go = F(torch.gather(cand, -1, midx)) <= 0
        left = torch.where(go, midx, left)
        right = torch.where(go, right, midx - 1)
    c0 = torch.gather(cand, -1, left)
    c1 = torch.gather(cand, -1, (left + 1).clamp(max=last))
    # F is affine inside (c0, c1) but may jump at either end (a group whose members are all
    # clipped has a flat mean map): fit the line through two interior points and clamp the
    # root to the bracket, which puts it on the jump when there is one.
    p1, p2 = c0 + (c1 - c0) / 3, c0 + 2 * (c1 - c0) / 3
    f1, f2 = F(p1), F(p2)
    slope = (f2 - f1) / torch.where(p2 > p1, p2 - p1, 1.0)
    t_lin = torch.where(slope > 0, p1 - f1 / torch.where(slope > 0, slope, 1.0),
                        torch.where(f1 > 0, c0, c1))
    t_star = torch.minimum(torch.maximum(t_lin, c0), c1)
    # Single-group classes have no band: no shift.
    multi = present.sum(-1, keepdim=True) >= 2
    delta = torch.where(multi, shifts(t_star).squeeze(-1), torch.zeros_like(m0))
    # Rows of a class with fewer than two groups have nothing to compare: returned as they are.
    cls_multi = multi.expand(n_classes, S).reshape(-1)[cell]
    q = torch.where(cls_multi, (z + delta.reshape(-1)[cell]).clamp(lo, hi), z)
    return q, delta
