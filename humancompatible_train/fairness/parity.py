r"""Fairness constraints from fairret's linear-fractional statistics.

Every statistic of :mod:`fairret.statistic` has the canonical form

.. math:: \gamma_s(f) = \frac{\sum_i s_i\,(a_i + b_i f_i)}{\sum_i s_i\,(c_i + d_i f_i)}

for group membership :math:`s_i`, prediction :math:`f_i` and label-dependent coefficients
(Buyl, Defrance & De Bie, *fairret*, ICLR 2024). :class:`FairnessConstraint` turns one of them
(or a stack, e.g. TPR and FPR for equalized odds) into the constraint vector a dual optimizer
takes, in one of four comparison modes whose size ``m`` is known before the first batch:

=================  ===========================================  =================
mode               rows (each :math:`\le 0`)                    m
=================  ===========================================  =================
``"pairwise"``     :math:`\gamma_g - \gamma_h - \varepsilon`     :math:`K S (S-1)`
``"overall"``      :math:`\pm(\gamma_g - \gamma) - \varepsilon`  :math:`2 K S`
``"max_gap"``      :math:`\max_{k,g,h}(\gamma_g-\gamma_h)-\varepsilon`  1
``"abs_diff"``     :math:`|\gamma_0 - \gamma_1| - \varepsilon`   :math:`K` (S = 2)
=================  ===========================================  =================

A group whose denominator is zero in a batch (absent, or e.g. without positive labels for
TPR) has no statistic there: fairret reports 0, which would read as a violation. Here every
row involving it is *inactive*: its value is a detached 0, which moves no multiplier of a
plain dual step (:math:`\lambda + \eta\cdot 0`) and gives no gradient; the returned
:class:`ConstraintValues` says which rows were inactive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from fairret.statistic import LinearFractionalStatistic, StackedLinearFractionalStatistic
from torch import Tensor

from .groups import Groups

__all__ = ["ConstraintValues", "FairnessConstraint", "statistic_by_name", "STATISTICS"]

#: Short names used in row names, and the classes they stand for.
STATISTICS = {
    "PositiveRate": "PR",
    "TruePositiveRate": "TPR",
    "FalsePositiveRate": "FPR",
    "PositivePredictiveValue": "PPV",
    "FalseOmissionRate": "FOR",
    "Accuracy": "ACC",
    "FScore": "F",
    "FalseNegativeFalsePositiveFraction": "FNFP",
}
_MODES = ("pairwise", "overall", "max_gap", "abs_diff")
_LABELLED = {"TruePositiveRate", "FalsePositiveRate", "PositivePredictiveValue",
             "FalseOmissionRate", "Accuracy", "FScore", "FalseNegativeFalsePositiveFraction"}


def statistic_by_name(name: str) -> LinearFractionalStatistic:
    """A fairret statistic from its class name; ``"A+B"`` stacks several."""
    import fairret.statistic as fs

    parts = [p.strip() for p in name.split("+")]
    stats = []
    for p in parts:
        cls = getattr(fs, p, None)
        if p not in STATISTICS or cls is None:
            raise ValueError(f"statistic: expected one of {sorted(STATISTICS)} (or several "
                             f"joined by '+'), got {p!r}")
        stats.append(cls())
    return stats[0] if len(stats) == 1 else StackedLinearFractionalStatistic(*stats)


def _parts(stat: LinearFractionalStatistic) -> list[LinearFractionalStatistic]:
    if isinstance(stat, StackedLinearFractionalStatistic):
        return list(stat.statistics)
    return [stat]


@dataclass
class ConstraintValues:
    """One batch's constraint rows (inequalities, ``<= 0``) and what they came from."""

    values: Tensor  #: (m,), differentiable where active, detached 0 where inactive
    active: Tensor  #: (m,) bool
    names: list[str]
    statistics: Tensor  #: (K, S) per-group statistics (0 where undefined)
    defined: Tensor  #: (K, S) bool: the group's denominator was positive
    overall: Tensor  #: (K,) the statistic over the whole batch

    @property
    def inactive_names(self) -> list[str]:
        """Names of the rows that contributed nothing (needs a host read)."""
        return [n for n, a in zip(self.names, self.active.tolist()) if not a]


