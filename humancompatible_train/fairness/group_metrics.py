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
adversarial-fairness example on Adult reports it in percent for each sensitive attribute: see
:meth:`MetricReport.by_attribute`).

**Missing values.** A metric whose denominator is zero for a group (no rows, or e.g. no
positive labels for ``tpr``) is NaN there and marked in :attr:`MetricReport.empty`; it is left
out of ``group_min``/``group_max``/``difference``/``ratio``. Any other NaN -- possible only
with ``validate=False``, when a non-finite score, label or membership was accumulated -- makes
every summary that would use it NaN as well (``p_rule`` included): never a fair value.

Under :mod:`torch.distributed` the counts are summed over the processes in :meth:`compute`
(``process_group="auto"``: whenever a default process group is initialised with more than
one process). Every process must then call :meth:`compute` together.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .._validation import check_bool, check_choice, check_device, check_real, fail
from ._checks import Reads, Shown, check_validate, kind
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


def _metrics_from(counts: Tensor, labelled: bool) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(every metric, where its denominator is 0) from counts of shape (len(_COUNTS), ...);
    NaN where the denominator is 0 (or a sum is NaN)."""
    c = dict(zip(_COUNTS, counts))
    out = {"count": c["n"]}
    empty = {"count": torch.zeros_like(c["n"], dtype=torch.bool)}
    for name, (num, den, needs, _) in _SPECS.items():
        if needs and not labelled:
            continue
        a, b = num(c), den(c)
        empty[name] = b == 0
        out[name] = torch.where(b > 0, a / torch.where(b > 0, b, 1.0), math.nan)
    return out, empty


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
    #: metric -> per group: True where its denominator is 0 (no rows to measure; the value is
    #: NaN and left out of the summaries). A NaN where this is False is a non-finite input.
    empty: dict[str, list[bool]] = field(default_factory=dict, repr=False)

    @property
    def metrics(self) -> list[str]:
        return list(self.overall)

    def _values(self, metric: str) -> list[float]:
        """Values of the groups with rows to measure; ``[nan]`` when one of them is NaN."""
        if metric not in self.by_group:
            hint = " (needs labels)" if metric in METRICS else ""
            raise ValueError(f"metric: expected one of {self.metrics}, got {metric!r}{hint}")
        empty = self.empty.get(metric) or [math.isnan(v) for v in self.by_group[metric]]
        vals = [v for v, e in zip(self.by_group[metric], empty) if not e]
        return [math.nan] if any(math.isnan(v) for v in vals) else vals

    def _each(self, fn: Callable[[str], float], metric: str | None) -> Any:
        if metric is not None:
            return fn(metric)
        return {m: fn(m) for m in self.metrics if m != "count"}

    def group_min(self, metric: str | None = None) -> Any:
        """Smallest value over the groups with a defined value (all metrics if ``None``)."""
        return self._each(lambda m: _nan_safe(min, self._values(m)), metric)

    def group_max(self, metric: str | None = None) -> Any:
        """Largest value over the groups with a defined value (all metrics if ``None``)."""
        return self._each(lambda m: _nan_safe(max, self._values(m)), metric)

    def difference(self, metric: str | None = None, method: str = "between_groups") -> Any:
        r"""Largest gap: :math:`\max_g v_g - \min_g v_g` (``"between_groups"``) or
        :math:`\max_g |v_g - v|` (``"to_overall"``); a float for one metric, a dict of all
        metrics if ``metric`` is ``None``. Groups with an undefined value are left out."""
        _check_method(method)

        def one(m: str) -> float:
            vals = self._values(m)
            if method == "between_groups":
                return _nan_safe(max, vals) - _nan_safe(min, vals) if len(vals) >= 2 \
                    else math.nan
            o = self.overall[m]
            return _nan_safe(max, [abs(v - o) for v in vals])

        return self._each(one, metric)

    def ratio(self, metric: str | None = None, method: str = "between_groups") -> Any:
        r"""Smallest ratio: :math:`\min_g v_g / \max_g v_g` (``"between_groups"``) or
        :math:`\min_g \min(v_g/v, v/v_g)` (``"to_overall"``); equal values give 1, a zero
        against a positive value gives 0."""
        _check_method(method)

        def pair(a: float, b: float) -> float:
            if math.isnan(a) or math.isnan(b):
                return math.nan
            if a == b:
                return 1.0
            lo, hi = min(a, b), max(a, b)
            return lo / hi if hi > 0 and lo >= 0 else math.nan

        def one(m: str) -> float:
            vals = self._values(m)
            if method == "between_groups":
                return pair(_nan_safe(min, vals), _nan_safe(max, vals)) if len(vals) >= 2 \
                    else math.nan
            o = self.overall[m]
            return _nan_safe(min, [pair(v, o) for v in vals])

        return self._each(one, metric)

    @property
    def p_rule(self) -> float:
        """The p%-rule as a fraction: min over groups of the positive rate divided by the max
        (the 80%-rule holds when ``p_rule >= 0.8``)."""
        return self.ratio("positive_rate")

    def by_attribute(self, attribute: str | int) -> MetricReport:
        """The report over the values of one attribute of intersectional groups (the counts of
        the intersections summed over the other attributes), e.g. the p%-rule for race and for
        sex separately."""
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


def _nan_safe(fn: Callable[[list[float]], float], vals: list[float]) -> float:
    """``min``/``max`` that is NaN for no value or any NaN value (Python's skip NaN)."""
    if not vals or any(math.isnan(v) for v in vals):
        return math.nan
    return fn(vals)


def _check_method(method: str) -> None:
    if method not in ("between_groups", "to_overall"):
        raise ValueError(f"method: expected 'between_groups' or 'to_overall', got {method!r}")


def _report(counts: Tensor, names: list[str], labelled: bool, groups: Groups | None
            ) -> MetricReport:
    """The report from counts with one column per group and a last one over every row."""
    counts = counts.detach().to("cpu", torch.float64)
    per, empty = _metrics_from(counts[:, :-1], labelled)
    tot, _ = _metrics_from(counts[:, -1:], labelled)
    return MetricReport(list(names), {k: v.tolist() for k, v in per.items()},
                        {k: float(v[0]) for k, v in tot.items()}, labelled, counts.clone(),
                        groups, {k: v.tolist() for k, v in empty.items()})


class GroupMetrics:
    """Accumulate per-group counts over batches; :meth:`compute` gives a :class:`MetricReport`.

    Args:
        groups: group names, a number of groups, or ``{attribute: values}`` (intersections).
            ``sens`` may come in any layout the constraints take; a float ``(N, S)`` membership
            (weights in [0, 1]) is used as weights, so fairret's overlapping or soft
            memberships work (each group's metrics over its weighted rows, ``overall`` over
            every row once).
        threshold: decision threshold on probabilities: decision :math:`= [p \\ge t]`.
        scores: what ``pred`` holds: ``"probabilities"`` (default) or ``"logits"`` (a sigmoid
            is applied first).
        process_group: ``"auto"`` (default) sums the counts over all processes in
            :meth:`compute` when :mod:`torch.distributed` is initialised with more than one
            process; a process group sums over that group; ``None`` never syncs.
        device: where the counts live; by default that of the first batch (CPU for MPS, which
            has no float64). :meth:`to` moves them.
        validate: ``True`` (default): :meth:`update` refuses a batch with a non-finite score
            (logit or probability), a probability outside [0, 1], a label other than 0/1, a
            group id out of range or a membership weight outside [0, 1], changing nothing
            (one host read of the batch per call: turn it off on accelerators to avoid the
            synchronisation). ``False``: nothing is read; a non-finite input then makes every
            later metric NaN until :meth:`reset` (a missing value, never a fair one).
            ``None``: as ``True`` for counts on the CPU and as ``False`` on accelerators,
            the automatic choice of :class:`FairnessConstraint`.

    Every method that changes the state checks everything first: an error leaves the counts
    as they were.
    """

    def __init__(self, groups: GroupsLike = 2, *, threshold: float = 0.5,
                 scores: str = "probabilities", process_group: Any = "auto",
                 device: torch.device | str | None = None, validate: bool | None = True
                 ) -> None:
        self.groups = Groups.parse(groups)
        self.scores = check_choice("scores", scores, ("probabilities", "logits"))
        self.threshold = check_real("threshold", threshold, low=0.0, high=1.0)
        if isinstance(process_group, str) and process_group != "auto":
            raise fail("process_group", "'auto', None or a torch.distributed process group",
                       process_group)
        self.process_group = process_group
        self.validate = check_validate(validate)
        self._device = None if device is None else _counts_device(device)
        # One column per group, and a last one over every row: with overlapping or soft
        # memberships (fairret's float layout) the groups' sums need not add up to it.
        self.counts = torch.zeros(len(_COUNTS), self.groups.S + 1, dtype=torch.float64,
                                  device=self._device)
        self.has_labels: bool | None = None  #: None until the first update

    def reset(self) -> None:
        """Forget every batch."""
        self.counts.zero_()
        self.has_labels = None

    def to(self, device: torch.device | str) -> GroupMetrics:
        """Move the counts (float64 stays float64) to ``device``, where later batches are
        accumulated; returns ``self``."""
        dev = _counts_device(device)
        self.counts = self.counts.to(dev)
        self._device = dev
        return self

    def state_dict(self) -> dict[str, Any]:
        """A copy of the counts on the CPU, and whether labels were given (for checkpoints;
        loads with ``torch.load(weights_only=True)``)."""
        return {"counts": self.counts.detach().cpu().clone(), "has_labels": self.has_labels}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; everything is checked before anything changes."""
        if not isinstance(state, Mapping):
            raise fail("state", "a dict from GroupMetrics.state_dict()", kind(state))
        if set(state) != {"counts", "has_labels"}:
            raise fail("state", "the keys ['counts', 'has_labels']", sorted(map(str, state)))
        counts, has_labels = state["counts"], state["has_labels"]
        shape = tuple(self.counts.shape)
        if not isinstance(counts, Tensor) or counts.is_complex() or counts.dtype == torch.bool:
            raise fail("state['counts']", f"a real tensor of shape {shape}", kind(counts))
        if tuple(counts.shape) != shape:
            raise fail("state['counts']", f"shape {shape} ({len(_COUNTS)} sums x "
                       f"{self.groups.S} groups + overall)", tuple(counts.shape))
        c = counts.detach().to("cpu", torch.float64)
        _check_sums(c)
        if has_labels is not None:
            has_labels = check_bool("state['has_labels']", has_labels)
        elif bool(c.any()):
            raise fail("state['has_labels']", "True or False with non-zero counts", None)
        self.counts = c.to(self.counts.device)
        self.has_labels = has_labels

    @torch.no_grad()
    def update(self, pred: Tensor, sens: Tensor, labels: Tensor | None = None) -> None:
        """Add a batch: scores ``pred`` (N,) or (N, 1), groups ``sens`` in any layout of
        :class:`~humancompatible_train.fairness.groups.Groups`, optional 0/1 ``labels``.
        A batch that fails a check changes nothing."""
        if not isinstance(pred, Tensor) or not pred.is_floating_point():
            raise fail("pred", f"a floating tensor of {self.scores}", kind(pred))
        if pred.dim() > 2 or (pred.dim() == 2 and pred.shape[1] != 1):
            raise fail("pred", "shape (N,) or (N, 1)", tuple(pred.shape))
        if self.has_labels is not None and (labels is not None) != self.has_labels:
            raise ValueError(f"labels: give them with every batch or with none; earlier batches "
                             f"had {'labels' if self.has_labels else 'none'}, this one "
                             f"{'has' if labels is not None else 'has none'}")
        if not isinstance(sens, Tensor):
            raise fail("sens", "a tensor", kind(sens))
        if labels is not None and (not isinstance(labels, Tensor) or labels.is_complex()):
            raise fail("labels", "a real tensor", kind(labels))
        dev = self.counts.device
        if self.has_labels is None and self._device is None:
            dev = pred.device if pred.device.type != "mps" else torch.device("cpu")
        z = pred.detach().reshape(-1).to(dev, torch.float64)
        n = z.numel()
        checked = self.validate is True or (self.validate is None and dev.type == "cpu")
        reads = Reads(checked, dev)
        member = self.groups.membership(sens.to(dev), torch.float64, reads)
        if member.shape[0] != n:
            raise fail("sens", f"{n} rows (one per prediction)", member.shape[0])
        if self.scores == "probabilities":
            reads.span("pred", z, 0.0, 1.0, "probabilities",
                       hint=" (pass scores='logits' for logits)")
        else:
            reads.finite("pred", z, "logits")
        y = None
        if labels is not None:
            y = labels.detach().reshape(-1).to(dev, torch.float64)
            if y.numel() != n:
                raise fail("labels", f"{n} values (one per prediction)", y.numel())
            _check_binary(y, reads)
        reads.run()
        # ---- every check passed: from here on nothing raises
        score = torch.sigmoid(z) if self.scores == "logits" else z
        dec = (score >= self.threshold).to(torch.float64)
        if y is None:
            y = torch.zeros_like(score)
        rows = torch.stack([torch.ones_like(score), score, dec, y, dec * y, dec * (1 - y),
                            score * y, score * (1 - y)])
        if not checked:
            # Unchecked non-finite inputs make every sum NaN (the sigmoid would hide an
            # infinite logit, the decision a NaN score): a missing value, never a fair one.
            rows = rows + (z + y + member.sum(1)) * 0
        if self.counts.device != dev:
            self.counts = self.counts.to(dev)  # the first batch places the counts
        # Membership-weighted sums (exact for 0/1 memberships); rows in no group (out-of-range
        # ids with validate=False) count only in the overall column.
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
        """The metrics over every batch since the last :meth:`reset` (over all processes).
        Before any :meth:`update` it warns and returns the empty report (every count 0, every
        other metric NaN)."""
        if self.has_labels is None:
            warnings.warn("GroupMetrics.compute() called before any update() on this "
                          "process: the report is empty (every metric NaN)", UserWarning,
                          stacklevel=2)
        counts = self._totals()
        return _report(counts, list(self.groups.names), bool(self.has_labels), self.groups)


# (part, whole): sums that can never exceed another (memberships and scores in [0, 1]).
_BOUNDS = (("score", "n"), ("pos", "n"), ("y", "n"), ("tp", "pos"), ("tp", "y"),
           ("fp", "pos"), ("score_y", "score"), ("score_not_y", "score"))


def _check_sums(c: Tensor) -> None:
    """Counts a GroupMetrics can have accumulated: finite, >= 0, parts within their wholes."""
    if not bool(torch.isfinite(c).all()):
        raise fail("state['counts']", "finite sums", c.tolist())
    if bool((c < 0).any()):
        raise fail("state['counts']", "non-negative sums", c.tolist())
    rows = dict(zip(_COUNTS, c))
    for part, whole in _BOUNDS:
        if bool((rows[part] > rows[whole] * (1 + 1e-9) + 1e-9).any()):
            raise fail("state['counts']", f"sums with {part} <= {whole} in every column",
                       {part: rows[part].tolist(), whole: rows[whole].tolist()})


def _check_binary(y: Tensor, reads: Reads) -> None:
    if not reads.enabled or y.numel() == 0:
        return
    bad = (y != 0) & (y != 1)

    def message() -> str:
        values = sorted(set(y[bad].tolist()), key=lambda v: (math.isnan(v), v))
        return f"labels: expected values in {{0, 1}}, got {values[:10]}"

    reads.flag(bad.any(), message)


def _counts_device(device: Any) -> torch.device:
    try:
        mps = torch.device(device).type == "mps"
    except (RuntimeError, TypeError, ValueError):
        mps = False  # check_device names the problem
    dev = check_device("device", device) if not mps else torch.device("mps")
    if dev.type == "mps":
        raise fail("device", "a device with float64 (the counts' dtype; MPS has none, keep "
                   "them on the CPU)", Shown(str(dev)))
    return dev
