r"""Hard constraints: the exact per-batch projection as a dual optimizer.

:class:`FairProjection` enforces group fairness *exactly on every batch* by projecting the
batch's predictions ``z`` (the large-batch regime of the fairness_training package's
``FairModel``):

.. math::

    q^\star = \arg\min_q \tfrac12\|q - z\|^2 \ \text{s.t.}\
    |\bar q_g - \bar q_h| \le \varepsilon\ \forall g, h,\quad lo \le q \le hi,

per label class for ``"equalized_odds"``, and :math:`|\bar q_g - \bar y_g| \le \varepsilon`
per group for ``"mean_residual"``. The box holds for every row, also in a batch (or label
class) with fewer than two groups, where it is the whole projection. The solver
(:mod:`~humancompatible_train._projection.solver`) is exact (KKT conditions, Boyd &
Vandenberghe, *Convex Optimization*, Cambridge University Press 2004, §5.5.3) and
differentiable, so a model trains through the projection as its last layer, as with a
differentiable optimization layer (Amos & Kolter, "OptNet", ICML 2017; Agrawal et al.,
"Differentiable Convex Optimization Layers", NeurIPS 2019) but in closed form.

Multipliers. The pairwise constraints are written with a band position :math:`t_k` per label
class: :math:`t_k - \bar q_g \le 0` and :math:`\bar q_g - t_k - \varepsilon \le 0`
(residual: :math:`\bar y_g - \varepsilon - \bar q_g \le 0` and
:math:`\bar q_g - \bar y_g - \varepsilon \le 0`). Their optimal multipliers for the last batch,
:math:`(\lambda^{low}_g, \lambda^{up}_g)` per (class, group) cell, are the optimizer's duals
(``m = 2 * K * S``, layout ``[class][group][low, up]``); they satisfy
:math:`\lambda^{low}_g - \lambda^{up}_g = n_g\delta_g` (the cell's size times its shift). With
two groups, the multiplier of the pairwise constraint :math:`\bar q_1 - \bar q_0 \le
\varepsilon` is :math:`\lambda^{up}_1 = \lambda^{low}_0`. They are multipliers of the
projection objective :math:`\tfrac12\|q - z\|^2` (a sum over the batch), not of a training
loss, so compare them with ALM's up to that scale.

In a training loop only the model's output changes, against ALM's::

    out, info = proj.project(model(x), s)
    loss = bce(out, y)
    lagr = proj.forward_update(loss)  # the loss itself
    lagr.backward()
    opt.step()

There is no dual step: :meth:`FairProjection.step` does nothing (the multipliers are set by
:meth:`FairProjection.project`), so generic code that steps every optimizer, and
learning-rate schedulers, work unchanged.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from .._projection.batch import Cells, Solution, host_branch, segment_sum
from .._projection.solver import project_cells
from .._validation import check_bool, check_bounds, check_choice, check_int, check_real, fail
from .base import ConstraintsLike, DualOptimizer

__all__ = ["FairProjection", "ProjectionInfo"]

logger = logging.getLogger("humancompatible_train")

_CONSTRAINTS = ("parity", "equalized_odds", "mean_residual")
_F64 = torch.float64


class ProjectionInfo:
    """What one projection did. Every attribute is a tensor on the predictions' device, made
    on first access (nothing is read back by the host); ``K`` is the number of label classes
    (2 for equalized odds, else 1), ``S`` of groups.

    Attributes:
        shifts: ``(K, S)`` each cell's shift :math:`\\delta` before the box.
        counts: ``(K, S)`` rows per cell.
        multipliers: ``(2*K*S,)`` the optimal multipliers, ``[class][group][low, up]``.
        band: ``(K,)`` the band's lower edge :math:`t_k`: every group mean of class ``k``
            lies in :math:`[t_k, t_k + \\varepsilon]` (when no constraint binds, one valid
            position). NaN for mean residual fairness and for a class with fewer than two
            groups.
        active: ``(K, S)`` bool, the cell's constraint binds (non-zero multiplier).
        box_active: 0-d bool, the prediction bounds changed the solution.
        unconstrained: 0-d bool, no fairness constraint could apply (fewer than two groups
            present in every class): the predictions were only clipped to the bounds (and
            came back as they were without bounds).
    """

    __slots__ = ("_sol",)

    def __init__(self, solution: Solution) -> None:
        self._sol = solution

    @property
    def shifts(self) -> Tensor:
        return self._sol.shifts

    @property
    def counts(self) -> Tensor:
        return self._sol.counts

    @property
    def multipliers(self) -> Tensor:
        return self._sol.multipliers

    @property
    def band(self) -> Tensor:
        return self._sol.band

    @property
    def active(self) -> Tensor:
        return self._sol.shifts != 0

    @property
    def box_active(self) -> Tensor:
        return self._sol.box_active

    @property
    def unconstrained(self) -> Tensor:
        return ~self._sol.changed.any()

    @property
    def reason(self) -> str:
        """Why no fairness constraint applied, or ``""`` (reads one flag from the device)."""
        if bool(self.unconstrained):
            return ("fewer than two groups present: nothing to compare, predictions only "
                    "clipped to the bounds (unchanged without bounds)")
        return ""

    def __repr__(self) -> str:
        return (f"ProjectionInfo(shifts={self.shifts}, counts={self.counts}, "
                f"multipliers={self.multipliers}, band={self.band}, "
                f"box_active={self.box_active}, unconstrained={self.unconstrained})")


class FairProjection(DualOptimizer):
    """Exact per-batch projection onto group-fairness constraints (hard constraints).

    Args:
        num_groups: number of groups ``S >= 1`` (ids ``0..S-1``; for intersections of
            attributes pass the id of each combination, e.g. from
            ``humancompatible_train.fairness.Groups.intersections(...).ids``).
        eps: tolerance :math:`\\varepsilon \\ge 0`.
        bounds: optional ``(lo, hi)`` prediction bounds, finite, ``lo < hi``.
        constraint: ``"parity"`` (mean-prediction parity), ``"equalized_odds"`` (parity
            within each label class, labels in {0, 1}) or ``"mean_residual"`` (each group's
            mean prediction within ``eps`` of its mean label).
        check_finite: validate every batch with one host read: finite predictions (and
            labels), labels in {0, 1} for equalized odds, integral float ids, one-hot rows.
            ``False`` skips that read (float ids are then rounded). Group ids outside
            ``0..S-1`` are refused either way (their check reads no value).
        device, dtype: where the multipliers live.
        name: name of the multiplier group (default ``"projection"``).
    """

    def __init__(self, num_groups: int, eps: float = 0.05, *,
                 bounds: tuple[float, float] | None = None, constraint: str = "parity",
                 check_finite: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, name: str = "projection") -> None:
        where = "FairProjection: "
        num_groups = check_int("num_groups", num_groups, minimum=1, where=where)
        eps = check_real("eps", eps, low=0.0, where=where)
        constraint = check_choice("constraint", constraint, _CONSTRAINTS, where=where)
        if bounds is not None:
            bounds = check_bounds("bounds", bounds, where=where)
        self.num_groups = num_groups
        self.eps = eps
        self.bounds = bounds
        self.constraint = constraint
        self.num_classes = 2 if constraint == "equalized_odds" else 1
        super().__init__(2 * self.num_classes * num_groups, {"lr": 0.0}, is_ineq=True,
                         name=name, device=device, dtype=dtype,
                         check_finite=check_bool("check_finite", check_finite, where=where))
        self._name = name

    # ------------------------------------------------------- the dual-optimizer API
    def _dual_step(self, group: dict[str, Any], state: dict[str, Any], c: Tensor) -> None:
        """No dual step: the multipliers are those of the last :meth:`project`."""

    def step(self, constraints: ConstraintsLike | None = None,  # type: ignore[override]
             dual_constraints: ConstraintsLike | None = None) -> None:
        """Nothing to do: :meth:`project` sets the multipliers exactly. Arguments are accepted
        and ignored, so that code stepping every optimizer (and learning-rate schedulers)
        treats this one like the others; step hooks run as for any optimizer."""

    def forward(self, loss: Tensor, constraints: ConstraintsLike | None = None) -> Tensor:
        """The loss itself: after :meth:`project` the constraints hold, so the Lagrangian
        term :math:`\\lambda^\\top c` is zero at the projection's multipliers.
        ``constraints`` is accepted (and ignored) so that an ALM loop needs no change."""
        self._check_loss(loss)
        return loss

    def forward_update(self, loss: Tensor, constraints: ConstraintsLike | None = None,
                       dual_constraints: ConstraintsLike | None = None) -> Tensor:
        """:meth:`step` (nothing) and :meth:`forward` (the loss itself)."""
        self._check_loss(loss)
        self.step(constraints, dual_constraints)
        return loss

    # ------------------------------------------------------------------ projection
    def project(self, z: Tensor, groups: Tensor, labels: Tensor | None = None
                ) -> tuple[Tensor, ProjectionInfo]:
        """Project a batch exactly; the optimal multipliers become this optimizer's duals.

        Args:
            z: predictions (scores, probabilities or regression outputs), (N,) or (N, 1).
            groups: group ids (N,) in ``0..S-1`` (integer, or integral floats), or a one-hot
                (N, S) tensor.
            labels: (N,) labels; needed for ``"equalized_odds"`` (0/1) and
                ``"mean_residual"``, ignored for ``"parity"``.

        Returns:
            ``(q, info)``: ``q`` shaped like ``z`` (differentiable in ``z``) and a
            :class:`ProjectionInfo`.

        Raises:
            ValueError: (nothing changed) NaN/Inf predictions, group ids out of range, missing
                or bad labels, or (mean residual with bounds) a group whose target range
                :math:`[\\bar y_g - \\varepsilon, \\bar y_g + \\varepsilon]` misses the
                achievable range ``[lo, hi]`` of its mean.
        """
        flat, g, y, checks = self._inputs(z, groups, labels)
        S, K = self.num_groups, self.num_classes
        ids = f"group ids in 0..{S - 1}"
        host = host_branch(flat.device)
        if self.check_finite and not host:
            # Before any indexing op: an id out of range would stop an accelerator's kernel.
            checks.append((((g < 0) | (g >= S)).any(), "groups", ids, g))
            self._check_values(flat, flat.sum(dtype=_F64), checks)
        if K == 2:
            if host:
                self._count_ids(g, S, "groups", ids)
            cell = y.long() * S + g  # type: ignore[union-attr]
        else:
            cell = g
        residual = self.constraint == "mean_residual"
        try:
            cells = Cells(flat, cell, K, S, band=not residual)
        except IndexError:
            if K == 1:
                raise fail("groups", ids, _distinct(g)) from None
            raise fail("labels", "labels in {0, 1} (equalized odds)",
                       _distinct(y)) from None  # type: ignore[arg-type]
        if self.check_finite and host:  # the sums are there: their total is the finite test
            self._check_values(flat, cells.total, checks)
        targets = None
        if residual:
            n = cells.n
            ybar = segment_sum(y, g, S) / n.clamp(min=1)  # type: ignore[arg-type]
            if self.bounds is not None:
                self._check_residual(ybar, n)
            targets = ybar.view(1, S)
        sol = project_cells(flat, cell, K, S, self.eps, self.bounds, targets, cells)
        self.dual(self._name).detach().copy_(sol.multipliers)
        return sol.q.view_as(z), ProjectionInfo(sol)

    def _inputs(self, z: Any, groups: Any, labels: Any
                ) -> tuple[Tensor, Tensor, Tensor | None, list[tuple[Tensor, str, str, Tensor]]]:
        """Shapes and types (no value read): ``(z (N,), ids (N,) int64, labels float64 or
        None, checks)``; each check is ``(flag, argument, expected, values)`` for the one host
        read, the flag true when ``values`` are bad."""
        if not isinstance(z, Tensor) or not z.is_floating_point():
            raise fail("z", "a floating tensor", getattr(z, "dtype", type(z).__name__))
        if z.dim() > 2 or (z.dim() == 2 and z.shape[1] != 1) or z.numel() == 0:
            raise fail("z", "shape (N,) or (N, 1) with N >= 1", tuple(z.shape))
        flat = z.reshape(-1)
        N, S = flat.numel(), self.num_groups
        checks: list[tuple[Tensor, str, str, Tensor]] = []
        if not isinstance(groups, Tensor) or groups.is_complex() or groups.dtype == torch.bool:
            raise fail("groups", "a real tensor of group ids",
                       groups.dtype if isinstance(groups, Tensor) else type(groups).__name__)
        if groups.dim() == 2 and tuple(groups.shape) == (N, S) and S > 1:
            if self.check_finite:
                bad = ~((groups == 0) | (groups == 1)).all() | (groups.sum(-1) != 1).any()
                checks.append((bad, "groups", "one-hot rows (a single 1 each)", groups))
            g = groups.argmax(-1)
        elif groups.numel() == N and (groups.dim() <= 1 or groups.shape[-1] == 1):
            g = groups.reshape(-1)
            if g.is_floating_point():
                if self.check_finite:
                    checks.append(((g != g.round()).any(), "groups", "integral group ids", g))
                g = g.round()
            g = g.long()
        else:
            raise fail("groups", f"{N} integer ids (N,) or a one-hot ({N}, {S})",
                       f"{groups.dtype} of shape {tuple(groups.shape)}")
        if g.device != flat.device:
            g = g.to(flat.device)
        if self.constraint == "parity":
            return flat, g, None, checks
        if labels is None:
            raise fail("labels", f"{N} labels (constraint {self.constraint!r} needs them)", None)
        if not isinstance(labels, Tensor) or labels.numel() != N or labels.is_complex():
            raise fail("labels", f"a real tensor of {N} labels",
                       tuple(labels.shape) if isinstance(labels, Tensor) else labels)
        y = labels.reshape(-1).to(device=flat.device, dtype=_F64)
        if self.check_finite:
            if self.constraint == "equalized_odds":
                checks.append((~((y == 0) | (y == 1)).all(), "labels",
                               "labels in {0, 1} (equalized odds)", y))
            else:
                checks.append((~torch.isfinite(y).all(), "labels", "finite labels", y))
        return flat, g, y, checks

    @staticmethod
    def _count_ids(ids: Tensor, size: int, name: str, what: str) -> None:
        """Refuse ids outside ``0..size-1`` from the length of their counts (no value read;
        an id >= size is clamped to ``size`` first, so a huge id allocates nothing)."""
        try:
            ok = torch.bincount(ids.clamp(max=size), minlength=size).numel() == size
        except RuntimeError:  # a negative id
            ok = False
        if not ok:
            raise fail(name, what, _distinct(ids))

    @staticmethod
    def _check_values(flat: Tensor, total: Tensor | float,
                      checks: list[tuple[Tensor, str, str, Tensor]]) -> None:
        """The one host read: the sum of the rows is finite exactly when every row is (an
        overflow falls through to the exact test), plus the flags of ``checks``."""
        if checks:
            flags = torch.stack([torch.as_tensor(total, dtype=_F64, device=flat.device),
                                 *(c[0].to(_F64) for c in checks)]).tolist()
        else:
            flags = [float(total)]
        if not math.isfinite(flags[0]) and not bool(torch.isfinite(flat).all()):
            bad = (~torch.isfinite(flat)).nonzero().flatten()[:10].tolist()
            raise ValueError(f"z: expected finite predictions, got NaN or Inf at rows {bad}")
        for flag, (_, name, what, values) in zip(flags[1:], checks):
            if flag:
                raise fail(name, what, _distinct(values))

    def _check_residual(self, ybar: Tensor, n: Tensor) -> None:
        """Raise when a present group's target range misses ``[lo, hi]`` (one host read)."""
        lo, hi = self.bounds  # type: ignore[misc]
        bad = (n > 0) & ((ybar + self.eps < lo) | (ybar - self.eps > hi))
        if bool(bad.any()):
            s = int(bad.nonzero()[0])
            yb = float(ybar[s])
            raise ValueError(
                f"infeasible: group {s} needs a mean prediction in "
                f"[{yb - self.eps:.4g}, {yb + self.eps:.4g}] (its mean label {yb:.4g} +/- eps) "
                f"but its achievable range under the bounds is [{lo}, {hi}]")


def _distinct(values: Tensor) -> list[Any]:
    """The first (up to 10) distinct values of a bad argument, for its error message."""
    return torch.unique(values.detach().reshape(-1)).tolist()[:10]
