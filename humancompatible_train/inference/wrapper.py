r"""Fair inference: adjust a deployed model's predictions so that group parity holds.

Two regimes share one state (running statistics and a :class:`~humancompatible_train.
dual_optim.PrimalDual` holding the multipliers):

* **Large batches** (size :math:`\ge b_\tau`): the exact projection of the batch onto
  :math:`\{|\bar q_g - \bar q_h| \le \varepsilon\ \forall g, h\}`; every batch meets
  :math:`\varepsilon`.
* **Small batches** (size :math:`< b_\tau`, down to a single prediction): an online primal-dual
  correction. The multipliers :math:`\lambda_{gh} \ge 0` of the pooled constraints
  :math:`\mu_g - \mu_h - \varepsilon \le 0` (:math:`\mu_g`: mean prediction of group
  :math:`g` over the stream) define per-group offsets

  .. math:: \nu_g = \sum_h (\lambda_{gh} - \lambda_{hg})\, \pi_h

  (:math:`\pi_h`: share of group :math:`h` in the stream so far), which is the minimiser of
  the pooled Lagrangian :math:`\sum_i \tfrac12 (q_i - z_i)^2 + \sum_{gh}\lambda_{gh}
  (\mu_g - \mu_h - \varepsilon)` in the metric that scales each group's step by the others'
  shares (so the dual curvature is at most 1 and :math:`\eta_0 \le 1` is stable). After each
  batch the multipliers take one projected ascent step
  :math:`\lambda \leftarrow [\lambda + \eta_t c]_+`, :math:`\eta_t = \eta_0/\sqrt t`, on the
  pooled constraint values :math:`c_{gh} = (m_g - \nu_g) - (m_h - \nu_h) - \varepsilon` of the
  primal response (:math:`m_g`: running mean of the raw predictions), i.e. online gradient
  ascent on the dual of the pooled projection problem (Zinkevich 2003; Mahdavi, Jin & Yang
  2012). The shifted predictions :math:`z_i - \nu_{g(i)}` are then corrected by the smallest
  group shifts (in :math:`\ell_2`) that make (a) the batch's group means meet
  :math:`\varepsilon` when the batch holds two or more groups and (b) the pooled group means
  of everything served so far meet :math:`\varepsilon` (``pooled="hard"``, default), by
  Dykstra's alternating projections (Boyle & Dykstra 1986), ending on (b).

The original system bounds only the *weighted average* of per-batch gaps; that leaves the
pooled gap of all predictions above :math:`\varepsilon` for small batches (batch
composition and level are correlated after per-batch corrections). Here (a) keeps every
per-batch gap within :math:`\varepsilon`, (b) keeps the pooled gap within it at every step,
and the dual offsets make (b) rarely bind, so corrections stay small.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._projection import (
    band_project,
    decision_band_project,
    project_cells,
    project_groups,
    two_slab_qp,
)
from ..dual_optim import PrimalDual

__all__ = ["FairInference"]

logger = logging.getLogger("humancompatible_train")

_METRICS = ("mean_pred", "equalized_odds", "positive_rate", "mean_residual")
# Metrics whose constraint involves labels, which every batch must then carry.
_LABELLED = ("equalized_odds", "mean_residual")
# Weight that pins a group's value inside a projection (groups that cannot move).
_PIN = 1e12


class FairInference(torch.nn.Module):
    r"""Wrap a trained model so that its predictions meet group parity on a stream.

    Args:
        model: the trained model (its output is flattened to one score per row), or ``None``
            to adjust scores passed to :meth:`adjust`.
        num_groups: number of groups :math:`S \ge 2` (ids ``0..S-1``).
        fairness_tolerance: :math:`\varepsilon \ge 0`.
        b_tau: batches of at least this size are projected exactly on their own.
        eta_0: initial dual step :math:`\eta_0` of the small-batch regime.
        metric: ``"mean_pred"`` (mean-prediction parity), ``"equalized_odds"`` (the same
            parity within each label class), ``"positive_rate"`` (parity of the positive rate
            of the decisions :math:`q \ge` ``threshold``) or ``"mean_residual"`` (each
            group's mean prediction within :math:`\varepsilon` of its mean label). The last
            two of these four need labels with every batch (evaluation streams).
        threshold: decision threshold of ``"positive_rate"`` (ignored otherwise).
        prediction_bounds: optional ``(lo, hi)`` clamp of the adjusted predictions (applied
            last; a binding bound can cost exactness).
        protected_attr_idx: column of ``x`` holding the group id, when ``groups`` is not
            passed to :meth:`forward`.
        dual: a :class:`PrimalDual` to hold the multipliers (e.g. the one that trained the
            model, for a warm start); its size must be ``C * S * (S - 1)``. Default: a new
            one with ``eta_0``.
        pooled: ``"hard"`` enforces the pooled constraint after every batch; ``"dual"``
            leaves it to the multipliers (asymptotic only). Default: ``"hard"``, except for
            ``"mean_residual"``, where enforcing it from the first prediction would copy the
            first labels of each group into the predictions.
        dykstra_iters: alternating-projection rounds for (a) and (b) together (used for
            three or more groups; two groups are solved exactly in closed form).
        group_shares: the groups' shares :math:`\pi` in the population (per label class for
            ``"equalized_odds"``), e.g. from the training data. Default: the running shares of
            the stream. Give them with a warm-started ``dual`` so that the very first batch
            is corrected even when it holds one group only.
    """

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        *,
        num_groups: int = 2,
        fairness_tolerance: float = 0.05,
        b_tau: int = 64,
        eta_0: float = 0.5,
        metric: str = "mean_pred",
        prediction_bounds: tuple[float, float] | None = None,
        protected_attr_idx: int | None = None,
        dual: PrimalDual | None = None,
        pooled: str | None = None,
        dykstra_iters: int = 50,
        dtype: torch.dtype = torch.float64,
        group_shares: Sequence[float] | Tensor | None = None,
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 2:
            raise ValueError(f"num_groups must be an int >= 2, got {num_groups!r}")
        if not fairness_tolerance >= 0:
            raise ValueError(f"fairness_tolerance must be >= 0, got {fairness_tolerance!r}")
        if isinstance(b_tau, bool) or not isinstance(b_tau, int) or b_tau < 1:
            raise ValueError(f"b_tau must be a positive int, got {b_tau!r}")
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
        if pooled is None:
            pooled = "dual" if metric == "mean_residual" else "hard"
        if pooled not in ("hard", "dual"):
            raise ValueError(f"pooled must be 'hard' or 'dual', got {pooled!r}")
        if prediction_bounds is not None:
            lo, hi = prediction_bounds
            if not lo < hi:
                raise ValueError(f"prediction_bounds must be (lo, hi) with lo < hi, "
                                 f"got {prediction_bounds!r}")
        self.model = model
        self.num_groups = num_groups
        self.num_classes = 2 if metric == "equalized_odds" else 1
        self.fairness_tolerance = float(fairness_tolerance)
        self.b_tau = b_tau
        self.metric = metric
        self.prediction_bounds = prediction_bounds
        self.protected_attr_idx = protected_attr_idx
        self.pooled = pooled
        self.dykstra_iters = int(dykstra_iters)
        self.threshold = float(threshold)
        self._dtype = dtype
        self._residual = metric == "mean_residual"
        self._decision = metric == "positive_rate"
        S, C = num_groups, self.num_classes
        # Residual: (mu_g - ybar_g - eps <= 0, ybar_g - mu_g - eps <= 0) per group; parity:
        # mu_g - mu_h - eps <= 0 for every ordered pair, per label class.
        m = 2 * S if self._residual else C * S * (S - 1)
        if dual is None:
            # check_finite=False: pairs whose groups have not been seen yet enter the dual
            # step as NaN and are masked out of it.
            name = "pooled_residual" if self._residual else "pooled_parity"
            dual = PrimalDual(m, eta_0=eta_0, is_ineq=True, name=name, dtype=dtype,
                              check_finite=False)
        elif not isinstance(dual, PrimalDual) or dual.m != m:
            raise ValueError(
                f"dual must be a PrimalDual with {m} constraints for metric {metric!r} "
                f"(C={C} label classes, S={S} groups), got "
                f"{type(dual).__name__} with m={getattr(dual, 'm', None)}"
            )
        self.dual = dual
        off = ~torch.eye(S, dtype=torch.bool)
        g_idx, h_idx = off.nonzero(as_tuple=True)  # pair p is the constraint mu_g - mu_h <= eps
        self.register_buffer("_pair_g", g_idx, persistent=False)
        self.register_buffer("_pair_h", h_idx, persistent=False)
        # Constant tensors of the serving step (device-resident, no scalar wrapping per call).
        # _pair_map[p] puts +1 at entry (g, h) and -1 at (h, g) of pair p; _sides turns a
        # residual group's (upper, lower) multipliers into its offset; _not_others[c] is 0 at
        # the cells of c's label class other than c and NaN elsewhere.
        pair_map = torch.zeros(len(g_idx), S * S, dtype=dtype)
        pair_map[torch.arange(len(g_idx)), g_idx * S + h_idx] = 1.0
        pair_map[torch.arange(len(g_idx)), h_idx * S + g_idx] = -1.0
        self.register_buffer("_pair_map", pair_map, persistent=False)
        self.register_buffer("_sides", torch.tensor([1.0, -1.0], dtype=dtype), persistent=False)
        cls = torch.arange(C * S) // S
        others = (cls.unsqueeze(1) == cls.unsqueeze(0)) & ~torch.eye(C * S, dtype=torch.bool)
        self.register_buffer("_not_others", torch.where(others, 0.0, math.nan).to(dtype),
                             persistent=False)
        eps = float(fairness_tolerance)
        for name, value in (("_eps", eps), ("_one", 1.0), ("_eps_pm", [-eps, eps]),
                            ("_half_pm", [-0.5, 0.5])):
            self.register_buffer(name, torch.tensor(value, dtype=dtype), persistent=False)
        z = torch.zeros(C, S, dtype=dtype)
        # Running statistics of the stream: raw sums, served (adjusted) sums, counts.
        self.register_buffer("raw_sum", z.clone())
        self.register_buffer("out_sum", z.clone())
        self.register_buffer("count", z.clone())
        self.register_buffer("label_sum", z.clone())
        # positive_rate: positive decisions served, and those of the dual's response
        # (the offset scores before the hard correction), which drive the dual step.
        self.register_buffer("positive_sum", z.clone())
        self.register_buffer("response_positive_sum", z.clone())
        if group_shares is None:
            self.register_buffer("_shares", None)
        else:
            shares = torch.as_tensor(group_shares, dtype=dtype).reshape(-1, S).expand(C, S)
            if not bool((shares >= 0).all()) or not torch.allclose(shares.sum(-1),
                                                                   torch.ones(C, dtype=dtype)):
                raise ValueError(f"group_shares must be {S} non-negative shares summing to 1 "
                                 f"(per label class), got {group_shares!r}")
            self.register_buffer("_shares", shares.clone(), persistent=False)
        # Scalars of seed 001's state.
        self.register_buffer("cumulative_samples", torch.zeros((), dtype=dtype))
        self.register_buffer("cumulative_weighted_violation", torch.zeros((), dtype=dtype))
        self.register_buffer("weighted_gap_sum", torch.zeros((), dtype=dtype))
        self.register_buffer("weighted_gap_samples", torch.zeros((), dtype=dtype))
        self.register_buffer("lambda_max", torch.zeros((), dtype=dtype))
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.long))
        self.register_buffer("squared_adjustment", torch.zeros((), dtype=dtype))

    # ----------------------------------------------------------------- state
    @property
    def lambda_dual(self) -> Tensor:
        """The multipliers: shape (C, S, S), ``[k, g, h]`` for mu_g - mu_h <= eps in class k;
        for ``"mean_residual"`` shape (S, 2), ``[g]`` = (upper, lower) side of group g."""
        S, C = self.num_groups, self.num_classes
        if self._residual:
            return self._lam.detach().view(S, 2).clone()
        lam = self._lam.detach().view(C, -1)
        mat = torch.zeros(C, S, S, dtype=lam.dtype, device=lam.device)
        mat[:, self._pair_g, self._pair_h] = lam
        return mat

    @property
    def dual_update_count(self) -> int:
        return int(self.dual.state[self._lam]["step"])

    def reset(self) -> None:
        """Zero the serving state (as the fairness_training inference guide does): multipliers,
        dual step count, every statistic."""
        lam = self._lam
        with torch.no_grad():
            lam.zero_()
        self.dual.state[lam]["step"] = 0
        for name, buf in self.named_buffers(recurse=False):
            if not name.startswith("_"):
                buf.zero_()

    def get_extra_state(self) -> dict[str, Any]:
        return {"dual": self.dual.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.dual.load_state_dict(state["dual"])

    # ------------------------------------------------------------- serving
    def forward(self, x: Tensor, groups: Tensor | None = None,
                labels: Tensor | None = None) -> Tensor:
        """Model scores for ``x``, adjusted; the same shape as the model's output."""
        if self.model is None:
            raise ValueError("this FairInference has no model: call adjust(scores, groups)")
        if groups is None:
            if self.protected_attr_idx is None:
                raise ValueError("groups is required (or set protected_attr_idx)")
            groups = x[:, self.protected_attr_idx].round().long()
        with torch.no_grad():
            out = self.model(x)
        return self.adjust(out, groups, labels)

    @property
    def _lam(self) -> Tensor:
        return self.dual.param_groups[0]["params"][0]

    def _offsets(self, share: Tensor) -> Tensor:
        """nu[k, g] = sum_h (lambda[k, g, h] - lambda[k, h, g]) * share[k, h]; for the
        residual nu[0, g] = lambda_upper[g] - lambda_lower[g]."""
        lam = self._lam.detach().to(share)  # a warm-start dual may hold another dtype
        if self._residual:
            return (lam.view(-1, 2) @ self._sides).unsqueeze(0)
        C, S = self.num_classes, self.num_groups
        # (lambda - lambda^T)[k] as one product with the fixed pair-to-entry map.
        antisym = torch.mm(lam.view(C, -1), self._pair_map).view(C, S, S)
        return torch.bmm(antisym, share.view(C, S, 1)).view(C, S)

    def _check(self, z: Tensor, groups: Tensor, labels: Tensor | None
               ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Shapes and types (no tensor op); values are checked in :meth:`_cell_counts`."""
        if not isinstance(z, Tensor) or not z.is_floating_point():
            raise ValueError(f"predictions must be a floating tensor, got "
                             f"{getattr(z, 'dtype', type(z).__name__)}")
        flat = z.reshape(-1)
        if z.dim() > 2 or (z.dim() == 2 and z.shape[1] != 1):
            raise ValueError(f"predictions must have shape (N,) or (N, 1), got {tuple(z.shape)}")
        if not isinstance(groups, Tensor) or groups.reshape(-1).shape != flat.shape:
            raise ValueError(
                f"groups must be a tensor of {flat.numel()} group ids, got "
                f"{tuple(groups.shape) if isinstance(groups, Tensor) else type(groups).__name__}"
            )
        if flat.numel() == 0:
            raise ValueError("predictions: empty batch")
        g = groups.reshape(-1)
        if g.is_floating_point():
            if not bool((g == g.round()).all()):
                raise ValueError("groups must hold integer group ids")
            g = g.long()
        if labels is None:
            if self.metric in _LABELLED:
                raise ValueError(f"metric {self.metric!r} needs labels for every batch")
            return flat, g, None
        # Labels are checked whenever given: they also feed the per-group label means.
        y = labels.reshape(-1) if isinstance(labels, Tensor) else None
        if y is None or y.shape != flat.shape:
            raise ValueError(f"labels must be a tensor of {flat.numel()} values, got "
                             f"{tuple(labels.shape) if y is not None else type(labels)}")
        if self._residual:
            if not bool(torch.isfinite(y).all()):
                raise ValueError("labels contain NaN or Inf; nothing was changed")
        elif self.metric == "equalized_odds" and not bool(((y == 0) | (y == 1)).all()):
            raise ValueError(f"labels must be {flat.numel()} values in {{0, 1}}")
        return flat, g, y

    def _cell_counts(self, zd: Tensor, g: Tensor, key: Tensor) -> Tensor:
        """Rows per cell, (C, S) int64. Raises on group ids out of range or non-finite scores,
        with one host read (the sum of the scores is finite exactly when they all are, barring
        an overflow, which the exact test then clears)."""
        S, C = self.num_groups, self.num_classes
        n_b = None
        # With labels in the key, an id out of range can still land in a valid cell.
        if C == 1 or not bool(((g < 0) | (g >= S)).any()):
            try:
                n_b = torch.bincount(key, minlength=C * S)
            except RuntimeError:  # a negative id
                pass
        if n_b is None or n_b.numel() != C * S:
            raise ValueError(f"groups must lie in 0..{S - 1}, got values "
                             f"{sorted(set(g.tolist()))}")
        if not math.isfinite(float(zd.sum())) and not bool(torch.isfinite(zd).all()):
            raise ValueError("predictions contain NaN or Inf; nothing was changed")
        return n_b.view(C, S)

    def adjust(self, scores: Tensor, groups: Tensor, labels: Tensor | None = None) -> Tensor:
        """Adjust a batch of scores and update the serving state; returns a new tensor shaped
        and typed like ``scores`` (outside any autograd graph)."""
        # Inference mode drops autograd bookkeeping from every small op of the step; the
        # result is copied out of it so that callers may use it freely (even in autograd).
        with torch.inference_mode():
            q = self._adjust(scores, groups, labels)
        return q.to(scores.dtype, copy=True).view(scores.shape)

    def _adjust(self, scores: Tensor, groups: Tensor, labels: Tensor | None) -> Tensor:
        z, g, y = self._check(scores, groups, labels)
        S, C = self.num_groups, self.num_classes
        N = z.numel()
        dt = self._dtype
        zd = z.to(dt)
        # Cell of each row: label class * S + group (the group alone with one class).
        key = y.long() * S + g if C == 2 else g  # type: ignore[union-attr]
        n_b = self._cell_counts(zd, g, key)
        if y is not None:
            y = y.to(dt)
            self.label_sum.view(-1).index_add_(0, key, y)
        # Running raw statistics include this batch: the dual responds to it at once.
        count = self.count
        count.add_(n_b)
        self.raw_sum.view(-1).index_add_(0, key, zd)
        share = self._shares if self._shares is not None else \
            count / count.sum(-1, keepdim=True).clamp(min=self._one)
        if self._decision:
            # The dual learns from the decisions its own offsets produce, so this batch's
            # response comes first, with the offsets as they stand.
            shifted = zd - self._offsets(share).view(-1).index_select(0, key)
            self.response_positive_sum.view(-1).index_add_(
                0, key, (shifted >= self.threshold).to(dt))
            self._dual_step(share)
        else:
            self._dual_step(share)
            shifted = zd - self._offsets(share).view(-1).index_select(0, key)
        if N >= self.b_tau:
            # Large batch: the exact projection of the raw scores of this batch alone (the
            # smallest change that meets eps, box included); the dual still learns from it.
            q = self._project_batch(zd, key, n_b.to(dt), y)
        elif N == 1 and self.pooled == "hard" and not (self._residual or self._decision):
            q = self._serve_single(shifted, key)
        else:
            q = self._serve_stream(shifted, key, n_b.to(dt))
        if N < self.b_tau and self.prediction_bounds is not None:
            q = q.clamp(*self.prediction_bounds)
        self.out_sum.view(-1).index_add_(0, key, q)
        value = q  # what the metric averages: the served scores, or their decisions
        if self._decision:
            value = (q >= self.threshold).to(dt)
            self.positive_sum.view(-1).index_add_(0, key, value)
        if N > 1:  # a single prediction has no batch gap
            self._batch_stats(value, key, n_b, y)
        diff = q - zd
        self.squared_adjustment.add_(torch.dot(diff, diff))
        self.cumulative_samples.add_(N)
        self.num_batches.add_(1)
        torch.maximum(self.lambda_max, self._lam.max(), out=self.lambda_max)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("fair inference batch %d: size %d, lambda max %.4f",
                         int(self.num_batches), N, float(self.lambda_max))
        return q

    def _project_batch(self, zd: Tensor, key: Tensor, n_b: Tensor, y: Tensor | None) -> Tensor:
        """The exact projection of one batch onto its own constraint."""
        S, C = self.num_groups, self.num_classes
        eps = self.fairness_tolerance
        if self._decision:
            return decision_band_project(zd, key, C, S, eps, self.threshold)
        if self._residual:
            targets = self._cell_sums(key, y) / n_b.clamp(min=1)  # type: ignore[arg-type]
            return project_cells(zd, key, C, S, eps, self.prediction_bounds, targets).q
        if self.prediction_bounds is None:
            # Without bounds the projection shifts whole groups: the closed-form band
            # projection of the raw group means, weighted by the group sizes.
            in_batch = n_b > 0
            raw_mean = self._cell_sums(key, zd) / n_b.clamp(min=1)
            target = band_project(raw_mean, n_b, eps, in_batch)
            return zd + torch.where(in_batch, target - raw_mean, 0.0).view(-1)[key]
        return project_groups(zd, key, C * S, C, eps, self.prediction_bounds)[0]

    def _cell_sums(self, key: Tensor, values: Tensor) -> Tensor:
        """Sum of ``values`` per cell, (C, S)."""
        C, S = self.num_classes, self.num_groups
        return torch.bincount(key, weights=values, minlength=C * S).view(C, S)

    def _serve_stream(self, shifted: Tensor, key: Tensor, n_b: Tensor) -> Tensor:
        """Small batch: the offset scores, corrected so that the pooled constraint holds
        (``pooled="hard"``) and, for the parity of means, the batch's own band too."""
        S, C = self.num_groups, self.num_classes
        eps = self.fairness_tolerance
        if self.pooled == "dual" and (self._residual or self._decision):
            return shifted
        if self._decision:
            return decision_band_project(shifted, key, C, S, eps, self.threshold,
                                         prior_count=self.count - n_b,
                                         prior_pos=self.positive_sum)
        in_batch = n_b > 0
        mean_b = self._cell_sums(key, shifted) / n_b.clamp(min=1)
        if self._residual:
            # Each group's pooled mean into its pooled label mean +/- eps: the smallest shift.
            count = self.count.clamp(min=1)
            pooled = (self.out_sum + mean_b * n_b) / count
            ybar = self.label_sum / count
            target = pooled.clamp(min=ybar - eps, max=ybar + eps)
            delta = torch.where(in_batch, (target - pooled) * count / n_b.clamp(min=1), 0.0)
        else:
            delta = self._shifts_stream(mean_b, n_b, in_batch, self.count > 0)
        return shifted + delta.view(-1)[key]

    def _dual_step(self, share: Tensor) -> None:
        count = self.count
        # The primal response to the current offsets, per cell; NaN in cells not seen yet,
        # so that constraints involving them enter the dual step as NaN and are left out.
        if self._decision:
            r = self.response_positive_sum / count
        else:
            r = self.raw_sum / count - self._offsets(share)
        if self._residual:
            d = r - self.label_sum / count
            c = torch.stack([d, -d], -1) - self._eps
        else:
            c = r.index_select(1, self._pair_g) - r.index_select(1, self._pair_h) - self._eps
        self.dual._apply_dual_step([c.reshape(-1).to(self._lam.dtype)])

    def _serve_single(self, z: Tensor, key: Tensor) -> Tensor:
        """One prediction moves only its own cell's pooled mean: clamp it to the interval
        that keeps that mean within eps of every other seen group's of its class. When those
        are already further apart than eps (only after a large batch), aim at the middle;
        with no other group seen, the prediction stays as it is."""
        count = self.count  # this prediction counted, its value not yet served
        # Pooled means of the other seen cells of the class; NaN elsewhere (0/0 when unseen).
        pooled = (self.out_sum / count).view(-1) + self._not_others.index_select(0, key)[0]
        lo = torch.nan_to_num(pooled, nan=-math.inf).amax()
        hi = torch.nan_to_num(pooled, nan=math.inf).amin()
        bounds = torch.stack([lo, hi]) + self._eps_pm  # [lo - eps, hi + eps]
        # An empty interval (lo > hi) closes onto its middle; -inf/+inf (no other cell) stay.
        bounds = torch.addcmul(bounds, self._half_pm, torch.relu(torch.dot(bounds, self._sides)))
        # The cell's pooled mean (out + q) / n within the bounds, solved for q.
        n = count.view(-1).index_select(0, key)
        out = self.out_sum.view(-1).index_select(0, key)
        x = bounds * n - out
        return z.clamp(min=x[:1], max=x[1:])

    def _shifts_stream(self, mean_b: Tensor, n_b: Tensor, in_batch: Tensor,
                       seen: Tensor) -> Tensor:
        """Smallest group shifts meeting (a) the batch band and (b) the pooled band."""
        eps = self.fairness_tolerance
        pooled_base = (self.out_sum + mean_b * n_b) / self.count.clamp(min=1)
        scale = n_b / self.count.clamp(min=1)  # d pooled mean / d shift
        multi = in_batch & (in_batch.sum(-1, keepdim=True) >= 2)
        if self.pooled == "dual":
            y = band_project(mean_b, n_b, eps, multi)
            return torch.where(in_batch, y - mean_b, 0.0)
        if self.num_groups == 2:
            return self._two_group_shifts(mean_b, n_b, multi, pooled_base, scale, seen)
        # Metric sum_g n_g delta_g^2; in pooled coordinates p = base + scale * delta.
        w_pooled = torch.where(in_batch, n_b / scale.clamp(min=1e-300) ** 2, _PIN)

        def proj_batch(d: Tensor) -> Tensor:
            y = band_project(mean_b + d, n_b, eps, multi)
            return torch.where(in_batch, y - mean_b, d)

        def proj_pooled(d: Tensor) -> Tensor:
            p = band_project(pooled_base + scale * d, w_pooled, eps, seen)
            return torch.where(in_batch, (p - pooled_base) / scale.clamp(min=1e-300), d)

        d = torch.zeros_like(mean_b)
        inc_a = torch.zeros_like(d)
        inc_b = torch.zeros_like(d)
        for _ in range(self.dykstra_iters):
            y = proj_batch(d + inc_a)
            inc_a = d + inc_a - y
            d_new = proj_pooled(y + inc_b)
            inc_b = y + inc_b - d_new
            d = d_new
        return torch.where(in_batch, d, 0.0)

    def _two_group_shifts(self, mean_b: Tensor, n_b: Tensor, multi: Tensor, pooled: Tensor,
                          scale: Tensor, seen: Tensor) -> Tensor:
        """(a) and (b) for two groups: an exact 2-variable QP per label class."""
        eps = self.fairness_tolerance
        inf = torch.full_like(mean_b[..., 0], math.inf)
        gb = mean_b[..., 1] - mean_b[..., 0]
        gp = pooled[..., 1] - pooled[..., 0]
        both_b = multi.all(-1)
        both_p = seen.all(-1)
        one = torch.ones_like(gb)
        rows = torch.stack([
            torch.stack([-one, one], -1), torch.stack([one, -one], -1),
            torch.stack([-scale[..., 0], scale[..., 1]], -1),
            torch.stack([scale[..., 0], -scale[..., 1]], -1),
        ], -2)
        rhs = torch.stack([
            torch.where(both_b, eps - gb, inf), torch.where(both_b, eps + gb, inf),
            torch.where(both_p, eps - gp, inf), torch.where(both_p, eps + gp, inf),
        ], -1)
        w = torch.where(n_b > 0, n_b, torch.ones_like(n_b))
        return two_slab_qp(w, rows, rhs)

    def _gaps(self, value: Tensor, present: Tensor, target: Tensor | None) -> Tensor:
        """Per label class: the largest gap between present groups' values, or for the
        residual the largest distance of a value from its target; NaN where undefined."""
        if self._residual:
            dist = torch.where(present, (value - target).abs(), -math.inf)  # type: ignore[operator]
            return torch.where(present.any(-1), dist.amax(-1), math.nan)
        hi = torch.where(present, value, -math.inf).amax(-1)
        lo = torch.where(present, value, math.inf).amin(-1)
        return torch.where(present.sum(-1) >= 2, hi - lo, math.nan)

    def _batch_stats(self, value: Tensor, key: Tensor, n_b: Tensor, y: Tensor | None) -> None:
        """This batch's gap (per-group means of ``value``: the served predictions, or their
        decisions) into the weighted average of the fairness_training inference guide."""
        cnt = n_b.clamp(min=1)
        value_b = self._cell_sums(key, value) / cnt
        target_b = None if y is None else self._cell_sums(key, y) / cnt
        gaps = self._gaps(value_b, n_b > 0, target_b)
        defined = ~torch.isnan(gaps)
        gap = torch.where(defined, gaps, 0.0).amax()
        # A batch's gap is defined when some label class holds two or more groups (any
        # group, for the residual).
        weight = defined.any() * float(value.numel())
        self.weighted_gap_sum.add_(weight * gap)
        self.weighted_gap_samples.add_(weight)
        self.cumulative_weighted_violation.add_(weight * (gap - self.fairness_tolerance))

    # ---------------------------------------------------------------- report
    def stats(self) -> dict[str, Any]:
        """Serving statistics (named as in the fairness_training inference guide); reading them
        synchronises with the device."""
        count = self.count.clamp(min=1)
        mean = self.out_sum / count
        value = self.positive_sum / count if self._decision else mean
        gaps = self._gaps(value, self.count > 0, self.label_sum / count)
        gaps = gaps[~torch.isnan(gaps)]
        pooled = float(gaps.max()) if gaps.numel() else math.nan
        wn = float(self.weighted_gap_samples)
        n = float(self.cumulative_samples)
        t = self.dual_update_count
        eta_0 = self.dual.param_groups[0]["lr"]
        eta_t = self.dual.step_size(self.dual.param_groups[0], max(t, 1))
        lam_max = float(self.lambda_max)
        per_group = {}
        for k in range(self.num_classes):
            for s in range(self.num_groups):
                name = f"group_{s}" if self.num_classes == 1 else f"label_{k}/group_{s}"
                cnt = float(self.count[k, s])
                per_group[name] = {
                    "count": int(cnt),
                    "mean_prediction": float(mean[k, s]) if cnt else math.nan,
                    "mean_raw": float(self.raw_sum[k, s] / cnt) if cnt else math.nan,
                }
                if self._decision:
                    per_group[name]["positive_rate"] = \
                        float(self.positive_sum[k, s] / cnt) if cnt else math.nan
                if self._residual:
                    per_group[name]["mean_label"] = \
                        float(self.label_sum[k, s] / cnt) if cnt else math.nan
        return {
            "weighted_avg_fairness_gap": float(self.weighted_gap_sum) / wn if wn else math.nan,
            "pooled_aggregate_gap": pooled,
            "aggregate_gap": pooled,
            "per_group": per_group,
            "lambda_max": lam_max,
            "lambda_final": float(self.dual.duals.max()) if self.dual.m else 0.0,
            "total_samples": int(n),
            "num_batches": int(self.num_batches),
            "fairness_tolerance": self.fairness_tolerance,
            "cumulative_weighted_violation": float(self.cumulative_weighted_violation),
            "mean_squared_adjustment": float(self.squared_adjustment) / n if n else math.nan,
            "eta_0": eta_0,
            # Seed 001's bound on the weighted average gap: eps + lambda_max / (eta_T N).
            "theoretical_bound": (self.fairness_tolerance + lam_max / (eta_t * n)
                                  if n and eta_t > 0 else math.inf),
        }

    def evaluate(self, loader: Iterable, criterion: torch.nn.Module | None = None,
                 reset_before: bool = False) -> dict[str, Any]:
        """Serve every batch of ``loader`` (``(x, y)`` or ``(x, groups, y)``) and report.

        Returns the keys of the fairness_training small-batch streaming example: ``test_loss``
        (``criterion`` on the adjusted outputs, when given), ``weighted_avg_fairness_gap``,
        ``pooled_aggregate_gap`` and the rest of :meth:`stats`. The state is *not* reset unless
        ``reset_before=True``.
        """
        if reset_before:
            self.reset()
        total, n = 0.0, 0
        for batch in loader:
            if len(batch) == 3:
                x, groups, y = batch
                groups = groups.argmax(-1) if groups.dim() == 2 and groups.shape[1] > 1 \
                    else groups
            else:
                x, y = batch
                groups = None
            labels = y if self.metric in _LABELLED else None
            out = self.forward(x, groups, labels)
            if criterion is not None:
                total += float(criterion(out, y.view_as(out).to(out.dtype))) * len(x)
                n += len(x)
        result = self.stats()
        result["test_loss"] = total / n if n else math.nan
        return result
