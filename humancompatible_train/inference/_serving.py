r"""One serving step of :class:`~humancompatible_train.inference.FairInference`.

The step works at two levels:

* **rows** (torch, on the scores' device): the batch's per-cell counts and sums, then the
  served rows :math:`q_i = z_i + \text{shift}_{c(i)}` (or a row-level solver when prediction
  bounds bind or decisions are projected);
* **cells** (Python floats on the host): the state is a few numbers per cell, read once
  (``flat.tolist()``), updated (running sums, the dual step, the offsets, the cell-level
  projection, the statistics), checked, and written back once. Nothing is written before
  every check has passed, so an error leaves the state as it was.

The maths is described in the wrapper's docstring and in :mod:`humancompatible_train.
_projection`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .._projection import (
    cell_shifts,
    decision_band_project,
    decision_joint_project,
    joint_boxed,
    pair_qp,
)
from .._projection.solver import _fixed_boxed
from . import _device
from ._checks import check_batch, check_values
from ._host import _HostState

if TYPE_CHECKING:
    from .wrapper import FairInference

__all__ = ["serve"]

_F64 = torch.float64
_TOL = 1e-12


# ----------------------------------------------------------------------- the step
def serve(fi: FairInference, scores: Tensor, groups: Tensor, labels: Tensor | None) -> Tensor:
    """Adjust one batch and update the serving state; returns the served scores, shaped and
    typed like ``scores``."""
    if (isinstance(scores, Tensor) and scores.device.type != "cpu"
            and scores.device == fi._flat.device and _device.supports(fi)):
        return _device.serve(fi, scores, groups, labels)
    if (not fi._decision and isinstance(scores, Tensor) and scores.numel() == 1
            and isinstance(groups, Tensor) and groups.numel() == 1):
        return _serve_one(fi, scores, groups, labels)
    z, g, y = check_batch(fi, scores, groups, labels)
    C, S = fi.num_classes, fi.num_groups
    CS = C * S
    zd = z if z.dtype == _F64 else z.to(_F64)
    key = check_values(fi, zd, g, y)
    N = zd.shape[0]
    n_b = torch.bincount(key, minlength=CS).tolist()
    sum_b = torch.bincount(key, weights=zd, minlength=CS).tolist()
    label_b = None
    if fi._residual:
        label_b = torch.bincount(key, weights=y, minlength=CS).tolist()  # type: ignore[arg-type]
    st = _HostState(fi)
    large = N >= fi.b_tau
    st.add_batch(n_b, sum_b, label_b)
    if fi._decision:
        q = _serve_decisions(fi, st, zd, key, n_b, large)
    else:
        q = _serve_means(fi, st, z, zd, key, n_b, sum_b, large)
    st.finish(N)
    st.commit()
    return q.to(scores.dtype).view(scores.shape)


def _serve_one(fi: FairInference, scores: Tensor, groups: Tensor, labels: Tensor | None
               ) -> Tensor:
    """One prediction, in Python floats: its only constraint is the pooled one, an interval
    for this cell's pooled mean (with the bounds, one interval): a clamp, exactly."""
    if (scores.dtype not in (torch.float32, torch.float64) or scores.dim() > 2
            or groups.is_complex()):
        check_batch(fi, scores, groups, labels)  # raises with the full message
    if groups.device != scores.device:
        raise ValueError(f"groups: expected a tensor on the scores' device {scores.device}, "
                         f"got {groups.device}")
    z = float(scores)
    gv = float(groups) if not groups.dtype == torch.bool else float(bool(groups))
    S = fi.num_groups
    if not (gv == int(gv) and 0 <= gv < S):
        raise ValueError(f"groups: expected ids in 0..{S - 1}, got values [{groups.item()}]")
    if not math.isfinite(z * z):
        raise ValueError("scores: expected finite values, got NaN or Inf; nothing was changed"
                         if not math.isfinite(z) else
                         "scores: expected values whose squares sum to a finite float64 "
                         "(|score| below about 1e154), got larger ones; nothing was changed")
    cell = int(gv)
    yv = None
    if labels is not None or fi._labelled:
        _, _, y = check_batch(fi, scores, groups, labels)
        yv = float(y)  # type: ignore[arg-type]
        if fi.metric == "equalized_odds":
            if yv not in (0.0, 1.0):
                raise ValueError(f"labels: expected values in {{0, 1}} for equalized_odds, "
                                 f"got [{yv}]")
            cell += int(yv) * S
        elif not math.isfinite(yv * yv):
            raise ValueError(f"labels: expected finite values (below about 1e154), got "
                             f"[{yv}]; nothing was changed")
    CS = fi.num_classes * S
    n_b = [0.0] * CS
    n_b[cell] = 1.0
    sum_b = [0.0] * CS
    sum_b[cell] = z
    label_b = None
    if fi._residual:
        label_b = [0.0] * CS
        label_b[cell] = yv  # type: ignore[assignment]
    st = _HostState(fi)
    st.add_batch(n_b, sum_b, label_b)
    base, d, _ = _mean_plan(fi, st, n_b, sum_b, fi.b_tau <= 1)
    q = z + base[cell] + d[cell]
    if fi.prediction_bounds is not None:
        # One row: its interval lies in the box (the pool meets the band inside it), so the
        # clamp is the exact projection.
        q = min(max(q, fi.prediction_bounds[0]), fi.prediction_bounds[1])
    out_b = [0.0] * CS
    out_b[cell] = q
    st.served(out_b, (q - z) ** 2, None)
    st.finish(1)
    st.commit()
    return torch.full_like(scores, q)


