r"""Decisions with bounded parity: per-group thresholds fitted on validation data.

A model trained so that the *probabilities* meet demographic parity can still make
*decisions* (:math:`p \ge 0.5`) whose positive rates differ by far more than
:math:`\varepsilon`: the constraint moves the mean score of each group, not how much of each
group lies above the threshold. Constraining the decision rates during training (proxy
constraints) works on average but swings from epoch to epoch, since a rate of thresholded
scores jumps whenever scores cross the threshold.

:class:`GroupThresholds` instead fixes the decisions after training: one threshold per
group, chosen on validation data to maximise accuracy subject to

.. math:: \max_g r_g - \min_g r_g \le \varepsilon - \delta,
    \qquad r_g = \frac{|\{i \in g : p_i \ge t_g\}|}{|g|},

(Hardt, Price & Srebro, NeurIPS 2016, post-processing for demographic parity; for scores
that are calibrated within groups, group thresholds are the optimal fair decisions,
Corbett-Davies, Pierson, Feller, Goel & Huq, KDD 2017). The search is exact: each group's
accuracy as a function of its number of positive decisions comes from cumulative sums over
its sorted scores, and every band :math:`[a, a + \varepsilon - \delta]` of rates that can
bind is tried, with a range-maximum table per group (:math:`O(n \log n)`).

The thresholds are then fixed numbers, so single predictions and streams get the same
decisions; the gap on new data differs from the validation gap by sampling error only,
which the margin :math:`\delta` absorbs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._validation import check_int, check_real, fail

__all__ = ["GroupThresholds"]


def _range_max_table(values: Tensor) -> list[Tensor]:
    """Sparse table: level j holds max(values[i : i + 2**j])."""
    table = [values]
    width = 1
    while 2 * width <= values.numel():
        prev = table[-1]
        table.append(torch.maximum(prev[:-width], prev[width:]))
        width *= 2
    return table


def _range_max(table: list[Tensor], lo: Tensor, hi: Tensor) -> Tensor:
    """max(values[lo..hi]) per query (inclusive, lo <= hi) from the sparse table."""
    level = torch.floor(torch.log2((hi - lo + 1).double())).long()
    best = torch.full(lo.shape, -math.inf, dtype=table[0].dtype)
    for j, row in enumerate(table):
        sel = level == j
        if bool(sel.any()):
            best[sel] = torch.maximum(row[lo[sel]], row[hi[sel] - (1 << j) + 1])
    return best


class GroupThresholds:
    r"""Per-group decision thresholds that meet positive-rate parity on validation data.

    Args:
        eps: the tolerance :math:`\varepsilon` on the largest difference of positive rates.
        margin: :math:`\delta \ge 0`; the thresholds meet :math:`\varepsilon - \delta` on the
            data they are fitted on, to leave room for sampling error on new data.

    ``fit(scores, groups, labels)`` chooses the thresholds (scores: probabilities or any
    score where higher means positive; groups: ids ``0..S-1``; labels: 0/1), ``decide(scores,
    groups)`` applies them. With ``labels=None`` the thresholds change as few decisions of the
    default threshold as possible instead of maximising accuracy.
    """

    def __init__(self, eps: float = 0.05, *, margin: float = 0.0, threshold: float = 0.5
                 ) -> None:
        self.eps = check_real("eps", eps, low=0.0)
        self.margin = check_real("margin", margin, low=0.0)
        self.threshold = check_real("threshold", threshold, finite=False)
        self.thresholds: Tensor | None = None
        self.rates: Tensor | None = None

    def __repr__(self) -> str:
        t = None if self.thresholds is None else [round(v, 4) for v in self.thresholds.tolist()]
        return f"GroupThresholds(eps={self.eps}, margin={self.margin}, thresholds={t})"

    @staticmethod
    def _check(scores: Any, groups: Any, labels: Any = None
               ) -> tuple[Tensor, Tensor, Tensor | None]:
        if not isinstance(scores, Tensor) or not scores.is_floating_point():
            raise fail("scores", "a floating tensor", type(scores).__name__)
        s = scores.detach().reshape(-1).double().cpu()
        if not bool(torch.isfinite(s).all()):
            raise fail("scores", "finite values (NaN is never fair)", "non-finite scores")
        if not isinstance(groups, Tensor) or groups.is_floating_point() or groups.is_complex():
            raise fail("groups", "an integer tensor of group ids", getattr(groups, "dtype",
                                                                           type(groups)))
        g = groups.detach().reshape(-1).long().cpu()
        if g.numel() != s.numel():
            raise fail("groups", f"{s.numel()} ids (one per score)", g.numel())
        if g.numel() and int(g.min()) < 0:
            raise fail("groups", "ids >= 0", int(g.min()))
        y = None
        if labels is not None:
            if not isinstance(labels, Tensor):
                raise fail("labels", "a tensor of 0/1 labels or None", type(labels).__name__)
            y = labels.detach().reshape(-1).double().cpu()
            if y.numel() != s.numel():
                raise fail("labels", f"{s.numel()} labels (one per score)", y.numel())
            if not bool(((y == 0) | (y == 1)).all()):
                raise fail("labels", "0/1 labels", "other values")
        return s, g, y

    def fit(self, scores: Tensor, groups: Tensor, labels: Tensor | None = None
            ) -> GroupThresholds:
        """Choose one threshold per group (ids ``0..S-1``, every group present)."""
        s, g, y = self._check(scores, groups, labels)
        num = int(g.max()) + 1 if g.numel() else 0
        if num < 2:
            raise fail("groups", "at least two groups", num)
        counts = torch.bincount(g, minlength=num)
        if bool((counts == 0).any()):
            raise fail("groups", "every id 0..S-1 present",
                       f"absent ids {(counts == 0).nonzero().flatten().tolist()}")
        band = max(0.0, self.eps - self.margin)
        # Per group: scores sorted descending; value(k) of making the top k positive.
        order_scores, values = [], []
        for gid in range(num):
            sg = s[g == gid]
            order = torch.argsort(sg, descending=True, stable=True)
            sg = sg[order]
            if y is not None:
                yg = y[g == gid][order]
                pos = torch.cat([torch.zeros(1, dtype=torch.float64), yg.cumsum(0)])
                neg_after = (1 - yg).sum() - torch.cat(
                    [torch.zeros(1, dtype=torch.float64), (1 - yg).cumsum(0)])
                value = pos + neg_after  # correct decisions with the top k positive
            else:
                base = (sg >= self.threshold).double()
                agree_pos = torch.cat([torch.zeros(1, dtype=torch.float64), base.cumsum(0)])
                agree_neg = (1 - base).sum() - torch.cat(
                    [torch.zeros(1, dtype=torch.float64), (1 - base).cumsum(0)])
                value = agree_pos + agree_neg  # decisions kept from the default threshold
            # A threshold cannot split tied scores: only counts at a strict drop are decisions.
            cut = torch.ones(sg.numel() + 1, dtype=torch.bool)
            cut[1:-1] = sg[:-1] > sg[1:]
            order_scores.append(sg)
            values.append(torch.where(cut, value, torch.full_like(value, -math.inf)))
        # Candidate lower ends a of the band [a, a + band]: every achievable rate, and every
        # achievable rate minus the band; the optimum has some group at an end of the band.
        rates = torch.cat([torch.arange(int(n) + 1, dtype=torch.float64) / int(n)
                           for n in counts])
        lows = torch.unique(torch.cat([rates, rates - band]).clamp(0.0, 1.0))
        total = torch.zeros(lows.numel(), dtype=torch.float64)
        feasible = torch.ones(lows.numel(), dtype=torch.bool)
        bounds = []
        tiny = 1e-12
        for gid in range(num):
            n = int(counts[gid])
            lo = torch.ceil(lows * n - tiny).long().clamp(0, n)
            hi = torch.floor((lows + band) * n + tiny).long().clamp(0, n)
            ok = lo <= hi
            feasible &= ok
            best = _range_max(_range_max_table(values[gid]), torch.minimum(lo, hi), hi)
            total += torch.where(ok, best, torch.zeros_like(best))
            bounds.append((lo, hi))
        total[~feasible | torch.isinf(total)] = -math.inf
        pick = int(torch.argmax(total))
        thresholds, rates_out = [], []
        for gid in range(num):
            lo, hi = int(bounds[gid][0][pick]), int(bounds[gid][1][pick])
            k = lo + int(torch.argmax(values[gid][lo:hi + 1]))  # the first best count
            sg, n = order_scores[gid], int(counts[gid])
            if k == 0:
                t = math.inf
            elif k == n:
                t = -math.inf
            else:
                t = float(sg[k - 1] + sg[k]) / 2
            thresholds.append(t)
            rates_out.append(k / n)
        self.thresholds = torch.tensor(thresholds, dtype=torch.float64)
        self.rates = torch.tensor(rates_out, dtype=torch.float64)
        return self

    def decide(self, scores: Tensor, groups: Tensor) -> Tensor:
        """Boolean decisions :math:`p_i \\ge t_{g(i)}`, on the device of ``scores``."""
        if self.thresholds is None:
            raise ValueError("GroupThresholds: call fit(...) before decide(...)")
        s, g, _ = self._check(scores, groups)
        if g.numel() and int(g.max()) >= self.thresholds.numel():
            raise fail("groups", f"ids < {self.thresholds.numel()} (the fitted groups)",
                       int(g.max()))
        return (s >= self.thresholds[g]).to(scores.device)

    def state_dict(self) -> dict[str, Any]:
        return {"eps": self.eps, "margin": self.margin, "threshold": self.threshold,
                "thresholds": None if self.thresholds is None else self.thresholds.clone(),
                "rates": None if self.rates is None else self.rates.clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        try:
            eps, margin, thr = state_dict["eps"], state_dict["margin"], state_dict["threshold"]
            thresholds, rates = state_dict["thresholds"], state_dict["rates"]
        except (KeyError, TypeError):
            raise fail("state_dict", "a dict from GroupThresholds.state_dict()",
                       type(state_dict).__name__) from None
        eps = check_real("state_dict['eps']", eps, low=0.0)
        margin = check_real("state_dict['margin']", margin, low=0.0)
        thr = check_real("state_dict['threshold']", thr, finite=False)
        if (thresholds is None) != (rates is None):
            raise fail("state_dict", "thresholds and rates both set or both None",
                       (thresholds, rates))
        if thresholds is not None:
            check_int("len(state_dict['thresholds'])", len(thresholds), minimum=2)
        self.eps, self.margin, self.threshold = eps, margin, thr
        self.thresholds = None if thresholds is None else torch.as_tensor(
            thresholds, dtype=torch.float64).clone()
        self.rates = None if rates is None else torch.as_tensor(rates,
                                                                dtype=torch.float64).clone()
