r"""Cell-level exact solvers of FairInference's serving step, on the host in float64.

Without prediction bounds every row of a cell moves by the same shift :math:`d_c` (the
constraints see a cell only through its sum, and the objective is separable), so the
projection of a batch is a tiny quadratic program in the :math:`C \times S` shifts:

.. math::

    \min_d \sum_c n_c d_c^2 \quad\text{s.t.}\quad
    \underbrace{|(\hat m_c + d_c) - (\hat m_{c'} + d_{c'})| \le \varepsilon_A}_{\text{(A) the
    batch's band}},\qquad
    \underbrace{|(\hat P_c + s_c d_c) - (\hat P_{c'} + s_{c'} d_{c'})| \le \varepsilon_B}_{
    \text{(B) the pooled band}}

for the cells :math:`c, c'` of one label class, where :math:`\hat m_c` is the batch mean of
the cell, :math:`\hat P_c` its pooled mean (everything served before plus this batch,
unchanged) and :math:`s_c = n_c / T_c` the batch's share of the cell's pool. (A) binds the
cells present in the batch (when two or more are), (B) every cell served so far; a cell
absent from the batch has :math:`s_c = 0`, a fixed pooled mean.

* Two groups (:func:`pair_shifts`): a two-variable QP, solved exactly in closed form. By the
  KKT conditions at most two constraints are active at the optimum, so it is the cheapest
  feasible point among the origin, the projection onto each constraint's line and the
  intersection of each pair of lines.
* Three or more groups (:func:`cell_shifts`): (A) alone and (B) alone are weighted band
  projections, exact in closed form (the band solver of :mod:`.solver`); when neither alone
  satisfies the other, Dykstra's alternating projections (Boyle & Dykstra, 1986) between
  them, ending on (B): the pooled band holds exactly, the batch band to the accuracy of the
  rounds.

Rows come back as :math:`q_i = z_i + d_{c(i)}`. With prediction bounds the caller checks
whether the box is active and, if so, solves the bounded problem row by row
(:mod:`.pooled`).
"""

from __future__ import annotations

import numpy as np
import torch

from .solver import _band_unboxed

__all__ = ["band_shifts", "cell_shifts", "pair_shifts", "two_slab_qp"]

_PIN = 1e12  # weight that pins a cell that cannot move (absent from the batch)


