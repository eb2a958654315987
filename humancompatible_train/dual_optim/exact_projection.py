r"""Hard constraints: the exact per-batch projection as a dual optimizer.

:class:`FairProjection` enforces group parity *exactly on every batch* by projecting the
batch's predictions (the large-batch regime of the fairness_training system, seeds 000/001):

.. math::

    q^\star = \arg\min_q \tfrac12\|q - z\|^2 \ \text{s.t.}\
    |\bar q_g - \bar q_h| \le \varepsilon\ \forall g,h,\quad lo \le q \le hi,

per label class for ``"equalized_odds"``, and
:math:`|\bar q_g - \bar y_g| \le \varepsilon` per group for ``"mean_residual"``. The solution
is exact (see :mod:`~humancompatible_train.dual_optim._parity_solver`) and differentiable,
so a model trains through it as its last layer. The optimal multipliers of the last batch's
group-mean constraints are the optimizer's duals: for each (class, group) cell, the pair
:math:`(\lambda^{low}_g, \lambda^{up}_g) \ge 0` of the constraints
:math:`\bar q_g \ge t` and :math:`\bar q_g \le t + \varepsilon` (or the residual bounds), with
:math:`\lambda^{low}_g - \lambda^{up}_g = n_g \delta_g` the group's shift times its size.

The training loop changes little from ALM's::

    # ALM                                         # FairProjection
    logit = model(x)                              logit, _ = proj.project(model(x), groups)
    loss = bce(logit, y)                          loss = bce(logit, y)
    lagr = dual.forward_update(loss, c)           lagr = proj.forward_update(loss)
    lagr.backward(); opt.step()                   lagr.backward(); opt.step()

``forward_update(loss)`` returns the loss unchanged: the constraints are already enforced by
the projection, so there is no Lagrangian term and no dual step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._parity_solver import _GroupMeans, project_groups
from .base import ConstraintsLike, DualOptimizer

__all__ = ["FairProjection", "ProjectionInfo"]

logger = logging.getLogger("humancompatible_train")

_CONSTRAINTS = ("parity", "equalized_odds", "mean_residual")


@dataclass
class ProjectionInfo:
    """What the last projection did."""

    shifts: Tensor  #: (C, S) each cell's shift before the box
    counts: Tensor  #: (C, S) rows per cell
    multipliers: Tensor  #: (2 * C * S,) the duals, (low, up) per cell
    unchanged: bool  #: True when no constraint applied (fewer than two groups present)
    reason: str  #: why it was unchanged, or ""


class FairProjection(DualOptimizer):
    """Exact per-batch projection onto group-parity constraints (hard constraints).

    Args:
        num_groups: number of groups ``S >= 1`` (ids ``0..S-1``).
        eps: tolerance :math:`\\varepsilon \\ge 0`.
        bounds: optional ``(lo, hi)`` prediction bounds.
        constraint: ``"parity"`` (mean-prediction parity), ``"equalized_odds"`` (parity
            within each label class) or ``"mean_residual"`` (each group's mean prediction
            within eps of its mean label).
    """

    def __init__(self, num_groups: int, eps: float = 0.05, *,
                 bounds: tuple[float, float] | None = None, constraint: str = "parity",
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        if constraint not in _CONSTRAINTS:
            raise ValueError(f"constraint must be one of {_CONSTRAINTS}, got {constraint!r}")
        if bounds is not None:
            lo, hi = (float(b) for b in bounds)
            if not lo < hi:
                raise ValueError(f"bounds must be (lo, hi) with lo < hi, got {bounds!r}")
            bounds = (lo, hi)
        self.num_groups = num_groups
        self.eps = float(eps)
        self.bounds = bounds
        self.constraint = constraint
        self.num_classes = 2 if constraint == "equalized_odds" else 1
        m = 2 * self.num_classes * num_groups
        super().__init__(m, {"lr": 0.0}, is_ineq=True, name="projection", device=device,
                         dtype=dtype)

    # The projection has no dual step: its multipliers are the exact ones of the last batch.
    def _dual_step(self, group: dict[str, Any], state: dict[str, Any], c: Tensor
                   ) -> dict[str, Tensor]:
        raise TypeError("FairProjection has no dual step: call project(z, groups) instead")

    def step(self, constraints: ConstraintsLike | None = None,  # type: ignore[override]
             dual_constraints: ConstraintsLike | None = None) -> None:
        raise TypeError("FairProjection has no dual step: call project(z, groups) instead")

    def forward(self, loss: Tensor, constraints: ConstraintsLike | None = None) -> Tensor:
        """The loss itself: the constraints hold exactly after :meth:`project`."""
        self._check_loss(loss)
        return loss

    def forward_update(self, loss: Tensor, constraints: ConstraintsLike | None = None,
                       dual_constraints: ConstraintsLike | None = None) -> Tensor:
        """The loss itself (see :meth:`forward`)."""
        return self.forward(loss)

    # ------------------------------------------------------------- projection
    def _validate(self, z: Tensor, groups: Tensor, labels: Tensor | None
                  ) -> tuple[Tensor, Tensor, Tensor | None]:
        if not isinstance(z, Tensor) or not z.is_floating_point():
            raise ValueError(f"z: expected a floating tensor, got "
                             f"{getattr(z, 'dtype', type(z).__name__)}")
        if z.dim() > 2 or (z.dim() == 2 and z.shape[1] != 1) or z.numel() == 0:
            raise ValueError(f"z: expected shape (N,) or (N, 1) with N >= 1, got "
                             f"{tuple(z.shape)}")
        flat = z.reshape(-1)
        if not isinstance(groups, Tensor) or groups.numel() != flat.numel():
            raise ValueError(f"groups: expected {flat.numel()} integer group ids, got "
                             f"{tuple(groups.shape) if isinstance(groups, Tensor) else groups}")
        g = groups.reshape(-1)
        g = g.round().long() if g.is_floating_point() else g.long()
        y = None
        if self.constraint != "parity":
            if labels is None:
                raise ValueError(f"labels: constraint {self.constraint!r} needs labels")
            y = labels.reshape(-1).to(flat.dtype)
            if y.numel() != flat.numel():
                raise ValueError(f"labels: expected {flat.numel()} values, got {y.numel()}")
        # One host read for all checks; messages are built only on failure.
        bad = ~torch.isfinite(flat).all() | ((g < 0) | (g >= self.num_groups)).any()
        if self.constraint == "equalized_odds":
            bad = bad | ~((y == 0) | (y == 1)).all()  # type: ignore[operator]
        if bool(bad):
            if not bool(torch.isfinite(flat).all()):
                raise ValueError("z: predictions contain NaN or Inf")
            if bool(((g < 0) | (g >= self.num_groups)).any()):
                raise ValueError(f"groups: ids must lie in 0..{self.num_groups - 1}, got "
                                 f"{sorted(set(g.tolist()))[:10]}")
            raise ValueError("labels: equalized odds needs labels in {0, 1}")
        return flat, g, y

    def project(self, z: Tensor, groups: Tensor, labels: Tensor | None = None
                ) -> tuple[Tensor, ProjectionInfo]:
        """Project a batch; returns ``(q, info)`` with ``q`` shaped like ``z``. The exact
        multipliers become this optimizer's duals."""
        flat, g, y = self._validate(z, groups, labels)
        S, C = self.num_groups, self.num_classes
        if self.constraint == "mean_residual":
            q, shifts, counts = self._residual(flat, g, y)  # type: ignore[arg-type]
        else:
            cls = y.long() if C == 2 else torch.zeros_like(g)  # type: ignore[union-attr]
            cell = cls * S + g
            q, shifts = project_groups(flat, cell, C * S, C, self.eps, self.bounds)
            counts = torch.bincount(cell, minlength=C * S).view(C, S)
        alpha = (counts.to(shifts.dtype) * shifts).detach()
        mult = torch.stack([alpha.clamp(min=0), (-alpha).clamp(min=0)], -1).reshape(-1)
        with torch.no_grad():
            self.dual("projection").copy_(mult.to(self.dual("projection")))
        present = (counts > 0).sum(-1)
        unchanged = False
        reason = ""
        if self.constraint != "mean_residual" and S > 1:
            # A flag for the caller; reading it is the one place that touches the host.
            unchanged = not bool((present >= 2).any())
            if unchanged:
                reason = "fewer than two groups present: nothing to compare, z returned"
        info = ProjectionInfo(shifts.detach(), counts, mult, unchanged, reason)
        return q.view_as(z), info

    def _residual(self, z: Tensor, g: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """|mean_g(q) - mean_g(y)| <= eps per group: each group on its own."""
        S = self.num_groups
        counts = torch.bincount(g, minlength=S)
        n = counts.to(z.dtype).clamp(min=1)
        ybar = torch.zeros(S, dtype=z.dtype, device=z.device).index_add(0, g, y) / n
        lo_t, hi_t = ybar - self.eps, ybar + self.eps
        if self.bounds is not None:
            lo, hi = self.bounds
            # Reachable group means lie in [lo, hi]; the target interval must meet it.
            empty = (hi_t < lo) | (lo_t > hi)
            empty = empty & (counts > 0)
            if bool(empty.any()):
                s = int(empty.nonzero()[0])
                raise ValueError(
                    f"infeasible: group {s} needs a mean prediction in "
                    f"[{float(lo_t[s]):.4g}, {float(hi_t[s]):.4g}] (its mean label "
                    f"{float(ybar[s]):.4g} +/- eps) but the bounds allow only [{lo}, {hi}]"
                )
        # Groups are independent here: move each group's mean to the nearest point of its
        # target interval (the mean is monotone in the shift, so invert it exactly).
        if self.bounds is None:
            mean = torch.zeros(S, dtype=z.dtype, device=z.device).index_add(0, g, z) / n
            shift = mean.clamp(min=lo_t, max=hi_t) - mean
            q = z + shift[g]
        else:
            lo, hi = self.bounds
            order = torch.argsort(z, stable=True)
            order = order[torch.argsort(g[order], stable=True)]
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.arange(z.numel(), device=z.device) - starts[g[order]]
            zs = torch.full((S, z.numel()), float("inf"), dtype=z.dtype, device=z.device)
            zs = zs.index_put((g[order], rank), z[order])
            gm = _GroupMeans(zs, counts, lo, hi)
            m0 = gm.mean(torch.zeros_like(zs[:, :1])).squeeze(-1)
            target = m0.clamp(min=lo_t.clamp(lo, hi), max=hi_t.clamp(lo, hi))
            up = gm.inverse(target.unsqueeze(-1), left=True).squeeze(-1)
            down = gm.inverse(target.unsqueeze(-1), left=False).squeeze(-1)
            shift = torch.where(target > m0, up, torch.where(target < m0, down, 0.0))
            q = (z + shift[g]).clamp(lo, hi)
        shift = torch.where(counts > 0, shift, torch.zeros_like(shift))
        return q, shift.unsqueeze(0), counts.unsqueeze(0)
