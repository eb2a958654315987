"""Streaming per-group metrics, exact over any number of batches.

:class:`GroupMetrics` follows the torchmetrics protocol (``update`` / ``compute`` /
``reset``) and accumulates *counts* (in float64), never averages of averages, so the result
over many batches equals the one-shot computation. :class:`MetricReport` speaks fairlearn's
``MetricFrame`` vocabulary: ``overall``, ``by_group``, ``difference(method=...)``,
``ratio(method=...)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .groups import Groups

__all__ = ["GroupMetrics", "MetricReport", "METRICS"]

# Accumulated per group: rows, sum of scores, positive decisions, positive labels, true
# positives, false positives (hard), sum of scores over positive labels, over negatives.
_COUNTS = ("n", "score", "pos", "y", "tp", "fp", "score_y", "score_not_y")
#: Metric name -> (numerator, denominator) as expressions of the counts.
METRICS = {
    "count": None,
    "positive_rate": ("pos", "n"),
    "mean_score": ("score", "n"),
    "tpr": ("tp", "y"),
    "fpr": ("fp", "n-y"),
    "ppv": ("tp", "pos"),
    "for": ("y-tp", "n-pos"),
    "accuracy": ("n-pos-y+2tp", "n"),
    "soft_tpr": ("score_y", "y"),
    "soft_fpr": ("score_not_y", "n-y"),
}
_LABELLED = {"tpr", "fpr", "ppv", "for", "accuracy", "soft_tpr", "soft_fpr"}


def _expr(c: dict[str, Tensor], e: str) -> Tensor:
    if e == "n-y":
        return c["n"] - c["y"]
    if e == "y-tp":  # false negatives
        return c["y"] - c["tp"]
    if e == "n-pos":
        return c["n"] - c["pos"]
    if e == "n-pos-y+2tp":  # TP + TN
        return c["n"] - c["pos"] - c["y"] + 2 * c["tp"]
    return c[e]


@dataclass
class MetricReport:
    """Per-group and overall metrics, computed from exact counts."""

    group_names: list[str]
    by_group: dict[str, list[float]]  #: metric -> one value per group (nan: undefined)
    overall: dict[str, float]
    has_labels: bool

    @property
    def metrics(self) -> list[str]:
        return list(self.overall)

    def difference(self, metric: str = "positive_rate", method: str = "between_groups"
                   ) -> float:
        """Largest gap: max - min over groups, or max |group - overall|."""
        vals = [v for v in self._values(metric) if not math.isnan(v)]
        if method == "between_groups":
            return max(vals) - min(vals) if len(vals) >= 2 else math.nan
        if method == "to_overall":
            o = self.overall[metric]
            return max(abs(v - o) for v in vals) if vals else math.nan
        raise ValueError(f"method: expected 'between_groups' or 'to_overall', got {method!r}")

    def ratio(self, metric: str = "positive_rate", method: str = "between_groups") -> float:
        """Smallest ratio: min / max over groups, or min over groups of min(g/o, o/g)."""
        vals = [v for v in self._values(metric) if not math.isnan(v)]
        if method == "between_groups":
            if len(vals) < 2:
                return math.nan
            hi, lo = max(vals), min(vals)
            return 1.0 if hi == lo else (lo / hi if hi > 0 else math.nan)
        if method == "to_overall":
            o = self.overall[metric]
            rs = [min(v / o, o / v) if v > 0 and o > 0 else (1.0 if v == o else 0.0)
                  for v in vals]
            return min(rs) if rs else math.nan
        raise ValueError(f"method: expected 'between_groups' or 'to_overall', got {method!r}")

    @property
    def p_rule(self) -> float:
        """The p%-rule (as a fraction): min over groups of PR / max over groups of PR
        (Zafar et al., AISTATS 2017; the 80%-rule is p_rule >= 0.8)."""
        return self.ratio("positive_rate")

    def _values(self, metric: str) -> list[float]:
        if metric not in self.by_group:
            raise ValueError(f"metric: expected one of {sorted(self.by_group)}, got {metric!r}")
        return self.by_group[metric]

    def to_dict(self) -> dict[str, Any]:
        return {"groups": list(self.group_names), "by_group": dict(self.by_group),
                "overall": dict(self.overall), "p_rule": self.p_rule,
                "difference": {m: self.difference(m) for m in self.by_group if m != "count"}}

    def to_pandas(self):
        """A DataFrame: one row per group plus ``overall``, one column per metric."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("to_pandas() needs pandas: pip install "
                              "'humancompatible-train-toolkit[pandas]'") from exc
        frame = pd.DataFrame(self.by_group, index=list(self.group_names))
        frame.loc["overall"] = [self.overall[m] for m in frame.columns]
        return frame

    def __str__(self) -> str:
        cols = self.metrics
        width = max(8, *(len(g) for g in self.group_names))
        head = f"{'group':{width}s} " + " ".join(f"{c:>13s}" for c in cols)
        lines = [head, "-" * len(head)]
        rows = [(g, [self.by_group[c][i] for c in cols]) for i, g in enumerate(self.group_names)]
        rows.append(("overall", [self.overall[c] for c in cols]))
        for g, vals in rows:
            lines.append(f"{g:{width}s} " + " ".join(
                f"{v:13.0f}" if c == "count" else f"{v:13.4f}" for c, v in zip(cols, vals)))
        lines.append(f"{'difference':{width}s} " + " ".join(
            f"{'':>13s}" if c == "count" else f"{self.difference(c):13.4f}" for c in cols))
        lines.append(f"p%-rule (min/max positive rate): {self.p_rule:.4f}")
        return "\n".join(lines)


