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

* Two groups (:func:`pair_qp`): a two-variable QP, solved exactly in closed form in Python
  floats (a serving step must cost a few tensor operations; this costs none).
* Three or more groups (:func:`cell_shifts`): (A) alone and (B) alone are weighted band
  projections, exact in closed form (the band solver of :mod:`.solver`); when neither alone
  satisfies the other, both bind, and the row-level solver of :mod:`.pooled` takes over.

Rows come back as :math:`q_i = z_i + d_{c(i)}`. With prediction bounds the caller checks
whether the box is active and, if so, solves the bounded problem row by row
(:mod:`.pooled`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .solver import _band_unboxed

__all__ = ["band_shifts", "cell_shifts", "pair_qp", "pooled_tolerance"]


def pair_qp(w0: float, w1: float, slabs: list[tuple[float, float, float, float]],
            tol: float = 1e-12) -> tuple[float, float]:
    r"""Exact :math:`\min w_0 d_0^2 + w_1 d_1^2` s.t. :math:`|a_0 d_0 + a_1 d_1 + v| \le w`
    for each slab ``(a0, a1, v, w)`` (at most two), in Python floats.

    By the KKT conditions at most two constraints are active at the optimum: it is the
    origin, the projection onto a violated slab's nearer line when that satisfies the other
    slab, or the cheapest feasible intersection of two lines. When nothing is feasible (a
    pool that cannot be brought back) the last slab alone is met.
    """

    def ok(d0: float, d1: float) -> bool:
        return all(abs(a0 * d0 + a1 * d1 + v) <= w + tol * (1.0 + abs(v))
                   for a0, a1, v, w in slabs)

    if ok(0.0, 0.0):
        return 0.0, 0.0

    def onto(a0: float, a1: float, r: float) -> tuple[float, float]:
        den = a0 * a0 / w0 + a1 * a1 / w1
        return r * a0 / w0 / den, r * a1 / w1 / den

    best, best_cost = None, math.inf
    for a0, a1, v, w in slabs:
        if abs(v) > w:
            d0, d1 = onto(a0, a1, math.copysign(w, v) - v)
            cost = w0 * d0 * d0 + w1 * d1 * d1
            if cost < best_cost and ok(d0, d1):
                best, best_cost = (d0, d1), cost
    if best is None and len(slabs) == 2:
        (a0, a1, v, w), (b0, b1, u, x) = slabs
        det = a0 * b1 - a1 * b0
        if det != 0.0:
            for ra in (w - v, -w - v):
                for rb in (x - u, -x - u):
                    d0, d1 = (ra * b1 - rb * a1) / det, (a0 * rb - b0 * ra) / det
                    cost = w0 * d0 * d0 + w1 * d1 * d1
                    if cost < best_cost and ok(d0, d1):
                        best, best_cost = (d0, d1), cost
    if best is None:
        a0, a1, v, w = slabs[-1]
        best = onto(a0, a1, math.copysign(w, v) - v if abs(v) > w else 0.0)
    return best


def band_shifts(x: np.ndarray, w: np.ndarray, eps: float | np.ndarray, present: np.ndarray,
                fixed: np.ndarray | None = None) -> np.ndarray:
    r"""Shifts projecting the values ``x`` (C, S) onto a band of width ``eps`` per class in
    the metric :math:`\sum_c w_c d_c^2` over the ``present`` cells (others get 0); the
    weighted band projection of :mod:`.solver`. Cells marked ``fixed`` cannot move but hold
    the band: its position :math:`t` must keep them inside, so the unconstrained optimal
    :math:`t` (the cost is convex in it) is clamped to :math:`[\max x_f - \varepsilon,
    \min x_f]`. ``eps`` may differ per class (it must cover the fixed cells' spread)."""
    C = x.shape[0]
    eps_c = np.broadcast_to(np.asarray(eps, dtype=float), (C,))
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=float))
    wt = torch.from_numpy(np.where(present, w, 0.0))
    t = np.empty(C)
    for k in range(C):
        t[k] = float(_band_unboxed(xt[k:k + 1], wt[k:k + 1], float(eps_c[k]))[0])
    if fixed is not None:
        hi = np.where(fixed, x, np.inf).min(-1)
        lo = np.where(fixed, x, -np.inf).max(-1) - eps_c
        t = np.minimum(np.maximum(t, lo), np.maximum(hi, lo))
    target = np.minimum(np.maximum(x, t[:, None]), (t + eps_c)[:, None])
    return np.where(present, target - x, 0.0)


def pooled_tolerance(pooled: np.ndarray, fixed: np.ndarray, eps: float) -> np.ndarray:
    """(C,) tolerance of the pooled band: ``eps``, or the spread of the cells that this batch
    cannot move (``fixed``) where that is wider (the smallest gap reachable)."""
    hi = np.where(fixed, pooled, -np.inf).max(-1)
    lo = np.where(fixed, pooled, np.inf).min(-1)
    spread = np.where(fixed.sum(-1) >= 2, hi - lo, 0.0)
    return np.maximum(eps, spread)


def cell_shifts(mean_b: np.ndarray, n_b: np.ndarray, pooled: np.ndarray, scale: np.ndarray,
                seen: np.ndarray, use_a: bool, use_b: bool, eps: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """The cell shifts ``d`` (C, S) of the projection onto (A) and (B) without bounds, for
    three or more groups, where one band alone settles it.

    ``use_a``: the batch band applies (to classes with two or more cells in the batch);
    ``use_b``: the pooled band applies (to the cells served so far, ``seen``, this batch
    included). Returns ``(d, joint)``: ``joint`` (C,) marks the classes where neither band's
    projection satisfies the other, so both bind; their shifts are left to the row-level
    solver (:func:`.pooled.joint_boxed`).
    """
    present = n_b > 0
    multi = present & (present.sum(-1, keepdims=True) >= 2)
    fixed = seen & ~present
    eps_b = pooled_tolerance(pooled, fixed, eps)
    w_pool = np.where(present, n_b / np.where(present, scale, 1.0) ** 2, 0.0)
    zero = np.zeros_like(mean_b)
    none = np.zeros(len(mean_b), dtype=bool)
    if not use_b:
        return (band_shifts(mean_b, n_b, eps, multi) if use_a else zero), none
    step = band_shifts(pooled, w_pool, eps_b, present, fixed)
    d_b = np.where(present, step / np.where(present, scale, 1.0), 0.0)
    if not use_a:
        return d_b, none
    ok_b = _band_holds(mean_b + d_b, multi, eps)
    d_a = band_shifts(mean_b, n_b, eps, multi)
    ok_a = _band_holds(pooled + scale * d_a, seen, eps_b)
    d = np.where(ok_b[:, None], d_b, np.where(ok_a[:, None], d_a, 0.0))
    return d, ~(ok_a | ok_b)


def _band_holds(x: np.ndarray, mask: np.ndarray, eps: float | np.ndarray) -> np.ndarray:
    """(C,) whether the masked values of each class lie within ``eps``."""
    hi = np.where(mask, x, -np.inf).max(-1)
    lo = np.where(mask, x, np.inf).min(-1)
    two = mask.sum(-1) >= 2
    gap = np.where(two, hi - lo, 0.0)
    scale = np.where(two, np.abs(hi) + np.abs(lo), 0.0)
    return gap <= np.asarray(eps) + 1e-12 * (1.0 + scale)
