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

**Cost.** The numerators and denominators of every statistic and group come from one matrix
product :math:`L^\top M` of the batch's linear terms :math:`L` (one column per numerator or
denominator that depends on the batch) and its ``(N, S)`` membership :math:`M`; the rows are
then a few element-wise operations on ``(K, S)`` tensors, with precomputed index tensors
(plain differences for two groups). No step reads a tensor on the host unless ``validate``
asks for it (by default only on CPU, where a read synchronises nothing).

**Absent groups.** A group whose denominator is zero in a batch (absent, or e.g. without
positive labels for TPR) has no statistic there: fairret reports 0, which would read as a
violation. Here its statistic is NaN, :attr:`ConstraintValues.absent` marks it, and every row
involving it is *inactive*:

* ``inactive="zero"`` (default): its value is a detached 0. A plain projected dual step
  :math:`\lambda \leftarrow [\lambda + \eta \cdot 0]_+` leaves the multiplier unchanged,
  ALM's ``restart`` (which fires on :math:`c < 0`) does not fire, and no gradient flows.
  With ALM *momentum* the buffer still decays, :math:`b \leftarrow \mu b`, so the multiplier
  moves by :math:`\eta\mu b`; use ``inactive="nan"`` to avoid that.
* ``inactive="nan"``: its value is NaN; a dual optimizer built with ``check_finite=False``
  masks it out of the dual step (multipliers and buffers untouched) and out of the
  Lagrangian. (With the default ``check_finite=True`` the dual optimizer raises instead.)

**Non-finite inputs: NaN is never fair.** A NaN or infinite prediction (logit or
probability) or label makes the statistic of every group NaN (the sums are matrix products,
where :math:`0 \cdot \mathrm{NaN} = \mathrm{NaN}`), a non-finite membership weight that of its
group; every row comparing a NaN statistic is NaN and *active* (a NaN is not an absent
group). Absence takes precedence: a row that involves an absent group stays inactive. So the
dual optimizer's default ``check_finite=True`` raises naming the constraint group and row,
``check_finite=False`` masks the rows explicitly, and a report built from the rows
(:meth:`ConstraintValues.largest_gap`) is NaN -- never a satisfied constraint. The overall
statistic is NaN for a non-finite prediction or label. Pass ``validate=True`` for an error at
the constraint itself.

**Proxy constraints.** :meth:`FairnessConstraint.decisions` computes the same rows on the
thresholded decisions :math:`[p \ge t]`: non-differentiable, but what decision-level fairness
is about. Feed them to the dual step and the smooth rows to the Lagrangian (Cotter et al.,
JMLR 2019)::

    rows = fc(logit, sens, y)
    dual.forward_update(loss, rows.values, dual_constraints=fc.decisions(logit, sens, y).values)
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from fairret.statistic import LinearFractionalStatistic
from torch import Tensor

from .._validation import check_choice, check_real, fail
from ._checks import Reads, Shown, check_validate, kind
from ._statistics import STATISTICS, parts_of, statistic_by_name, takes_arguments
from .constraint_values import (
    Coef,
    ConstraintValues,
    is_linear,
    is_real,
    linear_combination,
    linear_statistics,
    ratio_statistics,
)
from .groups import Groups, GroupsLike

__all__ = ["ConstraintValues", "FairnessConstraint", "statistic_by_name", "STATISTICS"]

logger = logging.getLogger("humancompatible_train")

_MODES = ("pairwise", "overall", "max_gap", "abs_diff")
_INACTIVE = ("zero", "nan")


