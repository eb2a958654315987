r"""Small exact solvers of FairInference's streaming step.

:func:`band_project` projects group values onto a band of width :math:`\varepsilon` in a
weighted metric, :math:`\min_y \sum_g w_g (y_g - x_g)^2` s.t. :math:`|y_g - y_h| \le
\varepsilon`: for a band position :math:`t` the best :math:`y_g` is
:math:`\operatorname{clip}(x_g, t, t+\varepsilon)`, so it minimises a convex piecewise quadratic
in :math:`t` with breakpoints :math:`x_g, x_g - \varepsilon`; the stationary point of every
piece is evaluated at once (two groups: a closed form). :func:`two_slab_qp` solves the
two-group step with both the batch's and the pooled band exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor


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


def two_slab_qp(w: Tensor, rows: Tensor, rhs: Tensor) -> Tensor:
    r"""Exact :math:`\min_d \sum_g w_g d_g^2` s.t. ``rows @ d <= rhs`` for two variables.

    ``w``: (..., 2) positive weights; ``rows``: (..., R, 2); ``rhs``: (..., R) (``inf`` marks an
    absent row). By the KKT conditions the optimum has at most two active constraints, so it
    is the cheapest feasible point among: the origin, the projection onto each row's line,
    and the intersection of each pair of lines. All candidates are evaluated at once.
    """
    R = rows.shape[-2]
    inv = (1.0 / w).unsqueeze(-2)
    denom = (rows * rows * inv).sum(-1)
    on_line = (rhs / denom).unsqueeze(-1) * inv * rows  # (..., R, 2)
    j, k = torch.triu_indices(R, R, 1, device=rows.device)
    a, c = rows[..., j, :], rows[..., k, :]
    bj, bk = rhs[..., j], rhs[..., k]
    det = a[..., 0] * c[..., 1] - a[..., 1] * c[..., 0]
    corner = torch.stack([bj * c[..., 1] - bk * a[..., 1], a[..., 0] * bk - c[..., 0] * bj],
                         -1) / det.unsqueeze(-1)  # parallel lines give inf/nan: infeasible
    cand = torch.cat([torch.zeros_like(on_line[..., :1, :]), on_line, corner], -2)
    slack = rhs.unsqueeze(-2) - (cand.unsqueeze(-2) * rows.unsqueeze(-3)).sum(-1)
    tol = 1e-9 * (1.0 + torch.where(torch.isfinite(rhs), rhs.abs(), 0.0)).unsqueeze(-2)
    feasible = ((slack >= -tol) | torch.isnan(slack) & torch.isinf(rhs).unsqueeze(-2)).all(-1) \
        & torch.isfinite(cand).all(-1)
    cost = torch.where(feasible, (w.unsqueeze(-2) * cand * cand).sum(-1), float("inf"))
    best = cost.argmin(-1, keepdim=True).unsqueeze(-1).expand(*cost.shape[:-1], 1, 2)
    return torch.gather(torch.nan_to_num(cand), -2, best).squeeze(-2)
