r"""Streaming per-group metrics, exact over any number of batches.

:class:`GroupMetrics` follows the torchmetrics protocol (``update`` / ``compute`` / ``reset``)
and accumulates, per group :math:`g`, sums over its rows :math:`i` of score :math:`p_i`,
decision :math:`d_i = [p_i \ge t]` and label :math:`y_i`:

.. math::

    n_g,\ \textstyle\sum p_i,\ \sum d_i,\ \sum y_i,\ \sum d_i y_i,\ \sum d_i (1-y_i),\
    \sum p_i y_i,\ \sum p_i (1-y_i)

in float64 -- *counts*, never averages of averages -- so every metric over many batches is
the ratio of two sums, as if computed on all rows at once. Integer counts are exact (below
:math:`2^{53}`); score sums are exact for float32 scores on a grid of :math:`2^{-24}` (such as
those of ``torch.rand``) and otherwise agree to float64 rounding.

Metrics (hard ones on decisions, ``soft_*`` ones on the scores themselves, as fairret's
statistics on probabilities):

==================  =====================================  =============================
metric              hard                                   soft
==================  =====================================  =============================
positive rate       ``positive_rate`` = P(d=1)             ``mean_score`` = E[p]
TPR                 ``tpr`` = P(d=1 | y=1)                 ``soft_tpr`` = E[p | y=1]
FPR                 ``fpr`` = P(d=1 | y=0)                 ``soft_fpr`` = E[p | y=0]
PPV                 ``ppv`` = P(y=1 | d=1)                 ``soft_ppv`` = Σpy / Σp
FOR                 ``for`` = P(y=1 | d=0)                 ``soft_for`` = Σ(1-p)y / Σ(1-p)
accuracy            ``accuracy`` = P(d=y)                  ``soft_accuracy`` = E[py+(1-p)(1-y)]
==================  =====================================  =============================

plus ``count`` and ``base_rate`` = P(y=1). A metric with an empty denominator is ``nan``.

:class:`MetricReport` speaks fairlearn's ``MetricFrame`` vocabulary: ``overall``, ``by_group``,
``group_min``, ``group_max``, ``difference(method=...)``, ``ratio(method=...)``, and the
p%-rule :math:`\min_g PR_g / \max_g PR_g` (Zafar et al., AISTATS 2017; the classic PyTorch
adversarial-fairness example reports it in percent for each sensitive attribute: see
:meth:`MetricReport.by_attribute`).

Under :mod:`torch.distributed` the counts are summed over the processes in :meth:`compute`
(``process_group="auto"``: whenever a default process group is initialised with more than
one process). Every process must then call :meth:`compute` together.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .groups import Groups, GroupsLike

__all__ = ["GroupMetrics", "MetricReport", "METRICS"]

logger = logging.getLogger("humancompatible_train")

# Accumulated per group, in this order (rows of GroupMetrics.counts).
_COUNTS = ("n", "score", "pos", "y", "tp", "fp", "score_y", "score_not_y")

_C = dict[str, Tensor]
_Spec = tuple[Callable[[_C], Tensor], Callable[[_C], Tensor], bool, str]

# name -> (numerator, denominator, needs labels, description)
_SPECS: dict[str, _Spec] = {
    "positive_rate": (lambda c: c["pos"], lambda c: c["n"], False, "P(d=1)"),
    "mean_score": (lambda c: c["score"], lambda c: c["n"], False, "E[p]"),
    "base_rate": (lambda c: c["y"], lambda c: c["n"], True, "P(y=1)"),
    "tpr": (lambda c: c["tp"], lambda c: c["y"], True, "P(d=1 | y=1)"),
    "fpr": (lambda c: c["fp"], lambda c: c["n"] - c["y"], True, "P(d=1 | y=0)"),
    "ppv": (lambda c: c["tp"], lambda c: c["pos"], True, "P(y=1 | d=1)"),
    "for": (lambda c: c["y"] - c["tp"], lambda c: c["n"] - c["pos"], True, "P(y=1 | d=0)"),
    "accuracy": (lambda c: c["n"] - c["pos"] - c["y"] + 2 * c["tp"], lambda c: c["n"], True,
                 "P(d=y)"),
    "soft_tpr": (lambda c: c["score_y"], lambda c: c["y"], True, "E[p | y=1]"),
    "soft_fpr": (lambda c: c["score_not_y"], lambda c: c["n"] - c["y"], True, "E[p | y=0]"),
    "soft_ppv": (lambda c: c["score_y"], lambda c: c["score"], True, "sum p*y / sum p"),
    "soft_for": (lambda c: c["y"] - c["score_y"], lambda c: c["n"] - c["score"], True,
                 "sum (1-p)*y / sum (1-p)"),
    "soft_accuracy": (lambda c: c["score_y"] + c["n"] - c["y"] - c["score_not_y"],
                      lambda c: c["n"], True, "E[p*y + (1-p)*(1-y)]"),
}
#: Metric name -> its definition (d: decision, p: score, y: label).
METRICS: dict[str, str] = {"count": "rows", **{k: v[3] for k, v in _SPECS.items()}}


def _metrics_from(counts: Tensor, labelled: bool) -> dict[str, Tensor]:
    """Every metric from counts of shape (len(_COUNTS), ...); NaN where undefined."""
    c = dict(zip(_COUNTS, counts))
    out = {"count": c["n"]}
    for name, (num, den, needs, _) in _SPECS.items():
        if needs and not labelled:
            continue
        a, b = num(c), den(c)
        out[name] = torch.where(b > 0, a / torch.where(b > 0, b, 1.0), math.nan)
    return out


@dataclass
class MetricReport:
    """Per-group and overall metrics, computed from exact counts (see the module).

    ``by_group[metric]`` lists one value per group, in the order of ``group_names``.
    """

    group_names: list[str]
    by_group: dict[str, list[float]]  #: metric -> one value per group (nan: undefined)
    overall: dict[str, float]  #: metric -> value over all rows
    has_labels: bool
    #: (8, S + 1) float64 sums behind the metrics, one column per group and the last over
    #: every row (the module lists the sums)
    counts: Tensor = field(repr=False)
    groups: Groups | None = field(default=None, repr=False)

    @property
    def metrics(self) -> list[str]:
        return list(self.overall)

    def _values(self, metric: str) -> list[float]:
        if metric not in self.by_group:
            hint = " (needs labels)" if metric in METRICS else ""
            raise ValueError(f"metric: expected one of {self.metrics}, got {metric!r}{hint}")
        return [v for v in self.by_group[metric] if not math.isnan(v)]

    def _each(self, fn: Callable[[str], float], metric: str | None) -> Any:
        if metric is not None:
            return fn(metric)
        return {m: fn(m) for m in self.metrics if m != "count"}

    def group_min(self, metric: str | None = None) -> Any:
        """Smallest value over the groups with a defined value (all metrics if ``None``)."""
        return self._each(lambda m: min(self._values(m), default=math.nan), metric)

    def group_max(self, metric: str | None = None) -> Any:
        """Largest value over the groups with a defined value (all metrics if ``None``)."""
        return self._each(lambda m: max(self._values(m), default=math.nan), metric)

    def difference(self, metric: str | None = None, method: str = "between_groups") -> Any:
        r"""Largest gap: :math:`\max_g v_g - \min_g v_g` (``"between_groups"``) or
        :math:`\max_g |v_g - v|` (``"to_overall"``); a float for one metric, a dict of all
        metrics if ``metric`` is ``None``. Groups with an undefined value are left out."""
        _check_method(method)

        def one(m: str) -> float:
            vals = self._values(m)
            if method == "between_groups":
                return max(vals) - min(vals) if len(vals) >= 2 else math.nan
            o = self.overall[m]
            return max((abs(v - o) for v in vals), default=math.nan)

        return self._each(one, metric)

    def ratio(self, metric: str | None = None, method: str = "between_groups") -> Any:
        r"""Smallest ratio: :math:`\min_g v_g / \max_g v_g` (``"between_groups"``) or
        :math:`\min_g \min(v_g/v, v/v_g)` (``"to_overall"``); equal values give 1, a zero
        against a positive value gives 0."""
        _check_method(method)

        def pair(a: float, b: float) -> float:
            if a == b:
                return 1.0
            lo, hi = min(a, b), max(a, b)
            return lo / hi if hi > 0 and lo >= 0 else math.nan

        def one(m: str) -> float:
            vals = self._values(m)
            if method == "between_groups":
                return pair(min(vals), max(vals)) if len(vals) >= 2 else math.nan
            o = self.overall[m]
            return min((pair(v, o) for v in vals), default=math.nan)

        return self._each(one, metric)

    @property
    def p_rule(self) -> float:
        """The p%-rule as a fraction: min over groups of the positive rate divided by the max
        (the 80%-rule holds when ``p_rule >= 0.8``)."""
        return self.ratio("positive_rate")

    def by_attribute(self, attribute: str | int) -> MetricReport:
        """The report over the values of one attribute of intersectional groups (the counts of
        the intersections summed over the other attributes), e.g. the p%-rule for race and for
        sex separately, as the classic PyTorch adversarial-fairness example reports them."""
        if self.groups is None:
            raise ValueError("attribute: this report does not know its groups' attributes")
        a, value_of = self.groups.marginal_index(attribute)
        k = self.groups.sizes[a]
        counts = torch.zeros(self.counts.shape[0], k + 1, dtype=self.counts.dtype)
        counts.index_add_(1, torch.tensor(value_of), self.counts[:, :-1])
        counts[:, k] = self.counts[:, -1]
        sub = Groups.named(list(self.groups.values[a])) if k >= 2 else None
        return _report(counts, list(self.groups.values[a]), self.has_labels, sub)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python: groups, by_group, overall, differences, ratios and the p%-rule."""
        return {"groups": list(self.group_names), "by_group": dict(self.by_group),
                "overall": dict(self.overall), "p_rule": self.p_rule,
                "difference": self.difference(), "ratio": self.ratio()}

    def to_pandas(self) -> Any:
        """A DataFrame: one row per group plus ``overall``, one column per metric."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("to_pandas() needs pandas: pip install pandas") from exc
        frame = pd.DataFrame(self.by_group, index=list(self.group_names))
        frame.loc["overall"] = [self.overall[m] for m in frame.columns]
        return frame

    def __str__(self) -> str:
        cols = [*self.group_names, "overall", "difference", "ratio"]
        width = [max(10, len(c)) for c in cols]
        mw = max(len(m) for m in self.metrics)
        lines = [f"{'metric':{mw}s} " + " ".join(f"{c:>{w}s}" for c, w in zip(cols, width))]
        lines.append("-" * len(lines[0]))
        for m in self.metrics:
            if m == "count":
                vals = [f"{v:.0f}" for v in self.by_group[m]] + [f"{self.overall[m]:.0f}", "", ""]
            else:
                nums = [*self.by_group[m], self.overall[m], self.difference(m), self.ratio(m)]
                vals = [f"{v:.4f}" for v in nums]
            lines.append(f"{m:{mw}s} " + " ".join(f"{v:>{w}s}" for v, w in zip(vals, width)))
        lines.append(f"p%-rule (min/max positive rate): {100 * self.p_rule:.1f}%")
        return "\n".join(lines)


def _check_method(method: str) -> None:
    if method not in ("between_groups", "to_overall"):
        raise ValueError(f"method: expected 'between_groups' or 'to_overall', got {method!r}")


def _report(counts: Tensor, names: list[str], labelled: bool, groups: Groups | None
            ) -> MetricReport:
    """The report from counts with one column per group and a last one over every row."""
    counts = counts.detach().to("cpu", torch.float64)
    per = _metrics_from(counts[:, :-1], labelled)
    tot = _metrics_from(counts[:, -1:], labelled)
    return MetricReport(list(names), {k: v.tolist() for k, v in per.items()},
                        {k: float(v[0]) for k, v in tot.items()}, labelled, counts.clone(),
                        groups)


class GroupMetrics:
    """Accumulate per-group counts over batches; :meth:`compute` gives a :class:`MetricReport`.

    Args:
        groups: group names, a number of groups, or ``{attribute: values}`` (intersections).
            ``sens`` may come in any layout the constraints take; a float ``(N, S)`` membership
            is used as weights, so fairret's overlapping or soft memberships work (each
            group's metrics over its weighted rows, ``overall`` over every row once).
        threshold: decision threshold on probabilities: decision :math:`= [p \\ge t]`.
        scores: what ``pred`` holds: ``"probabilities"`` (default) or ``"logits"`` (a sigmoid
            is applied first).
        process_group: ``"auto"`` (default) sums the counts over all processes in
            :meth:`compute` when :mod:`torch.distributed` is initialised with more than one
            process; a process group sums over that group; ``None`` never syncs.
        device: where the counts live; by default that of the first batch (CPU for MPS, which
            has no float64).
        validate: check in :meth:`update` that labels are 0/1 and probabilities lie in [0, 1]
            (reads the batch on the host; turn off on accelerators to avoid the sync).
    """

    def __init__(self, groups: GroupsLike = 2, *, threshold: float = 0.5,
                 scores: str = "probabilities", process_group: Any = "auto",
                 device: torch.device | str | None = None, validate: bool = True) -> None:
        self.groups = Groups.parse(groups)
        if scores not in ("probabilities", "logits"):
            raise ValueError(f"scores: expected 'probabilities' or 'logits', got {scores!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: expected a probability in [0, 1], got {threshold!r}")
        self.threshold = float(threshold)
        self.scores = scores
        self.process_group = process_group
        self.validate = bool(validate)
        self._device = torch.device(device) if device is not None else None
        # One column per group, and a last one over every row: with overlapping or soft
        # memberships (fairret's float layout) the groups' sums need not add up to it.
        self.counts = torch.zeros(len(_COUNTS), self.groups.S + 1, dtype=torch.float64,
                                  device=self._device)
        self.has_labels: bool | None = None  #: None until the first update

    def reset(self) -> None:
        """Forget every batch."""
        self.counts.zero_()
        self.has_labels = None

    def state_dict(self) -> dict[str, Any]:
        """A copy of the counts (for checkpoints)."""
        return {"counts": self.counts.detach().cpu().clone(), "has_labels": self.has_labels}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counts = state.get("counts")
        if not isinstance(counts, Tensor) or tuple(counts.shape) != tuple(self.counts.shape):
            raise ValueError(f"state: expected counts of shape {tuple(self.counts.shape)}, got "
                             f"{getattr(counts, 'shape', type(counts).__name__)}")
        self.counts = counts.to(self.counts.device, torch.float64).clone()
        self.has_labels = state.get("has_labels")

    @torch.no_grad()
    def update(self, pred: Tensor, sens: Tensor, labels: Tensor | None = None) -> None:
        """Add a batch: scores ``pred`` (N,) or (N, 1), groups ``sens`` in any layout of
        :class:`~humancompatible_train.fairness.groups.Groups`, optional 0/1 ``labels``."""
        if not isinstance(pred, Tensor) or not pred.is_floating_point():
            raise ValueError(f"pred: expected a floating tensor of {self.scores}, got "
                             f"{getattr(pred, 'dtype', type(pred).__name__)}")
        if pred.dim() > 2 or (pred.dim() == 2 and pred.shape[1] != 1):
            raise ValueError(f"pred: expected shape (N,) or (N, 1), got {tuple(pred.shape)}")
        if self.has_labels is not None and (labels is not None) != self.has_labels:
            raise ValueError(f"labels: give them with every batch or with none; earlier batches "
                             f"had {'labels' if self.has_labels else 'none'}, this one "
                             f"{'has' if labels is not None else 'has none'}")
        if self.has_labels is None and self._device is None:
            dev = pred.device if pred.device.type != "mps" else torch.device("cpu")
            self.counts = self.counts.to(dev)
        dev = self.counts.device
        score = pred.detach().reshape(-1).to(dev, torch.float64)
        if self.scores == "logits":
            score = torch.sigmoid(score)
        member = self.groups.one_hot(sens, torch.float64).to(dev)
        if member.shape[0] != score.numel():
            raise ValueError(f"sens: expected {score.numel()} rows (one per prediction), got "
                             f"{member.shape[0]}")
        if self.validate and self.scores == "probabilities" and score.numel() \
                and not bool(((score >= 0) & (score <= 1)).all()):
            raise ValueError(f"pred: expected probabilities in [0, 1], got values in "
                             f"[{float(score.min())}, {float(score.max())}]; pass "
                             "scores='logits' for logits")
        dec = (score >= self.threshold).to(torch.float64)
        if labels is not None:
            if not isinstance(labels, Tensor):
                raise ValueError(f"labels: expected a tensor, got {type(labels).__name__}")
            y = labels.detach().reshape(-1).to(dev, torch.float64)
            if y.numel() != score.numel():
                raise ValueError(f"labels: expected {score.numel()} values (one per "
                                 f"prediction), got {y.numel()}")
            if self.validate and not bool(((y == 0) | (y == 1)).all()):
                raise ValueError(f"labels: expected values in {{0, 1}}, got "
                                 f"{sorted(set(y.unique().tolist()))[:10]}")
        else:
            y = torch.zeros_like(score)
        rows = torch.stack([torch.ones_like(score), score, dec, y, dec * y, dec * (1 - y),
                            score * y, score * (1 - y)])
        # Membership-weighted sums (exact for 0/1 memberships); rows in no group (out-of-range
        # ids on accelerators) count only in the overall column.
        self.counts[:, :-1] += rows @ member
        self.counts[:, -1] += rows.sum(1)
        self.has_labels = labels is not None

    def _group(self) -> Any:
        if self.process_group == "auto":
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                return dist.group.WORLD
            return None
        return self.process_group

    def _totals(self) -> Tensor:
        group = self._group()
        counts = self.counts
        if group is not None:
            counts = counts.clone()
            dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
            logger.debug("GroupMetrics: counts summed over %d processes",
                         dist.get_world_size(group))
        return counts

    def compute(self) -> MetricReport:
        """The metrics over every batch since the last :meth:`reset` (over all processes)."""
        counts = self._totals()
        return _report(counts, list(self.groups.names), bool(self.has_labels), self.groups)
