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

Here :math:`K` is the number of stacked statistics and :math:`S` the number of groups; the
overall statistic :math:`\gamma` is computed over every row of the batch. Row names such as
``PR[female] - PR[male]`` follow the order of the values, which is the order of the dual
optimizer's multipliers.

**Absent groups.** A group whose denominator is zero in a batch (absent, or e.g. without
positive labels for TPR) has no statistic there: fairret reports 0, which would read as a
violation. Here every row involving it is *inactive*:

* ``inactive="zero"`` (default): its value is a detached 0. A plain projected dual step
  :math:`\lambda \leftarrow [\lambda + \eta \cdot 0]_+` leaves the multiplier unchanged,
  ALM's ``restart`` (which fires on :math:`c < 0`) does not fire, and no gradient flows.
  With ALM *momentum* the buffer still decays, :math:`b \leftarrow \mu b`, so the multiplier
  moves by :math:`\eta\mu b`; use ``inactive="nan"`` to avoid that.
* ``inactive="nan"``: its value is NaN; a dual optimizer built with ``check_finite=False``
  masks it out of the dual step (multipliers and buffers untouched) and out of the
  Lagrangian. (With the default ``check_finite=True`` the dual optimizer raises instead.)

:class:`ConstraintValues` reports which rows were inactive. No step of the computation reads
a tensor on the host, so it does not synchronise an accelerator.

**Proxy constraints.** :meth:`FairnessConstraint.decisions` computes the same rows on the
thresholded decisions :math:`[p \ge t]`: non-differentiable, but what decision-level fairness
is about. Feed them to the dual step and the smooth rows to the Lagrangian (Cotter et al.,
JMLR 2019)::

    rows = fc(logit, sens, y)
    dual.forward_update(loss, rows.values, dual_constraints=fc.decisions(logit, sens, y).values)
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from fairret.statistic import LinearFractionalStatistic, StackedLinearFractionalStatistic
from torch import Tensor

from .groups import Groups, GroupsLike

__all__ = ["ConstraintValues", "FairnessConstraint", "statistic_by_name", "STATISTICS"]

logger = logging.getLogger("humancompatible_train")

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
_INACTIVE = ("zero", "nan")


def statistic_by_name(name: str) -> LinearFractionalStatistic:
    """A fairret statistic from its class name; ``"A+B"`` stacks several."""
    import fairret.statistic as fs

    if not isinstance(name, str):
        raise ValueError(f"statistic: expected a name, got {type(name).__name__}")
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
    """The statistics of a (possibly nested) stack, in order."""
    if isinstance(stat, StackedLinearFractionalStatistic):
        return [q for p in stat.statistics for q in _parts(p)]
    return [stat]


def _takes_arguments(stat: LinearFractionalStatistic) -> bool | None:
    """Whether the statistic's canonical form takes arguments (labels); None if unknown."""
    sig = getattr(type(stat), "expected_signature", None)
    if not isinstance(sig, inspect.Signature):
        return None
    params = [p for p in sig.parameters.values() if p.name != "self"]
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


@dataclass
class ConstraintValues:
    """One batch's constraint rows (inequalities, ``<= 0``) and what they came from.

    Pass :attr:`values` (or :meth:`as_dict` when the dual optimizer has several named groups)
    to the dual optimizer.
    """

    values: Tensor  #: (m,) differentiable where active; detached 0 (or NaN) where inactive
    active: Tensor  #: (m,) bool: every group the row involves has a defined statistic
    names: list[str]  #: (m,) row names, e.g. ``"PR[female] - PR[male]"``
    statistics: Tensor  #: (K, S) per-group statistics (0 where undefined)
    defined: Tensor  #: (K, S) bool: the group's denominator was positive in the batch
    overall: Tensor  #: (K,) the statistic over the whole batch
    group: str = "fairness"  #: the dual optimizer's constraint group these rows belong to

    @property
    def inactive_names(self) -> list[str]:
        """Names of the rows that contributed nothing (reads ``active`` on the host)."""
        return [n for n, a in zip(self.names, self.active.tolist()) if not a]

    def as_dict(self) -> dict[str, Tensor]:
        """``{group: values}``: the dual optimizer's dict layout."""
        return {self.group: self.values}

    def named(self) -> dict[str, float]:
        """``{row name: value}`` for logging (reads the values on the host)."""
        return dict(zip(self.names, self.values.detach().tolist()))