class FairnessConstraint:
    """Constraint rows comparing a statistic across groups, for a dual optimizer.

    Args:
        statistic: a fairret linear-fractional statistic (instance, class, or class name;
            ``"TruePositiveRate+FalsePositiveRate"`` stacks), or a user-defined subclass of
            :class:`fairret.statistic.LinearFractionalStatistic`.
        groups: group names (one attribute), a number of groups, or ``{attribute: values}``
            whose intersections become the groups.
        mode: ``"pairwise"``, ``"overall"``, ``"max_gap"`` or ``"abs_diff"`` (see the module).
        eps: the tolerance :math:`\\varepsilon \\ge 0`.
        pred: ``"logits"`` (default, as fairret's losses) or ``"probabilities"``.
        threshold: decision threshold on probabilities for :meth:`decisions`.

    ``constraint(pred, sens, labels)`` returns :class:`ConstraintValues`; pass ``.values`` to
    ``dual.forward_update(loss, ...)``. ``constraint.decisions(...)`` gives the same rows on
    thresholded decisions (no gradient), for ``dual_constraints=``.
    """

    def __init__(
        self,
        statistic: LinearFractionalStatistic | type | str = "PositiveRate",
        groups: Sequence[str] | int | Mapping[str, Sequence[str]] = 2,
        *,
        mode: str = "pairwise",
        eps: float = 0.05,
        pred: str = "logits",
        threshold: float = 0.5,
    ) -> None:
        if isinstance(statistic, str):
            statistic = statistic_by_name(statistic)
        elif isinstance(statistic, type):
            statistic = statistic()
        if not isinstance(statistic, LinearFractionalStatistic):
            raise ValueError(f"statistic: expected a fairret LinearFractionalStatistic, got "
                             f"{type(statistic).__name__}")
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
        if not eps >= 0:
            raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
        if pred not in ("logits", "probabilities"):
            raise ValueError(f"pred: expected 'logits' or 'probabilities', got {pred!r}")
        self.groups = (Groups.intersections(groups) if isinstance(groups, Mapping)
                       else Groups.named(groups))
        if mode == "abs_diff" and self.groups.S != 2:
            raise ValueError(f"mode 'abs_diff' compares exactly 2 groups, got {self.groups.S}: "
                             f"{list(self.groups.names)}; use 'pairwise' or 'max_gap'")
        self.statistic = statistic
        self.parts = _parts(statistic)
        self.short = [STATISTICS.get(type(p).__name__, type(p).__name__) for p in self.parts]
        self.needs_labels = any(type(p).__name__ in _LABELLED for p in self.parts)
        self.mode = mode
        self.eps = float(eps)
        self.pred = pred
        self.threshold = float(threshold)
        self._rows = self._row_index()

    @property
    def statistic_names(self) -> list[str]:
        return list(self.short)

    def _row_index(self) -> tuple[list[str], list[tuple[int, int, int, int]]]:
        """Row names and (k, g, h, sign) for the linear modes; g or h = -1 means overall."""
        names, rows = [], []
        G = self.groups.names
        for k, s in enumerate(self.short):
            if self.mode == "pairwise":
                for g in range(len(G)):
                    for h in range(len(G)):
                        if g != h:
                            names.append(f"{s}[{G[g]}] - {s}[{G[h]}]")
                            rows.append((k, g, h, 1))
            elif self.mode == "overall":
                for g in range(len(G)):
                    names.append(f"{s}[{G[g]}] - {s}[overall]")
                    rows.append((k, g, -1, 1))
                    names.append(f"{s}[overall] - {s}[{G[g]}]")
                    rows.append((k, -1, g, 1))
            elif self.mode == "abs_diff":
                names.append(f"|{s}[{G[0]}] - {s}[{G[1]}]|")
                rows.append((k, 0, 1, 0))
        if self.mode == "max_gap":
            names.append(f"max gap of {'/'.join(self.short)}")
        return names, rows

    @property
    def names(self) -> list[str]:
        """Readable row names, in the order of the values (line up with the dual's groups)."""
        return list(self._rows[0])

    @property
    def m(self) -> int:
        return len(self._rows[0])

    # ------------------------------------------------------------------ values
    def _probabilities(self, pred: Tensor) -> Tensor:
        if not isinstance(pred, Tensor) or not pred.is_floating_point():
            raise ValueError(f"pred: expected a floating tensor, got "
                             f"{getattr(pred, 'dtype', type(pred).__name__)}")
        if pred.dim() > 2 or (pred.dim() == 2 and pred.shape[1] != 1):
            raise ValueError(f"pred: expected shape (N,) or (N, 1), got {tuple(pred.shape)}")
        p = pred.reshape(-1, 1)
        return torch.sigmoid(p) if self.pred == "logits" else p

    def _labels(self, labels: Tensor | None, n: int, dtype: torch.dtype) -> Tensor | None:
        if not self.needs_labels:
            return None if labels is None else labels.reshape(-1, 1).to(dtype)
        if labels is None:
            raise ValueError(f"labels: statistic(s) {self.short} need labels, got None")
        if labels.numel() != n:
            raise ValueError(f"labels: expected {n} values, got shape {tuple(labels.shape)}")
        return labels.reshape(-1, 1).to(dtype)

    def _compute(self, prob: Tensor, sens: Tensor, labels: Tensor | None) -> ConstraintValues:
        n = prob.shape[0]
        onehot = self.groups.one_hot(sens, prob.dtype)
        if onehot.shape[0] != n:
            raise ValueError(f"sens: expected {n} rows (one per prediction), got "
                             f"{onehot.shape[0]}")
        y = self._labels(labels, n, prob.dtype)
        args = () if y is None or not self.needs_labels else (y,)
        nums, dens = [], []
        for part in self.parts:
            nums.append(part.num(prob, onehot, *args))
            dens.append(part.denom(prob, onehot, *args))
        num, den = torch.stack(nums), torch.stack(dens)  # (K, S)
        defined = den > 0
        # A safe denominator: 0/0 must give neither NaN values nor NaN gradients.
        stats = num / torch.where(defined, den, torch.ones_like(den))
        stats = torch.where(defined, stats, torch.zeros_like(stats))
        onum, oden = num.sum(-1), den.sum(-1)
        odef = oden > 0
        overall = torch.where(odef, onum / torch.where(odef, oden, torch.ones_like(oden)),
                              torch.zeros_like(oden))
        values, active = self._rows_from(stats, defined, overall, odef)
        values = torch.where(active, values, torch.zeros_like(values).detach())
        return ConstraintValues(values, active, self.names, stats, defined, overall)

    def _rows_from(self, stats: Tensor, defined: Tensor, overall: Tensor, odef: Tensor
                   ) -> tuple[Tensor, Tensor]:
        eps = self.eps
        if self.mode == "max_gap":
            hi = torch.where(defined, stats, torch.full_like(stats, -torch.inf)).amax(-1)
            lo = torch.where(defined, stats, torch.full_like(stats, torch.inf)).amin(-1)
            ok = defined.sum(-1) >= 2
            gap = torch.where(ok, hi - lo, torch.full_like(hi, -torch.inf)).amax()
            active = ok.any().reshape(1)
            return torch.where(active, gap - eps, torch.zeros_like(gap)).reshape(1), active
        k = torch.tensor([r[0] for r in self._rows[1]], device=stats.device)
        g = torch.tensor([r[1] for r in self._rows[1]], device=stats.device)
        h = torch.tensor([r[2] for r in self._rows[1]], device=stats.device)
        # Column S of the extended tables is the overall statistic.
        ext = torch.cat([stats, overall.unsqueeze(-1)], -1)
        ext_def = torch.cat([defined, odef.unsqueeze(-1)], -1)
        S = stats.shape[-1]
        gi = torch.where(g < 0, S, g)
        hi = torch.where(h < 0, S, h)
        diff = ext[k, gi] - ext[k, hi]
        active = ext_def[k, gi] & ext_def[k, hi]
        if self.mode == "abs_diff":
            diff = diff.abs()
        return diff - eps, active

    def __call__(self, pred: Tensor, sens: Tensor, labels: Tensor | None = None
                 ) -> ConstraintValues:
        """Rows on the (differentiable) probabilities of ``pred``."""
        return self._compute(self._probabilities(pred), sens, labels)

    def decisions(self, pred: Tensor, sens: Tensor, labels: Tensor | None = None
                  ) -> ConstraintValues:
        """The same rows on thresholded decisions (no gradient): proxy values for the dual
        step (``dual_constraints=``) when decision-level fairness is what must hold."""
        with torch.no_grad():
            prob = self._probabilities(pred)
            return self._compute((prob >= self.threshold).to(prob.dtype), sens, labels)
