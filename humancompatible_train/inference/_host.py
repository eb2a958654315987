r"""The serving state of :class:`~humancompatible_train.inference.FairInference` as Python
floats for one host step: read once (``flat.tolist()``), updated (running sums, the dual
step, the offsets, the statistics), checked, and written back once, so that an error leaves
the state as it was. The formulas are in the wrapper's docstring."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .wrapper import FairInference

__all__ = ["_HostState"]


class _HostState:
    """The state as Python floats for one step, with the batch's cell statistics."""

    def __init__(self, fi: FairInference) -> None:
        self.fi = fi
        self.vals = fi._flat.tolist()
        sl = fi._layout.slices
        v = self.vals
        self.count = v[sl["count"]]
        self.raw = v[sl["raw_sum"]]
        self.out = v[sl["out_sum"]]
        self.lam = v[sl["multipliers"]]
        self.calib = v[sl["calibration_offsets"]]
        self.prior_count = v[sl["prior_count"]]
        self.prior_sum = v[sl["prior_sum"]]
        self.fixed_shares = v[sl["fixed_shares"].start] > 0
        self.shares_fixed = v[sl["group_shares"]]
        self.steps = v[sl["dual_steps"].start]
        self.shares = self._shares()

    # ---------------------------------------------------------------- running sums
    def add_batch(self, n_b: list[float], sum_b: list[float], label_b: list[float] | None
                  ) -> None:
        fi = self.fi
        self.count_old = self.count
        self.count = [a + b for a, b in zip(self.count, n_b)]
        self.raw = [a + b for a, b in zip(self.raw, sum_b)]
        if label_b is not None:
            sl = fi._layout.slices["label_sum"]
            self.labels = [a + b for a, b in zip(self.vals[sl], label_b)]
        self.shares = self._shares()

    def _shares(self) -> list[float]:
        if self.fixed_shares:
            return self.shares_fixed
        C, S = self.fi.num_classes, self.fi.num_groups
        out = []
        for k in range(C):
            row = self.count[k * S:(k + 1) * S]
            total = sum(row)
            out += [c / total if total > 0 else 0.0 for c in row]
        return out

    # --------------------------------------------------------------------- the dual
    def offsets(self, lam: list[float]) -> list[float]:
        r""":math:`\nu_c` = calibration offset + the multipliers' offset."""
        fi = self.fi
        nu = list(self.calib)
        if fi._residual:
            for s in range(fi.num_groups):
                nu[s] += lam[2 * s] - lam[2 * s + 1]
            return nu
        S, P, pi = fi.num_groups, len(fi._pairs), self.shares
        for k in range(fi.num_classes):
            base = k * S
            for p, (g, h) in enumerate(fi._pairs):
                lv = lam[k * P + p]
                if lv:
                    nu[base + g] += lv * pi[base + h]
                    nu[base + h] -= lv * pi[base + g]
        return nu

    def dual_step(self, response_sums: list[float], subtract_offsets: bool) -> None:
        """One projected ascent step on the pooled constraints of the primal response."""
        fi = self.fi
        t = self.steps + 1
        eta = fi.eta_0 / math.sqrt(t)
        eps = fi.fairness_tolerance
        nu = self.offsets(self.lam) if subtract_offsets else None
        resp: list[float | None] = []
        for c, (a, n) in enumerate(zip(response_sums, self.count)):
            total = n + self.prior_count[c]
            if total > 0:
                r = (a + self.prior_sum[c]) / total
                resp.append(r - nu[c] if nu is not None else r)
            else:
                resp.append(None)  # not seen: its constraints sit out this step
        lam = list(self.lam)
        if fi._residual:
            prior_labels = self.vals[fi._layout.slices["prior_label_sum"]]
            for s, r in enumerate(resp):
                if r is None:
                    continue
                ybar = (self.labels[s] + prior_labels[s]) / (self.count[s] + self.prior_count[s])
                d = r - ybar
                lam[2 * s] = max(0.0, lam[2 * s] + eta * (d - eps))
                lam[2 * s + 1] = max(0.0, lam[2 * s + 1] + eta * (-d - eps))
        else:
            S, P = fi.num_groups, len(fi._pairs)
            for k in range(fi.num_classes):
                for p, (g, h) in enumerate(fi._pairs):
                    rg, rh = resp[k * S + g], resp[k * S + h]
                    if rg is not None and rh is not None:
                        i = k * P + p
                        lam[i] = max(0.0, lam[i] + eta * (rg - rh - eps))
        self.lam = lam
        self.steps = t

    # ---------------------------------------------------------------- statistics
    def served(self, out_b: list[float], sq_adj: float, gap: float | None) -> None:
        """The served batch: per-cell sums, squared adjustment, its gap (None: undefined)."""
        self.out = [a + b for a, b in zip(self.out, out_b)]
        self.sq_adj = sq_adj
        self.gap = gap

    def finish(self, N: int) -> None:
        fi = self.fi
        sl = fi._layout.slices
        v = self.vals
        v[sl["count"]] = self.count
        v[sl["raw_sum"]] = self.raw
        v[sl["out_sum"]] = self.out
        v[sl["multipliers"]] = self.lam
        if fi._residual:
            v[sl["label_sum"]] = self.labels
        i = sl["dual_steps"].start
        v[i] = self.steps
        lam_max = sl["lambda_max"].start
        v[lam_max] = max([v[lam_max], *self.lam])
        v[sl["squared_adjustment"].start] += self.sq_adj
        v[sl["cumulative_samples"].start] += N
        v[sl["num_batches"].start] += 1
        if self.gap is not None:
            v[sl["weighted_gap_sum"].start] += N * self.gap
            v[sl["weighted_gap_samples"].start] += N
            v[sl["cumulative_weighted_violation"].start] += N * (self.gap - fi.fairness_tolerance)

    def commit(self) -> None:
        v = self.vals
        if not math.isfinite(sum(v)) and not all(map(math.isfinite, v)):
            raise ValueError("scores: the running sums would overflow float64 (scores or their "
                             "adjustments are too large); nothing was changed")
        self.fi._write_flat(v)