class FairnessConstraint:
    r"""Constraint rows comparing a statistic across groups, for a dual optimizer.

    Args:
        statistic: a fairret linear-fractional statistic (instance, class, or class name;
            ``"TruePositiveRate+FalsePositiveRate"`` stacks), or a user-defined subclass of
            :class:`fairret.statistic.LinearFractionalStatistic`. A statistic whose canonical
            form takes an argument receives the labels.
        groups: group names (one attribute), a number of groups, or ``{attribute: values}``
            whose intersections become the groups.
        mode: ``"pairwise"``, ``"overall"``, ``"max_gap"`` or ``"abs_diff"`` (see the module).
        eps: the tolerance :math:`\varepsilon \ge 0`.
        pred: ``"logits"`` (default, as fairret's losses) or ``"probabilities"``.
        threshold: decision threshold on probabilities for :meth:`decisions`
            (decision :math:`= [p \ge t]`).
        inactive: value of inactive rows: ``"zero"`` (default; a detached 0) or ``"nan"``
            (for a dual optimizer built with ``check_finite=False``, which then masks the rows
            out of the dual step entirely, momentum buffers included).
        name: the name of the dual optimizer's constraint group (:meth:`add_to`,
            :meth:`ConstraintValues.as_dict`).

    ``constraint(pred, sens, labels)`` returns :class:`ConstraintValues`; pass ``.values`` to
    ``dual.forward_update(loss, ...)``. ``constraint.decisions(...)`` gives the same rows on
    thresholded decisions (no gradient), for ``dual_constraints=``.
    """

    def __init__(
        self,
        statistic: LinearFractionalStatistic | type | str = "PositiveRate",
        groups: GroupsLike = 2,
        *,
        mode: str = "pairwise",
        eps: float = 0.05,
        pred: str = "logits",
        threshold: float = 0.5,
        inactive: str = "zero",
        name: str | None = None,
    ) -> None:
        if isinstance(statistic, str):
            statistic = statistic_by_name(statistic)
        elif isinstance(statistic, type):
            if not issubclass(statistic, LinearFractionalStatistic):
                raise ValueError(f"statistic: expected a fairret LinearFractionalStatistic, "
                                 f"got the class {statistic.__name__}")
            statistic = statistic()
        if not isinstance(statistic, LinearFractionalStatistic):
            raise ValueError(f"statistic: expected a fairret LinearFractionalStatistic, got "
                             f"{type(statistic).__name__}")
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
        if pred not in ("logits", "probabilities"):
            raise ValueError(f"pred: expected 'logits' or 'probabilities', got {pred!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: expected a probability in [0, 1], got {threshold!r}")
        if inactive not in _INACTIVE:
            raise ValueError(f"inactive: expected one of {_INACTIVE}, got {inactive!r}")
        self.groups = Groups.parse(groups)
        if mode == "abs_diff" and self.groups.S != 2:
            raise ValueError(f"mode 'abs_diff' compares exactly 2 groups, got {self.groups.S}: "
                             f"{list(self.groups.names)}; use 'pairwise' or 'max_gap'")
        self.statistic = statistic
        self.parts = _parts(statistic)
        self.short = [STATISTICS.get(type(p).__name__, type(p).__name__) for p in self.parts]
        self._takes = [_takes_arguments(p) for p in self.parts]
        self.needs_labels = any(t is True for t in self._takes)
        self.mode = mode
        self.eps = float(eps)
        self.pred = pred
        self.threshold = float(threshold)
        self.inactive = inactive
        self.name = str(name) if name is not None else f"{'+'.join(self.short)} {mode}"
        self._rows = self._row_index()
        self._index_cache: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}
        logger.debug("%r: rows %s", self, self.names)

    def __repr__(self) -> str:
        return (f"FairnessConstraint({'+'.join(self.short)}, groups={list(self.groups.names)}, "
                f"mode={self.mode!r}, eps={self.eps}, m={self.m})")

    @property
    def statistic_names(self) -> list[str]:
        """Short names of the stacked statistics (``K`` of them)."""
        return list(self.short)

    def _row_index(self) -> tuple[list[str], list[tuple[int, int, int]]]:
        """Row names and (k, g, h) for the linear modes; g or h = -1 means overall."""
        names: list[str] = []
        rows: list[tuple[int, int, int]] = []
        G = self.groups.names
        for k, s in enumerate(self.short):
            if self.mode == "pairwise":
                for g in range(len(G)):
                    for h in range(len(G)):
                        if g != h:
                            names.append(f"{s}[{G[g]}] - {s}[{G[h]}]")
                            rows.append((k, g, h))
            elif self.mode == "overall":
                for g in range(len(G)):
                    names.append(f"{s}[{G[g]}] - {s}[overall]")
                    rows.append((k, g, -1))
                    names.append(f"{s}[overall] - {s}[{G[g]}]")
                    rows.append((k, -1, g))
            elif self.mode == "abs_diff":
                names.append(f"|{s}[{G[0]}] - {s}[{G[1]}]|")
                rows.append((k, 0, 1))
        if self.mode == "max_gap":
            names.append(f"max gap of {'/'.join(self.short)}")
        return names, rows

    @property
    def names(self) -> list[str]:
        """Readable row names, in the order of the values (and of the dual's multipliers)."""
        return list(self._rows[0])

    @property
    def m(self) -> int:
        """Number of constraint rows, known before the first batch."""
        return len(self._rows[0])

    def add_to(self, dual: Any, **hyperparameters: Any) -> None:
        """Register the rows as an inequality constraint group named :attr:`name` of the dual
        optimizer ``dual`` (``dual.add_constraint_group(m, name=..., is_ineq=True, ...)``);
        then pass ``rows.as_dict()`` (or ``{name: rows.values, ...}``) as its constraints."""
        hyperparameters.setdefault("is_ineq", True)
        dual.add_constraint_group(self.m, name=self.name, **hyperparameters)

    def dual_by_row(self, dual: Any) -> dict[str, float]:
        """``{row name: multiplier}`` of this constraint's group in ``dual`` (for logging)."""
        lam = dual.dual(self.name) if self.name in dual.names else None
        if lam is None:
            if dual.m != self.m:
                raise ValueError(f"dual: has no constraint group named {self.name!r} and "
                                 f"m={dual.m} multipliers, not this constraint's m={self.m}")
            lam = dual.duals
        return dict(zip(self.names, lam.detach().tolist()))

    # ------------------------------------------------------------------ values
    def _probabilities(self, pred: Tensor) -> Tensor:
        if not isinstance(pred, Tensor) or not pred.is_floating_point():
            raise ValueError(f"pred: expected a floating tensor of {self.pred}, got "
                             f"{getattr(pred, 'dtype', type(pred).__name__)}")
        if pred.dim() > 2 or (pred.dim() == 2 and pred.shape[1] != 1):
            raise ValueError(f"pred: expected shape (N,) or (N, 1), got {tuple(pred.shape)}")
        p = pred.reshape(-1, 1)
        return torch.sigmoid(p) if self.pred == "logits" else p

    def _labels(self, labels: Tensor | None, n: int, dtype: torch.dtype) -> Tensor | None:
        if labels is None:
            if self.needs_labels:
                raise ValueError(f"labels: statistic(s) {self.short} need labels, got None")
            return None
        if not isinstance(labels, Tensor):
            raise ValueError(f"labels: expected a tensor, got {type(labels).__name__}")
        if labels.numel() != n:
            raise ValueError(f"labels: expected {n} values (one per prediction), got shape "
                             f"{tuple(labels.shape)}")
        return labels.reshape(-1, 1).to(dtype)

    def _indices(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        cached = self._index_cache.get(device)
        if cached is None:
            rows = self._rows[1] or [(0, 0, 0)]
            S = self.groups.S
            k = torch.tensor([r[0] for r in rows], device=device)
            # Column S of the extended tables is the overall statistic.
            g = torch.tensor([S if r[1] < 0 else r[1] for r in rows], device=device)
            h = torch.tensor([S if r[2] < 0 else r[2] for r in rows], device=device)
            cached = self._index_cache[device] = (k, g, h)
        return cached

    @staticmethod
    def _ratio(num: Tensor, den: Tensor) -> tuple[Tensor, Tensor]:
        defined = den > 0
        # A safe denominator: 0/0 must give neither NaN values nor NaN gradients.
        safe = torch.where(defined, den, torch.ones_like(den))
        return torch.where(defined, num / safe, torch.zeros_like(num)), defined

    def _compute(self, prob: Tensor, sens: Tensor, labels: Tensor | None) -> ConstraintValues:
        n = prob.shape[0]
        onehot = self.groups.one_hot(sens, prob.dtype)
        if onehot.shape[0] != n:
            raise ValueError(f"sens: expected {n} rows (one per prediction), got "
                             f"{onehot.shape[0]}")
        y = self._labels(labels, n, prob.dtype)
        nums, dens, onums, odens = [], [], [], []
        for part, takes in zip(self.parts, self._takes):
            args = () if y is None or takes is False else (y,)
            nums.append(part.num(prob, onehot, *args))
            dens.append(part.denom(prob, onehot, *args))
            onums.append(part.num(prob, None, *args).reshape(()))
            odens.append(part.denom(prob, None, *args).reshape(()))
        stats, defined = self._ratio(torch.stack(nums), torch.stack(dens))  # (K, S)
        overall, odef = self._ratio(torch.stack(onums), torch.stack(odens))  # (K,)
        values, active = self._rows_from(stats, defined, overall, odef)
        fill = torch.full_like(values, torch.nan if self.inactive == "nan" else 0.0).detach()
        values = torch.where(active, values, fill)
        return ConstraintValues(values, active, self.names, stats, defined, overall, self.name)

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
        k, g, h = self._indices(stats.device)
        ext = torch.cat([stats, overall.unsqueeze(-1)], -1)
        ext_def = torch.cat([defined, odef.unsqueeze(-1)], -1)
        diff = ext[k, g] - ext[k, h]
        active = ext_def[k, g] & ext_def[k, h]
        if self.mode == "abs_diff":
            diff = diff.abs()
        return diff - eps, active

    def __call__(self, pred: Tensor, sens: Tensor, labels: Tensor | None = None
                 ) -> ConstraintValues:
        """Rows on the (differentiable) probabilities of ``pred``."""
        return self._compute(self._probabilities(pred), sens, labels)

    def decisions(self, pred: Tensor, sens: Tensor, labels: Tensor | None = None
                  ) -> ConstraintValues:
        r"""The same rows on thresholded decisions :math:`[p \ge t]` (no gradient): proxy
        values for the dual step (``dual_constraints=``) when decision-level fairness is what
        must hold, while the smooth rows of :meth:`__call__` feed the Lagrangian."""
        with torch.no_grad():
            prob = self._probabilities(pred)
            return self._compute((prob >= self.threshold).to(prob.dtype), sens, labels)