def _fast_statistics(a: float, b: float, member: Tensor, inv: Tensor, p: Tensor) -> Tensor:
    """(1, 2) statistics of the fast path: a n_g / d_g + b (s_g . p) / d_g per group, for
    the membership ``member`` and the safe denominators ``inv`` = d_g."""
    return ((a * member.sum(0) + b * (p.reshape(-1) @ member)) / inv).unsqueeze(0)


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
        eps: the tolerance :math:`\varepsilon \ge 0`, finite.
        pred: ``"logits"`` (default, as fairret's losses) or ``"probabilities"``.
        threshold: decision threshold on probabilities for :meth:`decisions`
            (decision :math:`= [p \ge t]`).
        inactive: value of inactive rows: ``"zero"`` (default; a detached 0) or ``"nan"``
            (for a dual optimizer built with ``check_finite=False``, which then masks the rows
            out of the dual step entirely, momentum buffers included).
        name: the name of the dual optimizer's constraint group (:meth:`add_to`,
            :meth:`ConstraintValues.as_dict`).
        validate: checks of the batch's *values* (shapes and dtypes are always checked, for
            free): group ids in range, membership weights in [0, 1], labels in [0, 1] for
            fairret's statistics (they weigh rows by them), probabilities in [0, 1].
            ``None`` (default): on CPU tensors (one read, a few microseconds), not on
            accelerators (no host synchronisation in the training step); non-finite values
            are not errors here, they make the rows NaN (see the module). ``True``: on every
            device (one host read per call), and non-finite values raise here. ``False``:
            never.

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
        validate: bool | None = None,
    ) -> None:
        if isinstance(statistic, str):
            statistic = statistic_by_name(statistic)
        elif isinstance(statistic, type):
            if not issubclass(statistic, LinearFractionalStatistic):
                raise fail("statistic", "a fairret LinearFractionalStatistic",
                           Shown(f"the class {statistic.__name__}"))
            statistic = statistic()
        if not isinstance(statistic, LinearFractionalStatistic):
            raise fail("statistic", "a fairret LinearFractionalStatistic", kind(statistic))
        self.mode = check_choice("mode", mode, _MODES)
        self.eps = eps
        self.pred = check_choice("pred", pred, ("logits", "probabilities"))
        self.threshold = threshold
        self.inactive = check_choice("inactive", inactive, _INACTIVE)
        self.validate = check_validate(validate)
        self.groups = Groups.parse(groups)
        if mode == "abs_diff" and self.groups.S != 2:
            raise ValueError(f"mode 'abs_diff' compares exactly 2 groups, got {self.groups.S}: "
                             f"{list(self.groups.names)}; use 'pairwise' or 'max_gap'")
        self.statistic = statistic
        self.parts = parts_of(statistic)
        self.short = [STATISTICS.get(type(p).__name__, type(p).__name__) for p in self.parts]
        self._takes = [takes_arguments(p) for p in self.parts]
        self.needs_labels = any(t is True for t in self._takes)
        self._labels_unused = all(t is False for t in self._takes)
        # fairret's own statistics weigh rows by their labels: those must lie in [0, 1].
        self._label_weights = any(t is True and type(p).__module__.startswith("fairret.")
                                  for p, t in zip(self.parts, self._takes))
        self.name = str(name) if name is not None else f"{'+'.join(self.short)} {mode}"
        # The canonical-form coefficients of a statistic without arguments are constants.
        self._coef = [None if t is not False else (p.num_intercept(), p.num_slope(),
                                                     p.denom_intercept(), p.denom_slope())
                      for p, t in zip(self.parts, self._takes)]
        self._rows = self._row_index()
        self._names = tuple(self._rows[0])
        self._two_groups = self.groups.S == 2 and mode in ("abs_diff", "pairwise")
        self._fill = torch.nan if inactive == "nan" else 0.0
        # The fast path: two groups and a statistic of constant coefficients without
        # labels (the positive rate) -- a few tensor operations, one of them in the graph.
        coef = self._coef[0] if len(self._coef) == 1 else None
        self._fast = coef if (self._two_groups and coef is not None and is_linear([coef])
                              and all(is_real(c) for c in coef)) else None
        self._fast_cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, float]] = {}
        self._index_cache: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}
        logger.debug("%r: rows %s", self, self.names)

    def __repr__(self) -> str:
        return (f"FairnessConstraint({'+'.join(self.short)}, groups={list(self.groups.names)}, "
                f"mode={self.mode!r}, eps={self.eps}, m={self.m})")

    @property
    def eps(self) -> float:
        r"""The tolerance :math:`\varepsilon` (finite, >= 0; checked whenever it is set)."""
        return self._eps

    @eps.setter
    def eps(self, value: float) -> None:
        self._eps = check_real("eps", value, low=0.0)

    @property
    def threshold(self) -> float:
        """The decision threshold of :meth:`decisions` (in [0, 1]; checked whenever set)."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = check_real("threshold", value, low=0.0, high=1.0)

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

    # ------------------------------------------------------------------ inputs
    def _inputs(self, pred: Tensor, sens: Tensor, labels: Tensor | None
                ) -> tuple[Tensor, Tensor, Tensor | None, bool]:
        """(pred (N, 1) detached, membership (N, S), labels (N, 1) or None, whether the
        values were read and found finite); every check runs here, before any computation."""
        if not isinstance(pred, Tensor) or not pred.is_floating_point():
            raise fail("pred", f"a floating tensor of {self.pred}", kind(pred))
        if pred.dim() > 2 or (pred.dim() == 2 and pred.shape[1] != 1):
            raise fail("pred", "shape (N,) or (N, 1)", tuple(pred.shape))
        z = pred.detach().reshape(-1, 1)
        n, device = z.shape[0], z.device
        reads = Reads(self.validate, device)
        if not isinstance(sens, Tensor):
            raise fail("sens", "a tensor", kind(sens))
        if sens.device != device:
            raise fail("sens", f"a tensor on pred's device {device}",
                       Shown(f"device {sens.device}"))
        member = self.groups.membership(sens, z.dtype, reads)
        if member.shape[0] != n:
            raise fail("sens", f"{n} rows (one per prediction)", member.shape[0])
        y = self._labels(labels, n, z, reads)
        if self.pred == "probabilities":
            reads.span("pred", z, 0.0, 1.0, "probabilities",
                       hint=" (pass pred='logits' for logits)")
        else:
            reads.finite("pred", z, "logits")
        reads.run()
        return z, member, y, reads.proven_finite

    def _labels(self, labels: Tensor | None, n: int, z: Tensor, reads: Reads | None
                ) -> Tensor | None:
        """(N, 1) labels for the statistics, checked; None when no statistic takes them
        (labels given anyway get the free checks only: their values are never used)."""
        if labels is None:
            if self.needs_labels:
                raise fail("labels", f"labels for statistic(s) {self.short}", None)
            return None
        if not isinstance(labels, Tensor) or labels.is_complex():
            raise fail("labels", "a real tensor", kind(labels))
        if labels.numel() != n:
            raise fail("labels", f"{n} values (one per prediction)",
                       Shown(f"shape {tuple(labels.shape)}"))
        if labels.device != z.device:
            raise fail("labels", f"a tensor on pred's device {z.device}",
                       Shown(f"device {labels.device}"))
        if reads is None or self._labels_unused:
            return None
        y = labels.detach().reshape(-1, 1).to(z.dtype)
        if self._label_weights:
            reads.span("labels", y, 0.0, 1.0, "labels",
                       hint=f" ({'/'.join(self.short)} weighs rows by them)")
        else:
            reads.finite("labels", y, "labels")
        return y

    # ------------------------------------------------------------------ values
    def _tables(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(k, g, h) row indices on ``like``'s device (g or h = S: the overall statistic)."""
        cached = self._index_cache.get(like.device)
        if cached is None:
            rows = self._rows[1] or [(0, 0, 0)]
            S, device = self.groups.S, like.device
            k = torch.tensor([r[0] for r in rows], device=device)
            g = torch.tensor([S if r[1] < 0 else r[1] for r in rows], device=device)
            h = torch.tensor([S if r[2] < 0 else r[2] for r in rows], device=device)
            cached = self._index_cache[like.device] = (k, g, h)
        return cached

    def _coefs(self, y: Tensor | None) -> list[Coef]:
        """(a, b, c, d) of every statistic for this batch (constants are kept from __init__)."""
        out = []
        for part, takes, coef in zip(self.parts, self._takes, self._coef):
            if coef is None:
                args = () if y is None or takes is False else (y,)
                coef = (part.num_intercept(*args), part.num_slope(*args),
                        part.denom_intercept(*args), part.denom_slope(*args))
            out.append(coef)
        return out

    def _compute(self, p: Tensor, member: Tensor, y: Tensor | None) -> ConstraintValues:
        """The rows from the (N,) probabilities (or decisions) ``p`` and the (N, S)
        membership (see :mod:`.constraint_values` for the two kernels)."""
        coefs, eps = self._coefs(y), self.eps
        member_t = member.T
        overall: tuple[Any, ...] = (coefs, p, self.short)
        linear = is_linear(coefs)
        if linear and self._two_groups:
            # Two groups: fold the [1, -1] difference into the coefficients, so the whole
            # constraint is one product with p in the autograd graph.
            A, B, absent = linear_statistics(coefs, member_t, p, self.short)
            rb = B[:, 0] - B[:, 1]
            ra = None if A is None else A[:, 0] - A[:, 1]
            inactive = absent.any(1)
            if self.mode == "pairwise":
                rb = torch.stack([rb, -rb], 1).reshape(2 * rb.shape[0], rb.shape[1])
                ra = None if ra is None else torch.stack([ra, -ra], 1).reshape(-1)
                inactive = inactive.repeat_interleave(2)
            values = rb @ p if ra is None else torch.addmv(ra, rb, p)
            values = values.abs() - eps if self.mode == "abs_diff" else values - eps
            values = torch.where(inactive, self._fill, values)
            return ConstraintValues(values, inactive, self._names, self.name, eps,
                                    (linear_combination, (A, B, p)), absent, overall)
        if self.mode == "overall":  # the overall statistic as group S: one computation
            member_t = torch.cat([member_t, torch.ones_like(p).unsqueeze(0)], 0)
        if linear:
            A, B, absent = linear_statistics(coefs, member_t, p, self.short)
            raw = linear_combination(A, B, p)
        else:
            raw, absent = ratio_statistics(coefs, member_t, p, self.short)
        S = self.groups.S
        if self.mode == "overall":
            overall = (raw[:, S], absent[:, S])
        if self.mode == "max_gap":
            hi = torch.where(absent, -torch.inf, raw).amax(1)
            lo = torch.where(absent, torch.inf, raw).amin(1)
            ok = (~absent).sum(1) >= 2
            gap = torch.where(ok, hi - lo, -torch.inf).amax()  # NaN statistics propagate
            values, inactive = (gap - eps).reshape(1), ~ok.any().reshape(1)
        else:
            k, g, h = self._tables(raw)
            values = raw[k, g] - raw[k, h]
            if self.mode == "abs_diff":
                values = values.abs()
            values = values - eps
            inactive = absent[k, g] | absent[k, h]
        values = torch.where(inactive, self._fill, values)
        return ConstraintValues(values, inactive, self._names, self.name, eps, raw[:, :S],
                                absent[:, :S], overall)

    def _fast_path(self, pred: Tensor, sens: Tensor) -> ConstraintValues | None:
        """The rows for two groups and a constant-coefficient statistic, or None when the
        inputs need the general path (other layouts, or a check that fails: the general
        path then raises with the full message). The same maths as :meth:`_compute`."""
        if not (isinstance(pred, Tensor) and isinstance(sens, Tensor)):
            return None
        shape, dtype, device = pred.shape, pred.dtype, pred.device
        if not dtype.is_floating_point or sens.device != device or not (
                len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            return None
        n = shape[0]
        if sens.dtype == dtype and sens.shape == (n, 2):
            member, ids = sens, None
        elif sens.shape == (n,) and not (sens.is_floating_point() or sens.is_complex()):
            ids = sens.long()
            member = (ids.unsqueeze(1) == torch.arange(2, device=device)).to(dtype)
        else:
            return None
        validate = self.validate
        finite = False
        if n and (validate is True or (validate is None and device.type == "cpu")):
            lo, hi = torch.aminmax(member if ids is None else ids)
            z = pred.detach()
            # Logits: their sum is finite when every logit is (a finite sum that overflows
            # only costs the NaN guard); probabilities: their range.
            reads = [lo, hi, z.sum()] if self.pred == "logits" else [lo, hi, *torch.aminmax(z)]
            if device.type == "cpu":
                got = [x.item() for x in reads]
            else:
                got = torch.stack([x.to(torch.float64) for x in reads]).tolist()
            if not (got[0] >= 0 and got[1] <= 1):
                return None  # out of range or NaN memberships: the general path says which
            if len(got) == 4 and not (got[2] >= 0 and got[3] <= 1):
                return None  # probabilities out of range (or NaN)
            finite = math.isfinite(got[2])
            if not finite and validate is True:
                return None
        a, b, c, _ = self._fast
        cached = self._fast_cache.get((device, dtype))
        if cached is None:
            # Column r: the coefficients of row r over the two groups (the names' order).
            sign = [b, -b] if self.mode == "abs_diff" else [[b, -b], [-b, b]]
            cached = self._fast_cache[(device, dtype)] = (
                torch.tensor(sign, dtype=dtype, device=device), torch.finfo(dtype).tiny)
        pm, tiny = cached
        counts = member.sum(0)
        den = counts if c == 1 else counts * c
        # Per-row coefficients of the rows (no gradient): the difference of the group means,
        # member @ (pm / n_g); an absent group (n_g = 0) has no member, its share is 0.
        inv = den.clamp_min(tiny)
        rows = member @ (pm / inv if pm.dim() == 1 else pm / inv.unsqueeze(1))
        # An (N, 1) prediction stays a column for abs_diff: (N,) @ (N, 1) is the (1,) row.
        column = self.mode == "abs_diff" and len(shape) == 2
        p = self._probabilities(pred, finite, flat=not column)
        values = rows @ p if column else p @ rows  # the only product in the autograd graph
        if self.mode == "abs_diff":
            values = values.abs()
        # With both groups present the intercept a cancels in the difference; with one
        # absent the row is inactive and its value replaced.
        absent = den == 0
        inactive = absent.any(0, keepdim=True)  # (1,): where() broadcasts a 0-d value
        if self.mode == "pairwise":
            inactive = inactive.expand(2)
        values = torch.where(inactive, self._fill, values - self.eps)
        return ConstraintValues(values, inactive, self._names, self.name, self.eps,
                                (_fast_statistics, (a, b, member, inv, p)), absent,
                                ([self._fast], p, self.short))

    def _probabilities(self, pred: Tensor, finite: bool, flat: bool = True) -> Tensor:
        """(N,) probabilities (``pred``'s shape unless ``flat``), differentiable. The sigmoid
        maps an infinite logit to 0 or 1: unless the logits were read and found finite, a NaN
        guard keeps it non-finite."""
        z = pred.reshape(-1) if flat else pred
        if self.pred == "probabilities":
            return z  # NaN and infinities carry through the sums by themselves
        p = torch.sigmoid(z)
        return p if finite else p + z.detach() * 0

    def __call__(self, pred: Tensor, sens: Tensor, labels: Tensor | None = None
                 ) -> ConstraintValues:
        """Rows on the (differentiable) probabilities of ``pred``."""
        if self._fast is not None:
            if labels is not None and isinstance(pred, Tensor):
                self._labels(labels, pred.shape[0], pred, None)  # unused: free checks
            fast = self._fast_path(pred, sens)
            if fast is not None:
                return fast
        _, member, y, finite = self._inputs(pred, sens, labels)
        return self._compute(self._probabilities(pred, finite), member, y)

    def decisions(self, pred: Tensor, sens: Tensor, labels: Tensor | None = None
                  ) -> ConstraintValues:
        r"""The same rows on thresholded decisions :math:`[p \ge t]` (no gradient): proxy
        values for the dual step (``dual_constraints=``) when decision-level fairness is what
        must hold, while the smooth rows of :meth:`__call__` feed the Lagrangian."""
        with torch.no_grad():
            _, member, y, finite = self._inputs(pred, sens, labels)
            p = self._probabilities(pred, finite)
            # A NaN probability is no decision: it stays NaN (the comparison would say 0).
            decided = (p >= self.threshold).to(p.dtype) + p * 0
            return self._compute(decided, member, y)
