r"""Hard constraints: the exact per-batch projection as a dual optimizer.

:class:`FairProjection` enforces group fairness *exactly on every batch* by projecting the
batch's predictions ``z`` (the large-batch regime of the fairness_training examples):

.. math::

    q^\star = \arg\min_q \tfrac12\|q - z\|^2 \ \text{s.t.}\
    |\bar q_g - \bar q_h| \le \varepsilon\ \forall g, h,\quad lo \le q \le hi,

per label class for ``"equalized_odds"``, and :math:`|\bar q_g - \bar y_g| \le \varepsilon`
per group for ``"mean_residual"``. The solver
(:mod:`~humancompatible_train._projection.solver`) is exact and differentiable, so
a model trains through the projection as its last layer.

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

The training loop changes in one line from ALM's::

    # ALM                                       # FairProjection
    out = model(x)                              out, info = proj.project(model(x), s)
    loss = bce(out, y)                          loss = bce(out, y)
    lagr = dual.forward_update(loss, c)         lagr = proj.forward_update(loss, c)
    lagr.backward(); opt.step()                 lagr.backward(); opt.step()

``forward_update(loss, constraints)`` returns the loss unchanged (the constraints already hold
exactly, so the Lagrangian term is zero at the projection's own multipliers) and accepts the
same arguments as ALM's so the rest of the loop stays as it was.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._projection import project_cells
from .base import ConstraintsLike, DualOptimizer

__all__ = ["FairProjection", "ProjectionInfo"]

logger = logging.getLogger("humancompatible_train")

_CONSTRAINTS = ("parity", "equalized_odds", "mean_residual")


@dataclass
class ProjectionInfo:
    """What one projection did. All fields are tensors (no host synchronisation);
    ``K`` is the number of label classes (2 for equalized odds, else 1), ``S`` of groups.

    Attributes:
        shifts: ``(K, S)`` each cell's shift :math:`\\delta` before the box.
        counts: ``(K, S)`` rows per cell.
        multipliers: ``(2*K*S,)`` the optimal multipliers, ``[class][group][low, up]``.
        band: ``(K,)`` the band's lower edge :math:`t_k`: every group mean of class ``k``
            lies in :math:`[t_k, t_k + \\varepsilon]` (when no constraint binds, one valid
            position). NaN for mean residual fairness.
        active: ``(K, S)`` bool, the cell's constraint binds (non-zero multiplier).
        box_active: 0-d bool, the prediction bounds changed the solution.
        unchanged: 0-d bool, no constraint could apply (fewer than two groups present in
            every class): the predictions came back as they were.
    """

    shifts: Tensor
    counts: Tensor
    multipliers: Tensor
    band: Tensor
    active: Tensor
    box_active: Tensor
    unchanged: Tensor

    @property
    def reason(self) -> str:
        """Why the batch was returned unchanged, or ``""`` (reads one flag from the device)."""
        if bool(self.unchanged):
            return "fewer than two groups present: nothing to compare, z returned unchanged"
        return ""


class FairProjection(DualOptimizer):
    """Exact per-batch projection onto group-fairness constraints (hard constraints).

    Args:
        num_groups: number of groups ``S >= 1`` (ids ``0..S-1``; for intersections of
            attributes pass the id of each combination, e.g. from
            ``humancompatible_train.fairness.Groups.intersections(...).ids``).
        eps: tolerance :math:`\\varepsilon \\ge 0`.
        bounds: optional ``(lo, hi)`` prediction bounds, ``lo < hi``.
        constraint: ``"parity"`` (mean-prediction parity), ``"equalized_odds"`` (parity
            within each label class, labels in {0, 1}) or ``"mean_residual"`` (each group's
            mean prediction within ``eps`` of its mean label).
        check_finite: validate every batch (finite predictions, group ids in range, labels
            in {0, 1} for equalized odds) with one host read; ``False`` skips it.
        device, dtype: where the multipliers live.
        name: name of the multiplier group (default ``"projection"``).
    """

    def __init__(self, num_groups: int, eps: float = 0.05, *,
                 bounds: tuple[float, float] | None = None, constraint: str = "parity",
                 check_finite: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, name: str = "projection") -> None:
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0 \
                or eps == float("inf"):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        if constraint not in _CONSTRAINTS:
            raise ValueError(f"constraint must be one of {_CONSTRAINTS}, got {constraint!r}")
        if bounds is not None:
            lo, hi = (float(b) for b in bounds)
            if not lo < hi or not (abs(lo) < float("inf") and abs(hi) < float("inf")):
                raise ValueError(f"bounds must be finite (lo, hi) with lo < hi, got {bounds!r}")
            bounds = (lo, hi)
        self.num_groups = num_groups
        self.eps = float(eps)
        self.bounds = bounds
        self.constraint = constraint
        self.num_classes = 2 if constraint == "equalized_odds" else 1
        super().__init__(2 * self.num_classes * num_groups, {"lr": 0.0}, is_ineq=True,
                         name=name, device=device, dtype=dtype, check_finite=check_finite)
        self._name = name

    # ------------------------------------------------------- the dual-optimizer API
    def _dual_step(self, group: dict[str, Any], state: dict[str, Any], c: Tensor) -> None:
        raise TypeError("FairProjection has no dual step: its multipliers are those of the "
                        "last project(z, groups)")

    def step(self, constraints: ConstraintsLike | None = None,  # type: ignore[override]
             dual_constraints: ConstraintsLike | None = None) -> None:
        """Not available: the multipliers are set exactly by :meth:`project`."""
        raise TypeError("FairProjection has no dual step: its multipliers are those of the "
                        "last project(z, groups); use forward_update(loss) in the loop")

    def forward(self, loss: Tensor, constraints: ConstraintsLike | None = None) -> Tensor:
        """The loss itself: after :meth:`project` the constraints hold, so the Lagrangian
        term :math:`\\lambda^\\top c` is zero at the projection's multipliers.
        ``constraints`` is accepted (and ignored) so that an ALM loop needs no change."""
        self._check_loss(loss)
        return loss

    def forward_update(self, loss: Tensor, constraints: ConstraintsLike | None = None,
                       dual_constraints: ConstraintsLike | None = None) -> Tensor:
        """The loss itself (see :meth:`forward`); no dual step."""
        self._opt_called = True
        return self.forward(loss)

    # ------------------------------------------------------------------ projection
    def _validate(self, z: Tensor, groups: Tensor, labels: Tensor | None
                  ) -> tuple[Tensor, Tensor, Tensor | None]:
        if not isinstance(z, Tensor) or not z.is_floating_point():
            raise ValueError(f"z: expected a floating tensor, got "
                             f"{getattr(z, 'dtype', type(z).__name__)}")
        if z.dim() > 2 or (z.dim() == 2 and z.shape[1] != 1) or z.numel() == 0:
            raise ValueError(f"z: expected shape (N,) or (N, 1) with N >= 1, got "
                             f"{tuple(z.shape)}")
        flat = z.reshape(-1)
        N, S = flat.numel(), self.num_groups
        if not isinstance(groups, Tensor):
            raise ValueError(f"groups: expected a tensor, got {type(groups).__name__}")
        onehot = groups.dim() == 2 and tuple(groups.shape) == (N, S) and S > 1
        if onehot:
            g = groups.argmax(-1)
        elif groups.numel() == N and (groups.dim() <= 1 or groups.shape[-1] == 1):
            g = groups.reshape(-1)
            g = g.round().long() if g.is_floating_point() else g.long()
        else:
            raise ValueError(f"groups: expected {N} integer ids (N,) or a one-hot ({N}, {S}), "
                             f"got shape {tuple(groups.shape)}")
        g = g.to(flat.device)
        y = None
        if self.constraint != "parity":
            if labels is None:
                raise ValueError(f"labels: constraint {self.constraint!r} needs labels")
            if not isinstance(labels, Tensor) or labels.numel() != N:
                raise ValueError(f"labels: expected {N} values, got "
                                 f"{tuple(getattr(labels, 'shape', ()))}")
            y = labels.reshape(-1).to(device=flat.device, dtype=torch.float64)
        if self.check_finite:
            # One host read: the sum of z is finite exactly when every entry is (an overflow
            # falls through to the exact test), the ids lie in range when their extremes do.
            f64 = torch.float64
            ids = torch.aminmax(g)
            checks = [flat.sum(dtype=f64), ids.min.to(f64), ids.max.to(f64)]
            if onehot:
                gf = groups.to(f64)
                checks.append((~((gf == 0) | (gf == 1)).all() | (gf.sum(-1) != 1).any()).to(f64))
            if y is not None:
                ok = ((y == 0) | (y == 1)).all() if self.constraint == "equalized_odds" \
                    else torch.isfinite(y).all()
                checks.append((~ok).to(f64))
            flags = torch.stack(checks).tolist()  # the one host read
            if not math.isfinite(flags[0]) and not bool(torch.isfinite(flat).all()):
                raise ValueError("z: predictions contain NaN or Inf")
            if flags[1] < 0 or flags[2] > S - 1:
                raise ValueError(f"groups: ids must lie in 0..{S - 1}, got "
                                 f"{sorted(set(g.tolist()))[:10]}")
            if onehot and flags[3]:
                raise ValueError("groups: a (N, S) groups tensor must be one-hot (one 1 a row)")
            if y is not None and flags[-1]:
                raise ValueError("labels: equalized odds needs labels in {0, 1}"
                                 if self.constraint == "equalized_odds"
                                 else "labels: contain NaN or Inf")
        return flat, g, y

    def project(self, z: Tensor, groups: Tensor, labels: Tensor | None = None
                ) -> tuple[Tensor, ProjectionInfo]:
        """Project a batch exactly; the optimal multipliers become this optimizer's duals.

        Args:
            z: predictions (scores, probabilities or regression outputs), (N,) or (N, 1).
            groups: group ids (N,) in ``0..S-1``, or a one-hot (N, S) tensor.
            labels: (N,) labels; needed for ``"equalized_odds"`` (0/1) and
                ``"mean_residual"``, ignored for ``"parity"``.

        Returns:
            ``(q, info)``: ``q`` shaped like ``z`` (differentiable in ``z``) and a
            :class:`ProjectionInfo`.

        Raises:
            ValueError: NaN/Inf predictions, group ids out of range, missing or bad labels,
                or (mean residual with bounds) a group whose target range
                :math:`[\\bar y_g - \\varepsilon, \\bar y_g + \\varepsilon]` misses the
                achievable range ``[lo, hi]`` of its mean.
        """
        flat, g, y = self._validate(z, groups, labels)
        S, K = self.num_groups, self.num_classes
        targets = None
        if self.constraint == "equalized_odds":
            cell = y.long() * S + g  # type: ignore[union-attr]
        else:
            cell = g
        if self.constraint == "mean_residual":
            n = torch.zeros(S, dtype=torch.float64, device=flat.device).index_add_(
                0, g, torch.ones_like(y))  # type: ignore[arg-type]
            targets = (torch.zeros(S, dtype=torch.float64, device=flat.device).index_add_(
                0, g, y) / n.clamp(min=1)).view(1, S)  # type: ignore[arg-type]
            if self.bounds is not None:
                self._check_residual(targets.view(-1), n)
        sol = project_cells(flat, cell, K, S, self.eps, self.bounds, targets)
        alpha = sol.counts * sol.shifts
        mult = torch.stack([alpha, -alpha], -1).clamp_(min=0).view(-1) + 0.0
        with torch.no_grad():
            lam = self.dual(self._name)
            lam.copy_(mult.to(lam))
        unchanged = ~sol.changed.any()
        info = ProjectionInfo(shifts=sol.shifts, counts=sol.counts, multipliers=mult,
                              band=sol.band, active=sol.shifts != 0,
                              box_active=sol.box_active, unchanged=unchanged)
        return sol.q.view_as(z), info

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