# ------------------------------------------------------------ mean-type metrics
def _mean_plan(fi: FairInference, st: _HostState, n_b: list[float], sum_b: list[float],
               large: bool) -> tuple[list[float], list[float], bool]:
    """The dual step, then per cell the base shift (minus the offsets for small batches),
    the projection's shift, and whether the row-level solver must serve instead."""
    CS = fi.num_classes * fi.num_groups
    st.dual_step(st.raw, subtract_offsets=True)
    # Small batches are served from the offset scores; large ones from the raw scores.
    base = [0.0] * CS if large else [-x for x in st.offsets(st.lam)]
    st.mean_b = [(s / n + b) if n else 0.0 for s, n, b in zip(sum_b, n_b, base)]
    st.use_a = (large or fi.per_batch) and not fi._residual
    st.use_b = fi.pooled == "hard"
    if fi._residual:
        lower, upper = _residual_intervals(fi, st, n_b, sum_b, large, st.use_b)
        d = [min(max(m, lo), hi) - m if n else 0.0
             for m, lo, hi, n in zip(st.mean_b, lower, upper, n_b)]
        return base, d, False
    d, rows = _mean_shifts(fi, st, n_b, st.mean_b, st.use_a, st.use_b)
    return base, d, rows


def _serve_means(fi: FairInference, st: _HostState, z: Tensor, zd: Tensor, key: Tensor,
                 n_b: list[float], sum_b: list[float], large: bool) -> Tensor:
    base, d, rows = _mean_plan(fi, st, n_b, sum_b, large)
    shift = [b + x for b, x in zip(base, d)]
    bounds = fi.prediction_bounds
    # Rows in the scores' dtype (one rounding of the float64 shift).
    shift_t = torch.from_numpy(np.array(shift, dtype=np.float64)).to(z.device, z.dtype)
    q = z + shift_t.index_select(0, key)
    if bounds is not None and not rows:
        lo, hi = torch.aminmax(q)
        rows = float(lo) < bounds[0] or float(hi) > bounds[1]
    if rows:
        q = _means_boxed(fi, st, zd, key, base, n_b, sum_b, large, st.use_a, st.use_b)
        _served_rows(fi, st, q, zd, key, n_b)
        return q
    out_b = [s + n * x for s, n, x in zip(sum_b, n_b, shift)]
    sq = sum(n * x * x for n, x in zip(n_b, shift))
    means = [m + x for m, x in zip(st.mean_b, d)]
    target = None
    if fi._residual:
        target = [lab / n if n else 0.0 for lab, n in zip(_batch_labels(fi, st), n_b)]
    st.served(out_b, sq, _batch_gap(fi, means, n_b, target))
    return q


def _batch_labels(fi: FairInference, st: _HostState) -> list[float]:
    old = st.vals[fi._layout.slices["label_sum"]]
    return [a - b for a, b in zip(st.labels, old)]


def _mean_shifts(fi: FairInference, st: _HostState, n_b: list[float], mean_b: list[float],
                 use_a: bool, use_b: bool) -> tuple[list[float], bool]:
    """Cell shifts of the projection onto the batch band (A) and the pooled band (B), and
    whether the row-level solver must serve (three or more groups with both bands binding)."""
    C, S = fi.num_classes, fi.num_groups
    eps = fi._eps_target
    d = [0.0] * (C * S)
    rest = []
    for k in range(C):
        cells = range(k * S, (k + 1) * S)
        present = [c for c in cells if n_b[c] > 0]
        if not present:
            continue
        seen = [c for c in cells if st.count[c] > 0]
        pooled = {c: (st.out[c] + n_b[c] * mean_b[c]) / st.count[c] for c in seen}
        fixed = [pooled[c] for c in seen if n_b[c] == 0]
        eps_b = max(eps, max(fixed) - min(fixed)) if len(fixed) >= 2 else eps
        a_on = use_a and len(present) >= 2
        b_on = use_b and len(seen) >= 2
        if not a_on and not b_on:
            continue
        if len(present) == 1:  # only (B): the cell's pooled mean into the others' interval
            c = present[0]
            others = [pooled[x] for x in seen if x != c]
            lo, hi = max(others) - eps_b, min(others) + eps_b
            if lo > hi:
                lo = hi = 0.5 * (lo + hi)
            p = min(max(pooled[c], lo), hi)
            d[c] = (p - pooled[c]) * st.count[c] / n_b[c]
        elif S == 2:
            c0, c1 = k * S, k * S + 1
            slabs = []  # (a0, a1, value at d = 0, half-width): |a . d + value| <= width
            if a_on:
                slabs.append((-1.0, 1.0, mean_b[c1] - mean_b[c0], eps))
            if b_on:
                slabs.append((-n_b[c0] / st.count[c0], n_b[c1] / st.count[c1],
                              pooled[c1] - pooled[c0], eps_b))
            d[c0], d[c1] = pair_qp(n_b[c0], n_b[c1], slabs)
        else:
            rest.append(k)
    joint = bool(rest) and _many_groups(fi, st, rest, n_b, mean_b, use_a, use_b, d)
    return d, joint


