r"""Exact projection of a batch of scores onto a band of positive-decision rates.

Problem
-------
One batch holds scores :math:`z_i` and cell ids ``key_i = k * S + s`` (class :math:`k`,
group :math:`s`). A decision is positive iff :math:`q_i \ge t` (``threshold``). Classes are
independent; inside one class, group :math:`s` has :math:`n_s` batch items and prior counts
:math:`N_s` (samples served) and :math:`P_s` (positives served). With
:math:`T_s = N_s + n_s` and :math:`k_s = \#\{i \in s : q_i \ge t\}` the pooled rate is

.. math:: R_s(k_s) = (P_s + k_s) / T_s,

defined for the groups with :math:`T_s > 0` (the others are ignored). We solve

.. math:: \min_q \sum_i (q_i - z_i)^2 \quad\text{s.t.}\quad
          \max_s R_s - \min_s R_s \le \varepsilon

over the defined groups of each class.

Why the solution has this form
------------------------------
*Only the counts matter.* The constraint depends on :math:`q` only through
:math:`k = (k_s)_s`. Fix :math:`k`; each item either keeps its side of :math:`t` (cost 0,
:math:`q_i = z_i`) or crosses it, at least cost :math:`c_i`: a negative is raised to exactly
:math:`t`, :math:`c_i = (t - z_i)^2`; a positive is lowered to :math:`t^- =`
``nextafter(t, -inf)``, the largest number of ``z``'s dtype below :math:`t`,
:math:`c_i = (z_i - t^-)^2`. With :math:`k_s^0 = \#\{z_i \ge t\}` a group needs at least
:math:`|k_s - k_s^0|` crossings, all in one direction; crossing both ways only adds cost.
So the cheapest way flips the :math:`k_s - k_s^0` negatives with the largest :math:`z`
(or the :math:`k_s^0 - k_s` positives with the smallest :math:`z`), and
:math:`\mathrm{cost}_s(k)` is a prefix sum of increasing flip costs: convex in :math:`k`,
zero at :math:`k_s^0`.

*Windows.* The rates fit the band iff they all lie in one window :math:`[a, a + \varepsilon]`.
For a fixed :math:`a` the groups decouple: group :math:`s` may take any :math:`k` of an integer
interval :math:`[lo_s(a), hi_s(a)]`, and by convexity the cheapest is :math:`k_s^0` clamped to it.
For one :math:`k` the total distance of the rates from the window is convex and piecewise
linear in :math:`a`, kinked only at :math:`a \in \{R_s(k)\} \cup \{R_s(k) - \varepsilon\}`,
so some optimal window (optimal :math:`k` and a window it fits) has :math:`a` among these
breakpoints, over all groups and :math:`k = 0 \dots n_s` (a group absent from the batch
gives its fixed rate). Every candidate is evaluated at once on a (candidates x groups) grid
and the cheapest wins.

*Infeasible priors.* Groups absent from the batch have fixed rates that may already lie more
than :math:`\varepsilon` apart, and a group may be unable to move far enough. Then, for a
window, a group that cannot reach it takes the reachable :math:`k` whose rate is nearest to it
(the cheaper one on a tie), its violation being that distance; we minimise
lexicographically (total violation, cost). For a fixed :math:`k` the total violation
:math:`\min_a \sum_s \mathrm{dist}(R_s(k_s), [a, a + \varepsilon])` is again attained at a
breakpoint, and at that window every group of the optimal :math:`k` is at its nearest
reachable rate, so the same candidates give the lexicographic optimum; when a feasible
:math:`k` exists it is the plain optimum. Cost ties go to the first candidate in a fixed order,
so the result is deterministic.

Floating point: window membership is tested with an absolute tolerance of ``1e-12`` on rates
(rates lie in [0, 1]), so a window end hit exactly is feasible, and violations within
``1e-12`` count as equal; returned rates may thus exceed the band by at most about ``1e-12``.
Rates and costs are computed in float64 whatever the dtype of ``z``.

Complexity per call: :math:`O(N \log N)` for the sorts plus :math:`O((N + CS) S)` for the
:math:`2(N + CS)` candidate windows against the :math:`S` groups of their class, i.e.
:math:`O(N \log N + N S)` when :math:`CS \le N`, with :math:`O((N + CS) S)` memory. The only
host synchronisation is the argument validation (one transfer of a few flags).
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

_RATE_TOL = 1e-12  # absolute tolerance on rates in [0, 1]

__all__ = ["decision_band_project", "decision_joint_project"]


def decision_band_project(
    z: Tensor,
    key: Tensor,
    num_classes: int,
    num_groups: int,
    eps: float,
    threshold: float,
    prior_count: Tensor | None = None,
    prior_pos: Tensor | None = None,
    bounds: tuple[float, float] | None = None,
) -> Tensor:
    r"""Closest scores (squared distance) whose pooled positive rates fit a band of width ``eps``.

    Args:
        z: (N,) floating scores of one batch.
        key: (N,) integer cell ids in ``0 .. num_classes * num_groups - 1``, where
            ``cell = class * num_groups + group``.
        num_classes: number C >= 1 of independent sub-problems (e.g. label classes).
        num_groups: number S >= 2 of groups.
        eps: tolerance >= 0 on the gaps between positive rates (values >= 1 never bind).
        threshold: a decision is positive iff ``q >= threshold`` (compared in ``z``'s dtype).
        prior_count: (C, S) samples already served per cell (default 0).
        prior_pos: (C, S) positive decisions already served per cell (default 0); at most
            ``prior_count``.
        bounds: optional ``(lo, hi)`` with ``lo < threshold <= hi``: every ``q`` lies in it
            (kept items are clipped; a flip costs its distance beyond the clipped value).

    Returns:
        q: (N,) tensor of ``z``'s dtype; ``q_i = z_i`` (clipped to the bounds) except for
        flipped items, which are set to ``threshold`` (raised) or to the largest value below
        it in ``z``'s dtype (lowered).

    See the module docstring for the problem, the argument for exactness and the handling
    of infeasible priors.
    """
    flips, count, pos_prior = _setup(z, key, num_classes, num_groups, eps, threshold,
                                     prior_count, prior_pos, bounds)
    if flips is None:
        return z.clone()
    return flips.apply(_pooled_counts(flips, min(float(eps), 1.0), count, pos_prior))


def decision_joint_project(
    z: Tensor,
    key: Tensor,
    num_classes: int,
    num_groups: int,
    eps: float,
    threshold: float,
    prior_count: Tensor | None = None,
    prior_pos: Tensor | None = None,
    bounds: tuple[float, float] | None = None,
) -> Tensor:
    r"""As :func:`decision_band_project`, and the batch's own positive rates (of the groups
    present in it) also within ``eps`` of each other.

    With the batch rates :math:`k_s / n_s` in a window :math:`[a, a + \varepsilon]` and the
    pooled rates in :math:`[b, b + \varepsilon]`, each group's feasible counts form an
    integer interval (the intersection of the two windows' intervals) and its cheapest count
    is :math:`k_s^0` clamped to it; sliding each window down until a rate meets its lower
    end, or up until one meets its upper end, shows that an optimal pair of windows has
    :math:`a \in \{k/n_s, k/n_s - \varepsilon\}` and :math:`b \in \{R_s(k), R_s(k) -
    \varepsilon\}`. Every pair is evaluated (in chunks of ``a``). Classes where no pair
    fits both bands fall back to the pooled band alone (the pooled promise comes first).
    Cost :math:`O(N^2 S)` time per class, :math:`O(N S)` memory per chunk.
    """
    flips, count, pos_prior = _setup(z, key, num_classes, num_groups, eps, threshold,
                                     prior_count, prior_pos, bounds)
    if flips is None:
        return z.clone()
    eps = min(float(eps), 1.0)
    pooled = _pooled_counts(flips, eps, count, pos_prior)
    joint, ok = _joint_counts(flips, eps, count, pos_prior)
    ok_cell = ok.repeat_interleave(num_groups)
    return flips.apply(torch.where(ok_cell, joint, pooled))


def _setup(z: Tensor, key: Tensor, C: int, S: int, eps: float, threshold: float,
           prior_count: Tensor | None, prior_pos: Tensor | None,
           bounds: tuple[float, float] | None) -> tuple[_Flips | None, Tensor, Tensor]:
    """The checks and the sorted flips shared by both projections (``None`` for no rows)."""
    count, pos_prior = _validate(z, key, C, S, eps, threshold, prior_count, prior_pos, bounds)
    if z.shape[0] == 0:
        return None, count, pos_prior
    return _Flips(z, key, C, S, threshold, bounds), count, pos_prior


class _Flips:
    """The items of a batch sorted by (cell, side, flip cost), with prefix sums of the costs:
    the cheapest way to move a cell from ``k0`` to ``k`` positives, and the rows it gives."""

    def __init__(self, z: Tensor, key: Tensor, C: int, S: int, threshold: float,
                 bounds: tuple[float, float] | None) -> None:
        G = C * S
        dev = z.device
        key = key.to(torch.long)
        self.C, self.S, self.z, self.dev = C, S, z, dev
        self.thr = torch.tensor(threshold, dtype=z.dtype, device=dev)
        self.below = torch.nextafter(self.thr, torch.tensor(-math.inf, dtype=z.dtype,
                                                            device=dev))
        pos = z >= self.thr
        zd = z.to(torch.float64)
        kept = zd if bounds is None else zd.clamp(*bounds)
        self.kept = kept.to(z.dtype)
        # A flip costs its distance to the threshold beyond the kept (clipped) value.
        flip_cost = torch.where(pos, (zd - self.below.to(torch.float64)) ** 2,
                                (self.thr.to(torch.float64) - zd) ** 2) - (kept - zd) ** 2
        # Sort by (cell, side, flip cost): segment 2g holds cell g's negatives, 2g + 1 its
        # positives, each by increasing flip cost.
        seg = key * 2 + pos.to(torch.long)
        by_cost = torch.argsort(flip_cost, stable=True)
        self.order = by_cost[torch.argsort(seg[by_cost], stable=True)]
        self.seg_sorted = seg[self.order]
        self.cell_sorted = key[self.order]
        seg_size = torch.bincount(seg, minlength=2 * G)
        self.seg_start = torch.cumsum(seg_size, 0) - seg_size
        self.neg_start, self.pos_start = self.seg_start[0::2], self.seg_start[1::2]
        self.k0 = seg_size[1::2]  # current positives per cell
        self.n = seg_size[0::2] + self.k0  # batch items per cell
        self.cum = torch.cat([flip_cost.new_zeros(1),
                              torch.cumsum(flip_cost[self.order], 0)])

    def cost_of(self, cell: Tensor, k: Tensor) -> Tensor:
        """Cheapest cost of moving ``cell`` from k0 to ``k`` positives (0 <= k <= n)."""
        up = (k - self.k0[cell]).clamp(min=0)
        down = (self.k0[cell] - k).clamp(min=0)
        ns, ps = self.neg_start[cell], self.pos_start[cell]
        cum = self.cum
        return (cum[ns + up] - cum[ns]) + (cum[ps + down] - cum[ps])

    def apply(self, delta: Tensor) -> Tensor:
        """Rows with ``delta`` (G,) more positives per cell (< 0: fewer), cheapest first."""
        N = self.z.shape[0]
        rank = torch.arange(N, device=self.dev) - self.seg_start[self.seg_sorted]
        is_pos = (self.seg_sorted % 2) == 1
        d = delta[self.cell_sorted]
        raise_it = ~is_pos & (rank < d)
        lower_it = is_pos & (rank < -d)
        q_sorted = torch.where(raise_it, self.thr,
                               torch.where(lower_it, self.below, self.kept[self.order]))
        q = torch.empty_like(self.z)
        q[self.order] = q_sorted
        return q


def _pooled_counts(fl: _Flips, eps: float, count: Tensor, pos_prior: Tensor) -> Tensor:
    """Change of positives per cell (G,) of the pooled-band problem (module docstring)."""
    C, S, dev = fl.C, fl.S, fl.dev
    G = C * S
    N = fl.z.shape[0]
    n, k0, cell_sorted = fl.n, fl.k0, fl.cell_sorted
    total = count + n.to(torch.float64).view(C, S)
    total, pos_prior = total.reshape(G), pos_prior.reshape(G)
    defined = total > 0
    safe_total = torch.where(defined, total, torch.ones_like(total))

    # Candidate windows: for every cell and k = 0..n_g, a = R_g(k) and a = R_g(k) - eps.
    item_k = torch.arange(N, device=dev) - fl.neg_start[cell_sorted] + 1  # 1..n_g per cell
    cells = torch.arange(G, device=dev)
    cand_cell = torch.cat([cell_sorted, cells])
    cand_k = torch.cat([item_k, torch.zeros_like(cells)])
    rate = torch.where(defined[cand_cell],
                       (pos_prior[cand_cell] + cand_k) / safe_total[cand_cell], 0.0)
    a = torch.cat([rate, rate - eps]).unsqueeze(1)  # (J, 1)
    cand_cell = torch.cat([cand_cell, cand_cell])
    cand_class = torch.div(cand_cell, S, rounding_mode="floor")
    J = a.shape[0]

    h = cand_class.unsqueeze(1) * S + torch.arange(S, device=dev)  # (J, S) cells
    Th, Ph, nh, k0h, vh = safe_total[h], pos_prior[h], n[h], k0[h], defined[h]
    lo_f, hi_f = _window(a, eps, Th, Ph, nh)
    lo, hi = lo_f.clamp(min=0), torch.minimum(hi_f, nh)
    inside = lo <= hi
    k_in = torch.where(inside, torch.maximum(lo, torch.minimum(k0h, hi)), k0h)
    # Nearest reachable counts just below / just above the window (used when it is missed).
    k_dn = torch.minimum((lo_f - 1).clamp(min=0), nh)
    k_up = torch.minimum((hi_f + 1).clamp(min=0), nh)

    def dist(k: Tensor) -> Tensor:
        r = (Ph + k) / Th
        return (a - r).clamp(min=0) + (r - a - eps).clamp(min=0)

    d_dn, d_up = dist(k_dn), dist(k_up)
    c_dn, c_up = fl.cost_of(h, k_dn), fl.cost_of(h, k_up)
    take_dn = (d_dn < d_up - _RATE_TOL) | ((d_dn <= d_up + _RATE_TOL) & (c_dn <= c_up))
    k_sel = torch.where(inside, k_in, torch.where(take_dn, k_dn, k_up))
    gap = torch.where(inside | ~vh, 0.0, torch.where(take_dn, d_dn, d_up))
    cost = torch.where(inside, fl.cost_of(h, k_in), torch.where(take_dn, c_dn, c_up))

    viol = torch.where(defined[cand_cell], gap.sum(1), math.inf)
    cost = cost.sum(1)
    best_viol = torch.full((C,), math.inf, dtype=torch.float64, device=dev)
    best_viol = best_viol.scatter_reduce(0, cand_class, viol, "amin")
    ok = viol <= best_viol[cand_class] + _RATE_TOL
    cost = torch.where(ok, cost, math.inf)
    best_cost = torch.full_like(best_viol, math.inf).scatter_reduce(0, cand_class, cost, "amin")
    winner = ok & (cost <= best_cost[cand_class])
    idx = torch.where(winner, torch.arange(J, device=dev), J)
    pick = torch.full((C,), J, dtype=torch.long, device=dev)
    pick = pick.scatter_reduce(0, cand_class, idx, "amin")  # every class has a winner
    return k_sel[pick].reshape(G) - k0  # > 0: raise negatives, < 0: lower positives


def _window(a: Tensor, eps: float, T: Tensor, P: Tensor, n: Tensor,
            active: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Integer counts k with (P + k) / T in [a, a + eps] (within the rate tolerance), as
    [lo, hi] clamped to [-1, n + 1] (empty when lo > hi); [0, n] where ``active`` is False."""
    tol = _RATE_TOL * T
    lo_f = torch.ceil(a * T - P - tol)
    hi_f = torch.floor((a + eps) * T - P + tol)
    nf = n.to(torch.float64)
    lo_f = torch.minimum(lo_f.clamp(min=-1.0), nf + 1).to(torch.long)
    hi_f = torch.minimum(hi_f.clamp(min=-1.0), nf + 1).to(torch.long)
    if active is not None:
        lo_f, hi_f = torch.where(active, lo_f, 0), torch.where(active, hi_f, n)
    return lo_f, hi_f


_CHUNK = 1 << 20  # window pairs x groups evaluated at once


def _joint_counts(fl: _Flips, eps: float, count: Tensor, pos_prior: Tensor
                  ) -> tuple[Tensor, Tensor]:
    """Change of positives per cell (G,) meeting both bands, and per class whether any pair
    of windows fits (C,) (see :func:`decision_joint_project`)."""
    C, S, dev = fl.C, fl.S, fl.dev
    n, k0 = fl.n.view(C, S), fl.k0.view(C, S)
    total = (count + n.to(torch.float64)).view(C, S)
    pos_prior = pos_prior.view(C, S)
    delta = torch.zeros(C, S, dtype=torch.long, device=dev)
    found = torch.zeros(C, dtype=torch.bool, device=dev)
    for c in range(C):
        present = n[c] > 0
        if int(present.sum()) < 2:
            continue  # no batch band: the pooled problem alone is the answer
        defined = total[c] > 0
        nf = n[c].to(torch.float64)
        T = torch.where(defined, total[c], 1.0)
        ks = [torch.arange(int(m) + 1, device=dev, dtype=torch.float64) for m in n[c].tolist()]
        a_rates = torch.cat([k / nf[s] for s, k in enumerate(ks) if bool(present[s])])
        b_rates = torch.cat([(pos_prior[c, s] + k) / T[s] for s, k in enumerate(ks)
                             if bool(defined[s])])
        a_all = torch.cat([a_rates, a_rates - eps])
        b_all = torch.cat([b_rates, b_rates - eps]).view(1, -1, 1)  # (1, Jb, 1)
        cells = c * S + torch.arange(S, device=dev)
        step = max(1, _CHUNK // (b_all.shape[1] * S))
        best_cost, best_k = math.inf, None
        for i in range(0, a_all.numel(), step):
            a = a_all[i:i + step].view(-1, 1, 1)  # (Ja, 1, 1)
            # A group outside a band (absent from the batch, or never served) is free in it.
            lo_a, hi_a = _window(a, eps, nf.clamp(min=1), torch.zeros_like(nf), n[c], present)
            lo_b, hi_b = _window(b_all, eps, T, pos_prior[c], n[c], defined)
            lo = torch.maximum(torch.maximum(lo_a, lo_b), torch.zeros_like(lo_a))
            hi = torch.minimum(torch.minimum(hi_a, hi_b), n[c])
            # (Ja, Jb, S); kept within 0..n where the pair is infeasible (masked below).
            k = torch.minimum(torch.maximum(lo, torch.minimum(k0[c], hi)), n[c])
            cost = fl.cost_of(cells.expand_as(k), k).sum(-1)
            cost = torch.where((lo <= hi).all(-1), cost, math.inf)
            j = int(cost.argmin())
            c_min = float(cost.view(-1)[j])
            if c_min < best_cost:
                best_cost, best_k = c_min, k.view(-1, S)[j]
        if best_k is not None:
            delta[c] = best_k - k0[c]
            found[c] = True
    return delta.view(-1), found


def _validate(
    z: Tensor,
    key: Tensor,
    num_classes: int,
    num_groups: int,
    eps: float,
    threshold: float,
    prior_count: Tensor | None,
    prior_pos: Tensor | None,
    bounds: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Check the arguments; return the priors as (C, S) float64 tensors on ``z``'s device."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 2:
        raise ValueError(f"num_groups must be an int >= 2, got {num_groups!r}")
    if isinstance(eps, bool) or not isinstance(eps, Real) or not eps >= 0:
        raise ValueError(f"eps must be a real number >= 0, got {eps!r}")
    if (isinstance(threshold, bool) or not isinstance(threshold, Real)
            or not math.isfinite(threshold)):
        raise ValueError(f"threshold must be a finite real number, got {threshold!r}")
    if bounds is not None:
        try:
            lo, hi = (float(v) for v in bounds)
        except (TypeError, ValueError):
            raise ValueError(f"bounds: expected a pair (lo, hi) of numbers, got {bounds!r}"
                             ) from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < threshold <= hi):
            raise ValueError(f"bounds: expected finite (lo, hi) with lo < threshold <= hi "
                             f"(threshold {threshold}), got {bounds!r}")
    if not isinstance(z, Tensor) or not z.is_floating_point() or z.dim() != 1:
        got = f"{z.dtype} tensor of shape {tuple(z.shape)}" if isinstance(z, Tensor) else (
            type(z).__name__)
        raise ValueError(f"z must be a 1-D floating tensor, got {got}")
    if (not isinstance(key, Tensor) or key.dtype == torch.bool or key.is_floating_point()
            or key.is_complex()):
        got = f"{key.dtype} tensor" if isinstance(key, Tensor) else type(key).__name__
        raise ValueError(f"key must be an integer tensor, got {got}")
    if key.shape != z.shape:
        raise ValueError(f"key must have the shape of z {tuple(z.shape)}, got {tuple(key.shape)}")
    if key.device != z.device:
        raise ValueError(f"key must be on z's device {z.device}, got {key.device}")
    C, S = num_classes, num_groups
    priors = []
    for name, prior in (("prior_count", prior_count), ("prior_pos", prior_pos)):
        if prior is None:
            priors.append(torch.zeros(C, S, dtype=torch.float64, device=z.device))
            continue
        if not isinstance(prior, Tensor) or prior.dtype == torch.bool or prior.is_complex():
            got = f"{prior.dtype} tensor" if isinstance(prior, Tensor) else type(prior).__name__
            raise ValueError(f"{name} must be a real tensor of shape ({C}, {S}), got {got}")
        if tuple(prior.shape) != (C, S):
            raise ValueError(f"{name} must have shape (num_classes, num_groups) = ({C}, {S}), "
                             f"got {tuple(prior.shape)}")
        priors.append(prior.to(device=z.device, dtype=torch.float64))
    count, pos = priors

    # Data-dependent checks, gathered into one host transfer.
    G = C * S
    if z.numel():
        key_lo, key_hi = key.min(), key.max()
        bad_key = (key_lo < 0) | (key_hi >= G)
        bad_z = ~torch.isfinite(z).all()
    else:
        bad_key = bad_z = torch.tensor(False, device=z.device)
    flags = torch.stack([
        bad_key,
        bad_z,
        ~(torch.isfinite(count).all() & (count >= 0).all()),
        ~(torch.isfinite(pos).all() & (pos >= 0).all()),
        (pos > count).any(),
    ]).tolist()
    if flags[0]:
        raise ValueError(f"key must hold cell ids in [0, num_classes * num_groups - 1] = "
                         f"[0, {G - 1}], got values in [{int(key_lo)}, {int(key_hi)}]")
    if flags[1]:
        raise ValueError(f"z must be finite, got {int((~torch.isfinite(z)).sum())} "
                         "non-finite values")
    if flags[2]:
        raise ValueError(f"prior_count must be finite and >= 0, got {prior_count}")
    if flags[3]:
        raise ValueError(f"prior_pos must be finite and >= 0, got {prior_pos}")
    if flags[4]:
        raise ValueError(f"prior_pos must be <= prior_count elementwise, got prior_pos="
                         f"{prior_pos} and prior_count={prior_count}")
    return count, pos