class GroupMetrics:
    """Accumulate per-group counts over batches; ``compute()`` gives a :class:`MetricReport`.

    Args:
        groups: group names, a number of groups, or ``{attribute: values}`` (intersections).
        threshold: decision threshold on scores for the hard metrics.
        scores: ``"probabilities"`` (default) or ``"logits"`` (a sigmoid is applied).
        process_group: sum the counts over this :mod:`torch.distributed` group in
            :meth:`compute` (``dist.group.WORLD`` for all processes).
    """

    def __init__(self, groups: Sequence[str] | int | Mapping[str, Sequence[str]] = 2, *,
                 threshold: float = 0.5, scores: str = "probabilities",
                 process_group: Any | None = None) -> None:
        self.groups = (Groups.intersections(groups) if isinstance(groups, Mapping)
                       else Groups.named(groups))
        if scores not in ("probabilities", "logits"):
            raise ValueError(f"scores: expected 'probabilities' or 'logits', got {scores!r}")
        self.threshold = float(threshold)
        self.scores = scores
        self.process_group = process_group
        self.counts = torch.zeros(len(_COUNTS), self.groups.S, dtype=torch.float64)
        self.has_labels: bool | None = None

    def reset(self) -> None:
        self.counts.zero_()
        self.has_labels = None

    @torch.no_grad()
    def update(self, pred: Tensor, sens: Tensor, labels: Tensor | None = None) -> None:
        """Add a batch: scores ``pred`` (N,) or (N, 1), groups ``sens`` in any layout of
        :class:`~humancompatible_train.fairness.groups.Groups`, optional 0/1 ``labels``."""
        score = pred.detach().reshape(-1).to(torch.float64)
        if self.scores == "logits":
            score = torch.sigmoid(score)
        ids = self.groups.ids(sens).reshape(-1)
        if ids.numel() != score.numel():
            raise ValueError(f"sens: expected {score.numel()} rows, got {ids.numel()}")
        self.groups.check_ids(ids)
        if (labels is None) != (self.has_labels is False) and self.has_labels is not None:
            raise ValueError("labels: give them with every batch or with none")
        dev = self.counts.device
        ids, score = ids.to(dev), score.to(dev)
        dec = (score >= self.threshold).to(torch.float64)
        if labels is not None:
            y = labels.detach().reshape(-1).to(torch.float64).to(dev)
            if y.numel() != score.numel() or not bool(((y == 0) | (y == 1)).all()):
                raise ValueError(f"labels: expected {score.numel()} values in {{0, 1}}")
        else:
            y = torch.zeros_like(score)
        rows = torch.stack([torch.ones_like(score), score, dec, y, dec * y, dec * (1 - y),
                            score * y, score * (1 - y)])
        self.counts.index_add_(1, ids, rows)
        self.has_labels = labels is not None

    def _totals(self) -> Tensor:
        counts = self.counts
        if self.process_group is not None:
            counts = counts.clone()
            dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=self.process_group)
        return counts

    def compute(self) -> MetricReport:
        counts = self._totals()
        per = dict(zip(_COUNTS, counts))
        tot = {k: v.sum() for k, v in per.items()}
        labelled = bool(self.has_labels)
        by_group: dict[str, list[float]] = {}
        overall: dict[str, float] = {}
        for name, spec in METRICS.items():
            if name in _LABELLED and not labelled:
                continue
            if spec is None:
                by_group[name] = per["n"].tolist()
                overall[name] = float(tot["n"])
                continue
            num, den = spec
            for target, src in ((by_group, per), (overall, tot)):
                a, b = _expr(src, num), _expr(src, den)
                val = torch.where(b > 0, a / torch.where(b > 0, b, 1.0), math.nan)
                if target is by_group:
                    by_group[name] = val.tolist()
                else:
                    overall[name] = float(val)
        return MetricReport(list(self.groups.names), by_group, overall, labelled)