def two_slab_qp(w: np.ndarray, rows: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    r"""Exact :math:`\min_d \sum_g w_g d_g^2` s.t. ``rows @ d <= rhs`` for two variables.

    ``w``: (..., 2) positive weights; ``rows``: (..., R, 2); ``rhs``: (..., R) (``inf`` marks an
    absent row). The optimum has at most two active constraints, so it is the cheapest
    feasible point among the origin, the projection onto each row's line and the
    intersection of each pair of lines; all are evaluated at once.
    """
    R = rows.shape[-2]
    inv = 1.0 / w[..., None, :]
    denom = (rows * rows * inv).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        on_line = (rhs / denom)[..., None] * inv * rows  # (..., R, 2)
        j, k = np.triu_indices(R, 1)
        a, c = rows[..., j, :], rows[..., k, :]
        bj, bk = rhs[..., j], rhs[..., k]
        det = a[..., 0] * c[..., 1] - a[..., 1] * c[..., 0]
        # Parallel lines or an absent row give inf/nan: such corners are infeasible.
        corner = np.stack([bj * c[..., 1] - bk * a[..., 1], a[..., 0] * bk - c[..., 0] * bj],
                          -1) / det[..., None]
        cand = np.concatenate([np.zeros_like(on_line[..., :1, :]), on_line, corner], -2)
        slack = rhs[..., None, :] - np.einsum("...jd,...rd->...jr", cand, rows)
    finite_rhs = np.isfinite(rhs)
    tol = 1e-9 * (1.0 + np.where(finite_rhs, np.abs(rhs), 0.0))[..., None, :]
    ok = (slack >= -tol) | (np.isnan(slack) & ~finite_rhs[..., None, :])
    feasible = ok.all(-1) & np.isfinite(cand).all(-1)
    cost = np.where(feasible, (w[..., None, :] * cand * cand).sum(-1), np.inf)
    best = cost.argmin(-1)
    out = np.take_along_axis(cand, best[..., None, None], -2)[..., 0, :]
    return np.nan_to_num(out)


def pair_shifts(mean_b: np.ndarray, n_b: np.ndarray, pooled: np.ndarray, scale: np.ndarray,
                use_a: np.ndarray, use_b: np.ndarray, eps_a: float, eps_b: np.ndarray
                ) -> np.ndarray:
    """(A) and (B) for two groups per class, exactly: the shifts ``d`` of shape (C, 2).

    ``mean_b``: batch means (any finite value where a cell is absent); ``n_b``: batch
    counts; ``pooled``: pooled means with this batch unchanged; ``scale``: ``n_b / T``;
    ``use_a``/``use_b``: (C,) whether the class's batch / pooled band applies;
    ``eps_b``: (C,) the pooled tolerance (at least ``eps_a``'s ε; wider where a pool is
    already further apart than ε and cannot be brought back).
    """
    inf = np.inf
    ga = mean_b[:, 1] - mean_b[:, 0]
    gp = pooled[:, 1] - pooled[:, 0]
    one = np.ones_like(ga)
    s0, s1 = scale[:, 0], scale[:, 1]
    rows = np.stack([np.stack([-one, one], -1), np.stack([one, -one], -1),
                     np.stack([-s0, s1], -1), np.stack([s0, -s1], -1)], -2)
    rhs = np.stack([np.where(use_a, eps_a - ga, inf), np.where(use_a, eps_a + ga, inf),
                    np.where(use_b, eps_b - gp, inf), np.where(use_b, eps_b + gp, inf)], -1)
    w = np.where(n_b > 0, n_b, 1.0)
    return two_slab_qp(w, rows, rhs)


def band_shifts(x: np.ndarray, w: np.ndarray, eps: float | np.ndarray, present: np.ndarray
                ) -> np.ndarray:
    r"""Shifts projecting the values ``x`` (C, S) onto a band of width ``eps`` per class in
    the metric :math:`\sum_c w_c d_c^2`; cells outside ``present`` do not count and get 0.
    The weighted band projection of :mod:`.solver`; ``eps`` may differ per class."""
    eps_t = torch.as_tensor(np.broadcast_to(eps, x.shape[:1]).copy())
    xt = torch.from_numpy(np.ascontiguousarray(x))
    wt = torch.from_numpy(np.where(present, w, 0.0))
    if eps_t.numel() and bool((eps_t == eps_t[0]).all()):
        _, d = _band_unboxed(xt, wt, float(eps_t[0]))
        return d.numpy()
    rows = [_band_unboxed(xt[k:k + 1], wt[k:k + 1], float(eps_t[k]))[1] for k in range(len(x))]
    return torch.cat(rows).numpy()


def pooled_tolerance(pooled: np.ndarray, fixed: np.ndarray, eps: float) -> np.ndarray:
    """(C,) tolerance of the pooled band: ``eps``, or the spread of the cells that this batch
    cannot move (``fixed``) where that is wider (the smallest gap reachable)."""
    hi = np.where(fixed, pooled, -np.inf).max(-1)
    lo = np.where(fixed, pooled, np.inf).min(-1)
    spread = np.where(fixed.sum(-1) >= 2, hi - lo, 0.0)
    return np.maximum(eps, spread)


def cell_shifts(mean_b: np.ndarray, n_b: np.ndarray, pooled: np.ndarray, scale: np.ndarray,
                seen: np.ndarray, use_a: bool, use_b: bool, eps: float, iters: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The cell shifts ``d`` (C, S) of the projection onto (A) and (B) without bounds.

    ``use_a``: the batch band applies (to classes with two or more cells in the batch);
    ``use_b``: the pooled band applies (to the cells served so far, ``seen``, this batch
    included). Returns ``(d, eps_b)``, ``eps_b`` (C,) the pooled tolerance used.
    """
    present = n_b > 0
    multi = present & (present.sum(-1, keepdims=True) >= 2)
    eps_b = pooled_tolerance(pooled, seen & ~present, eps)
    S = mean_b.shape[-1]
    if S == 2:
        a = np.full(len(n_b), use_a) & multi.all(-1)
        b = np.full(len(n_b), use_b) & seen.all(-1)
        d = pair_shifts(mean_b, n_b, pooled, scale, a, b, eps, eps_b)
        return np.where(present, d, 0.0), eps_b
    w_pool = np.where(present, n_b / np.where(present, scale, 1.0) ** 2, _PIN)

    def proj_a(d: np.ndarray) -> np.ndarray:
        return d + band_shifts(mean_b + d, n_b, eps, multi)

    def proj_b(d: np.ndarray) -> np.ndarray:
        step = band_shifts(pooled + scale * d, w_pool, eps_b, seen)
        return d + np.where(present, step / np.where(present, scale, 1.0), 0.0)

    zero = np.zeros_like(mean_b)
    if not use_b:
        return (proj_a(zero) if use_a else zero), eps_b
    d_b = proj_b(zero)
    if not use_a or _band_holds(mean_b + d_b, multi, eps):
        return d_b, eps_b
    d_a = proj_a(zero)
    if _band_holds(pooled + scale * d_a, seen, eps_b):
        return d_a, eps_b
    # Dykstra's alternating projections, ending on the pooled band.
    d, inc_a, inc_b = zero, zero, zero
    for _ in range(iters):
        y = proj_a(d + inc_a)
        inc_a = d + inc_a - y
        d_new = proj_b(y + inc_b)
        inc_b = y + inc_b - d_new
        d = d_new
    return d, eps_b


def _band_holds(x: np.ndarray, mask: np.ndarray, eps: float | np.ndarray) -> bool:
    hi = np.where(mask, x, -np.inf).max(-1)
    lo = np.where(mask, x, np.inf).min(-1)
    gap = np.where(mask.sum(-1) >= 2, hi - lo, 0.0)
    return bool((gap <= np.asarray(eps) + 1e-12 * (1.0 + np.abs(hi) + np.abs(lo))).all())