def _many_groups(fi: FairInference, st: _HostState, classes: list[int], n_b: list[float],
                 mean_b: list[float], use_a: bool, use_b: bool, d: list[float]) -> bool:
    """Three or more groups: the cell-level solver of :mod:`.._projection.streaming`; returns
    whether some class needs both bands at once (then the row-level solver serves)."""
    C, S = fi.num_classes, fi.num_groups
    nb = np.array(n_b).reshape(C, S)
    cnt = np.array(st.count).reshape(C, S)
    mb = np.array(mean_b).reshape(C, S)
    seen = cnt > 0
    safe = np.where(seen, cnt, 1.0)
    pooled = (np.array(st.out).reshape(C, S) + nb * mb) / safe
    shifts, joint = cell_shifts(mb, nb, pooled, nb / safe, seen, use_a, use_b, fi._eps_target)
    for k in classes:
        d[k * S:(k + 1) * S] = shifts[k].tolist()
    return bool(joint[classes].any())


def _residual_intervals(fi: FairInference, st: _HostState, n_b: list[float],
                        sum_b: list[float], large: bool, use_b: bool
                        ) -> tuple[list[float], list[float]]:
    """Per cell, the interval of batch means allowed: the pooled residual's (when hard) and,
    for a large batch, its own residual's; the pooled one wins where they do not meet."""
    eps = fi._eps_target
    batch_labels = _batch_labels(fi, st)
    lower, upper = [], []
    for c, n in enumerate(n_b):
        lo, hi = -math.inf, math.inf
        if n and large:
            ybar = batch_labels[c] / n
            lo, hi = ybar - eps, ybar + eps
        if n and use_b:
            T = st.count[c]
            ybar = st.labels[c] / T
            plo = ((ybar - eps) * T - st.out[c]) / n
            phi = ((ybar + eps) * T - st.out[c]) / n
            if plo > hi:
                lo = hi = plo
            elif phi < lo:
                lo = hi = phi
            else:
                lo, hi = max(lo, plo), min(hi, phi)
        lower.append(lo)
        upper.append(hi)
    return lower, upper


def _batch_gap(fi: FairInference, values: list[float], n_b: list[float],
               target: list[float] | None) -> float | None:
    """The batch's gap (largest over classes; None when no class defines one)."""
    C, S = fi.num_classes, fi.num_groups
    gap = None
    for k in range(C):
        cells = [c for c in range(k * S, (k + 1) * S) if n_b[c] > 0]
        if target is not None:
            if cells:
                g = max(abs(values[c] - target[c]) for c in cells)
                gap = g if gap is None else max(gap, g)
        elif len(cells) >= 2:
            vs = [values[c] for c in cells]
            g = max(vs) - min(vs)
            gap = g if gap is None else max(gap, g)
    return gap


# ------------------------------------------------------------- with active bounds
def _prior(fi: FairInference, st: _HostState, zd: Tensor) -> tuple[Tensor, Tensor]:
    C, S = fi.num_classes, fi.num_groups
    o = torch.tensor(st.out, dtype=_F64, device=zd.device).view(C, S)
    n = torch.tensor(st.count_old, dtype=_F64, device=zd.device).view(C, S)
    return o, n


