r"""The serving step in tensor operations on the state's device, without host reads.

The host step (:mod:`._serving`) reads the few per-cell numbers of the state once per call and
branches in Python; on an accelerator that read waits for the device. For the common case —
mean-type metrics (``"mean_pred"``, ``"equalized_odds"``), two groups, no prediction bounds
— the maths need no branch on values: per label class the projection is the two-variable QP
of :func:`~.._projection.streaming.pair_qp`, whose optimum is the cheapest feasible point of
a fixed list of candidates (the origin, the projection onto each violated slab's nearer line,
the four intersections of the two slabs' lines), so every candidate is computed and the best
one selected with ``torch.where``. A class with one group in the batch clamps that group's
pooled mean into the other's band (the one-row case is the same formula). The dual step,
the offsets and the statistics are the same formulas as the host step's, on (C, 2) tensors.

Checks: with ``check_finite=True`` (default) one host read per call, of one flag computed at
the end (finite scores, ids in range, labels valid, running sums finite); on failure the
host checks run to name the problem, and nothing is written. With ``check_finite=False``
there is no read at all: rows with a non-finite score, an id out of range or an invalid
label are *missing* — served as NaN, counted nowhere — and a state that would overflow is
not written.

Bounds, three or more groups, ``"positive_rate"`` and ``"mean_residual"`` search or sort with
data-dependent sizes; they run on the host step (with its reads) on every device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ._checks import check_batch, check_values

if TYPE_CHECKING:
    from .wrapper import FairInference

__all__ = ["serve", "supports"]

_F64 = torch.float64
_TOL = 1e-12  # pair_qp's feasibility tolerance, relative to (1 + |v|)


def supports(fi: FairInference) -> bool:
    """Whether the step of this wrapper runs here (its settings, not the batch)."""
    return (fi.metric in ("mean_pred", "equalized_odds") and fi.num_groups == 2
            and fi.prediction_bounds is None)


def serve(fi: FairInference, scores: Tensor, groups: Tensor, labels: Tensor | None) -> Tensor:
    """One serving step in tensor operations on ``scores``' device (the state's)."""
    z, g, y = check_batch(fi, scores, groups, labels, read=False)
    flat = fi._flat
    if flat.device != z.device:
        raise ValueError(f"scores: expected a tensor on the wrapper's device {flat.device} "
                         f"(move the wrapper with .to()), got {z.device}")
    C, N = fi.num_classes, z.shape[0]
    zd = z.to(_F64)
    # Rows that count: finite score, id in range (whole numbers), valid label.
    gi = g.long()
    valid = torch.isfinite(zd) & (gi >= 0) & (gi < 2)
    if g.is_floating_point():
        valid &= g == g.round()
    key = gi.clamp(0, 1)
    if C == 2:
        yv = y if y is not None else zd.new_zeros(N)
        valid &= (yv == 0) | (yv == 1)
        key = key + 2 * (yv == 1).long()
    w = valid.to(_F64)
    zc = torch.where(valid, zd, 0.0)
    n_b = zd.new_zeros(2 * C).index_add_(0, key, w).view(C, 2)
    sum_b = zd.new_zeros(2 * C).index_add_(0, key, zc).view(C, 2)

    lay = fi._layout
    new = flat.clone()

    def cell(name: str) -> Tensor:
        return lay.view(new, name).view(C, 2)

    def scalar(name: str) -> Tensor:
        return new[lay.slices[name]]

    count, raw, out = cell("count"), cell("raw_sum"), cell("out_sum")
    lam = lay.view(new, "multipliers").view(C, 2)  # pairs (0, 1) and (1, 0) per class
    calib, p_count, p_sum = cell("calibration_offsets"), cell("prior_count"), cell("prior_sum")
    steps = scalar("dual_steps")

    count_new = count + n_b
    raw_new = raw + sum_b
    total = count_new.sum(-1, keepdim=True)
    running = torch.where(total > 0, count_new / torch.where(total > 0, total, 1.0), 0.0)
    pi = torch.where(scalar("fixed_shares") > 0, cell("group_shares"), running)

    def offsets(mult: Tensor) -> Tensor:
        diff = mult[:, 0] - mult[:, 1]
        return calib + torch.stack([diff * pi[:, 1], -diff * pi[:, 0]], -1)

    # The dual step on the pooled constraints of the offset raw means (prior included).
    t = steps + 1
    eta = fi.eta_0 / t.sqrt()
    eps = fi.fairness_tolerance
    seen_d = count_new + p_count
    r = (raw_new + p_sum) / torch.where(seen_d > 0, seen_d, 1.0) - offsets(lam)
    both_d = (seen_d > 0).all(-1)
    step = torch.stack([r[:, 0] - r[:, 1] - eps, r[:, 1] - r[:, 0] - eps], -1)
    lam_new = torch.where(both_d.unsqueeze(-1), (lam + eta * step).clamp(min=0.0), lam)

    large = N >= fi.b_tau
    base = torch.zeros_like(n_b) if large else -offsets(lam_new)
    present = n_b > 0
    mean_b = torch.where(present, sum_b / torch.where(present, n_b, 1.0) + base, 0.0)
    d = _shifts(fi, n_b, mean_b, out, count_new, present,
                use_a=(large or fi.per_batch), use_b=fi.pooled == "hard")

    shift = base + d
    q = z + shift.view(-1).to(z.dtype).index_select(0, key)
    q = torch.where(valid, q, torch.nan)
    out_b = sum_b + n_b * shift
    means = mean_b + d
    both = present.all(-1)
    gap = torch.where(both, (means[:, 0] - means[:, 1]).abs(), -torch.inf).amax()
    defined = both.any()
    n_rows = n_b.sum()

    count.copy_(count_new)
    raw.copy_(raw_new)
    out.add_(out_b)
    lam.copy_(lam_new)
    steps.copy_(t)
    lm = scalar("lambda_max")
    lm.copy_(torch.maximum(lm, lam_new.max()))
    scalar("squared_adjustment").add_((n_b * shift * shift).sum())
    scalar("cumulative_samples").add_(n_rows)
    scalar("num_batches").add_(1.0)
    g_w = torch.where(defined, n_rows, 0.0)
    g_v = torch.where(defined, gap, 0.0)
    scalar("weighted_gap_sum").add_(g_w * g_v)
    scalar("weighted_gap_samples").add_(g_w)
    scalar("cumulative_weighted_violation").add_(g_w * (g_v - eps))

    # Squares that overflow are refused by the host step too (|score| below about 1e154).
    finite = torch.isfinite(new).all() & torch.isfinite(torch.dot(zc, zc))
    if fi.check_finite:
        # The one host read of a call: every row valid and the new state finite.
        ok = valid.all() & finite
        if y is not None and C == 1:  # labels are checked (and ignored) here
            ok &= torch.isfinite(torch.dot(y, y))
        if not bool(ok):
            check_values(fi, zd, *check_batch(fi, scores, groups, labels)[1:])
            raise ValueError("scores: the running sums would overflow float64 (scores or "
                             "their adjustments are too large); nothing was changed")
        flat.copy_(new)
    else:
        flat.copy_(torch.where(finite, new, flat))
    fi._np = None
    return q.to(scores.dtype).view(scores.shape)


def _shifts(fi: FairInference, n_b: Tensor, mean_b: Tensor, out: Tensor, count_new: Tensor,
            present: Tensor, use_a: bool, use_b: bool) -> Tensor:
    """Per class (C, 2) the cell shifts of the projection onto the batch band (A) and the
    pooled band (B): :func:`~.._projection.streaming.pair_qp` with candidates in tensors."""
    eps = fi._eps_target
    seen = count_new > 0
    T = torch.where(seen, count_new, 1.0)
    pooled = torch.where(seen, (out + n_b * mean_b) / T, 0.0)
    both_p, both_s = present.all(-1), seen.all(-1)
    a_on = both_p & use_a
    b_on = both_s & use_b
    zero = torch.zeros_like(n_b)

    # One group in the batch: its pooled mean into the other's band (B only).
    one = present.sum(-1) == 1
    other = pooled.flip(-1)
    p = torch.minimum(torch.maximum(pooled, other - eps), other + eps)
    d_one = torch.where(present, (p - pooled) * T / torch.where(present, n_b, 1.0), 0.0)
    d_one = torch.where((one & b_on).unsqueeze(-1), d_one, zero)

    # Both groups: min n0 d0^2 + n1 d1^2 s.t. |a . d + v| <= w for the slabs that are on.
    w0, w1 = n_b[:, 0].clamp(min=1.0), n_b[:, 1].clamp(min=1.0)
    one_ = torch.ones_like(w0)
    slabs = [(-one_, one_, mean_b[:, 1] - mean_b[:, 0], a_on),
             (-n_b[:, 0] / T[:, 0], n_b[:, 1] / T[:, 1], pooled[:, 1] - pooled[:, 0], b_on)]

    def feasible(d0: Tensor, d1: Tensor) -> Tensor:
        ok = torch.ones_like(w0, dtype=torch.bool)
        for a0, a1, v, on in slabs:
            ok &= ~on | ((a0 * d0 + a1 * d1 + v).abs() <= eps + _TOL * (1.0 + v.abs()))
        return ok

    def onto(a0: Tensor, a1: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        den = a0 * a0 / w0 + a1 * a1 / w1
        return r * a0 / w0 / den, r * a1 / w1 / den

    best0, best1 = torch.zeros_like(w0), torch.zeros_like(w0)
    best = torch.where(feasible(best0, best1), 0.0, torch.inf)
    cands = []
    for a0, a1, v, on in slabs:
        d0, d1 = onto(a0, a1, torch.copysign(torch.full_like(v, eps), v) - v)
        cands.append((d0, d1, on & (v.abs() > eps)))
    (a0, a1, v, _), (b0, b1, u, _) = slabs
    det = a0 * b1 - a1 * b0
    safe = torch.where(det != 0, det, 1.0)
    for ra in (eps - v, -eps - v):
        for rb in (eps - u, -eps - u):
            cands.append(((ra * b1 - rb * a1) / safe, (a0 * rb - b0 * ra) / safe,
                          a_on & b_on & (det != 0)))
    for d0, d1, allowed in cands:
        cost = w0 * d0 * d0 + w1 * d1 * d1
        take = allowed & feasible(d0, d1) & (cost < best)
        best = torch.where(take, cost, best)
        best0, best1 = torch.where(take, d0, best0), torch.where(take, d1, best1)
    # Nothing feasible (a pool that cannot be brought back): the last slab that is on alone.
    fb0, fb1 = torch.zeros_like(w0), torch.zeros_like(w0)
    for a0, a1, v, on in slabs:
        r = torch.where(v.abs() > eps, torch.copysign(torch.full_like(v, eps), v) - v, 0.0)
        d0, d1 = onto(a0, a1, r)
        fb0, fb1 = torch.where(on, d0, fb0), torch.where(on, d1, fb1)
    none = torch.isinf(best)
    best0, best1 = torch.where(none, fb0, best0), torch.where(none, fb1, best1)
    d_two = torch.stack([best0, best1], -1)
    d_two = torch.where((both_p & (a_on | b_on)).unsqueeze(-1), d_two, zero)
    return torch.where(one.unsqueeze(-1), d_one, d_two)