def _means_boxed(fi: FairInference, st: _HostState, zd: Tensor, key: Tensor, base: list[float],
                 n_b: list[float], sum_b: list[float], large: bool, use_a: bool, use_b: bool
                 ) -> Tensor:
    """The projection with the bounds inside, row by row (:mod:`.._projection.pooled`)."""
    C, S = fi.num_classes, fi.num_groups
    bounds = fi.prediction_bounds
    x = zd + torch.tensor(base, dtype=_F64, device=zd.device).index_select(0, key)
    if fi._residual:
        lower, upper = _residual_intervals(fi, st, n_b, sum_b, large, use_b)
        lo, hi = bounds  # type: ignore[misc]
        n = torch.tensor(n_b, dtype=_F64, device=zd.device).view(C, S)
        lw = torch.tensor(lower, dtype=_F64, device=zd.device).clamp(lo, hi)
        up = torch.tensor(upper, dtype=_F64, device=zd.device).clamp(lo, hi)
        delta, _ = _fixed_boxed(x, key, n, C, S, lw, up, lo, hi)
        return (x + delta.reshape(-1).index_select(0, key)).clamp(lo, hi)
    o, cnt = _prior(fi, st, zd)
    if bounds is not None:
        q, _ = joint_boxed(x, key, C, S, fi._eps_target, bounds, o, cnt, use_a, use_b)
        return q
    # No bounds (three or more groups, both bands binding): bounds too wide to bind. A
    # cell's shift moves its pooled mean by n / T of it, so the reach scales with T / n;
    # the width doubles until no row touches them (the first try always suffices in the
    # tests).
    n = torch.tensor(n_b, dtype=_F64, device=zd.device).view(C, S)
    ratio = float(((cnt + n) / n.clamp(min=1)).max())
    means = o / cnt.clamp(min=1)
    xmin, xmax = (float(v) for v in torch.aminmax(x))
    span = max(xmax, float(means.max())) - min(xmin, float(means.min())) + 1.0
    width = 4.0 * span * ratio
    while True:
        wide = (xmin - width, xmax + width)
        q, _ = joint_boxed(x, key, C, S, fi._eps_target, wide, o, cnt, use_a, use_b)
        if float(q.min()) > wide[0] and float(q.max()) < wide[1]:
            return q
        width *= 4.0


def _served_rows(fi: FairInference, st: _HostState, q: Tensor, zd: Tensor, key: Tensor,
                 n_b: list[float]) -> None:
    """Statistics of rows computed row by row (bounds active)."""
    CS = fi.num_classes * fi.num_groups
    out_b = torch.bincount(key, weights=q, minlength=CS).tolist()
    diff = q - zd
    sq = float(torch.dot(diff, diff))
    means = [s / n if n else 0.0 for s, n in zip(out_b, n_b)]
    target = None
    if fi._residual:
        target = [lab / n if n else 0.0 for lab, n in zip(_batch_labels(fi, st), n_b)]
    st.served(out_b, sq, _batch_gap(fi, means, n_b, target) if q.shape[0] > 1 else None)


# ------------------------------------------------------------------- decisions
def _serve_decisions(fi: FairInference, st: _HostState, zd: Tensor, key: Tensor,
                     n_b: list[float], large: bool) -> Tensor:
    C, S = fi.num_classes, fi.num_groups
    CS = C * S
    t = fi.threshold
    sl = fi._layout.slices
    dev = zd.device
    # The dual learns from the decisions its own offsets produce: this batch's response to
    # the offsets as they stand comes first.
    nu = st.offsets(st.lam)
    shifted = zd - torch.tensor(nu, dtype=_F64, device=dev).index_select(0, key)
    resp_b = torch.bincount(key, weights=(shifted >= t).to(_F64), minlength=CS).tolist()
    resp = [a + b for a, b in zip(st.vals[sl["response_positive_sum"]], resp_b)]
    st.dual_step(resp, subtract_offsets=False)
    prior_count = torch.tensor(st.count_old, dtype=_F64, device=dev).view(C, S)
    prior_pos = torch.tensor(st.vals[sl["positive_sum"]], dtype=_F64, device=dev).view(C, S)
    eps, bounds = fi.fairness_tolerance, fi.prediction_bounds
    x = zd if large else shifted
    if fi.pooled == "hard":
        solve = decision_joint_project if large else decision_band_project
        q = solve(x, key, C, S, eps, t, prior_count, prior_pos, bounds)
    elif large:
        q = decision_band_project(x, key, C, S, eps, t, bounds=bounds)
    else:
        q = x if bounds is None else x.clamp(*bounds)
    pos_b = torch.bincount(key, weights=(q >= t).to(_F64), minlength=CS).tolist()
    positives = [a + b for a, b in zip(st.vals[sl["positive_sum"]], pos_b)]
    st.vals[sl["positive_sum"]] = positives
    st.vals[sl["response_positive_sum"]] = resp
    out_b = torch.bincount(key, weights=q, minlength=CS).tolist()
    diff = q - zd
    rates = [p / n if n else 0.0 for p, n in zip(pos_b, n_b)]
    gap = _batch_gap(fi, rates, n_b, None) if q.shape[0] > 1 else None
    st.served(out_b, float(torch.dot(diff, diff)), gap)
    return q

