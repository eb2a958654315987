r"""Fair inference: adjust a deployed model's predictions so that group parity holds on a
stream, after every batch, down to one prediction per call.

Every call serves the smallest (:math:`\ell_2`) change of its scores that keeps

* **(B) the pooled constraint**: the group means of *everything served so far*, this batch
  included, within :math:`\varepsilon` (``pooled="hard"``, the default);
* **(A) the batch's own constraint**: its group means within :math:`\varepsilon`, for every
  batch of at least ``b_tau`` rows (the original system's large-batch regime) and, with
  ``per_batch=True``, for smaller batches holding two or more groups too (off by default:
  below ``b_tau`` the original system promises fairness of the pool only, and the batch's own
  constraint costs up to 6 accuracy points at batch 4 where the pooled one alone costs under
  1.2; see docs/inference.md);
* **the prediction bounds**, when given, inside the problem (not a clamp afterwards).

Small batches (fewer than ``b_tau`` rows) are corrected from *offset* scores
:math:`z_i - \nu_{g(i)}`; large ones from their raw scores (the exact projection of the
batch of the original system, now with the pool). The offsets are

.. math:: \nu_g = \nu^{cal}_g + \sum_h (\lambda_{gh} - \lambda_{hg})\, \pi_h,

the calibration's offsets (:meth:`FairInference.calibrate`, zero by default) plus the
minimiser of the pooled Lagrangian :math:`\sum_i \tfrac12 (q_i - z_i)^2 + \sum_{gh}
\lambda_{gh} (\mu_g - \mu_h - \varepsilon)` in the metric that scales each group's move by
the other groups' shares :math:`\pi` (the dual curvature is then at most 1, so
:math:`\eta_0 \le 1` is stable). After each batch the multipliers take one projected ascent
step :math:`\lambda \leftarrow [\lambda + \eta_t c]_+`, :math:`\eta_t = \eta_0 / \sqrt t`, on
:math:`c_{gh} = r_g - r_h - \varepsilon` with :math:`r_g` the running raw mean of group
:math:`g` (plus the calibration's prior) minus its offset: online gradient ascent on the dual
of the pooled problem (Zinkevich, ICML 2003; Mahdavi, Jin & Yang, JMLR 2012). The offsets do
the bulk of the correction, so the hard pooled step rarely has much to do.

The solvers live in :mod:`humancompatible_train._projection`; the host step in
:mod:`._serving` (its per-call state in Python floats in :mod:`._host`), the device step in
:mod:`._device`, calibration in :mod:`._calibration`, the statistics in :mod:`._report`,
the state registry in :mod:`._state`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._validation import check_bool, check_choice, check_int, check_real, fail
from . import _calibration, _host, _report, _serving
from ._checks import (
    check_bounds,
    check_loaded,
    check_settings,
    check_shares,
)
from ._state import Field, Layout

__all__ = ["FairInference"]

logger = logging.getLogger("humancompatible_train")

_METRICS = ("mean_pred", "equalized_odds", "positive_rate", "mean_residual")
# Metrics whose constraint involves labels, which every batch must then carry.
_LABELLED = ("equalized_odds", "mean_residual")
_VERSION = 2
# The serving state, zeroed by reset() (the original system's reset, extended to every
# running statistic), and what calibrate() fits, which reset() keeps.
_SERVING_CELLS = ("raw_sum", "out_sum", "count", "label_sum", "positive_sum",
                  "response_positive_sum")
_SERVING_SCALARS = _report.SERVING_SCALARS


class FairInference(torch.nn.Module):
    r"""Wrap a trained model so that its predictions meet group parity on a stream.

    Args:
        model: the trained model (its output is flattened to one score per row), or ``None``
            to adjust scores passed to :meth:`adjust`.
        num_groups: number of groups :math:`S \ge 2` (ids ``0..S-1``).
        fairness_tolerance: :math:`\varepsilon \ge 0`.
        b_tau: batches of at least this size are projected from their raw scores onto their
            own constraint (and the pooled one).
        eta_0: initial dual step :math:`\eta_0 \ge 0` of the offsets.
        metric: ``"mean_pred"`` (mean-prediction parity), ``"equalized_odds"`` (the same
            within each label class), ``"positive_rate"`` (parity of the positive rate of the
            decisions :math:`q \ge` ``threshold``) or ``"mean_residual"`` (each group's mean
            prediction within :math:`\varepsilon` of its mean label). The second and the last
            need labels with every batch.
        threshold: decision threshold of ``"positive_rate"`` (ignored otherwise).
        prediction_bounds: optional ``(lo, hi)``: every served prediction lies in it, and
            the constraints hold with it (the bounds are part of the projection). For
            ``"positive_rate"`` it must satisfy ``lo < threshold <= hi``.
        protected_attr_idx: column of ``x`` holding the group id, when :meth:`forward` gets
            no ``groups``.
        pooled: ``"hard"`` enforces the pooled constraint after every batch; ``"dual"``
            leaves it to the offsets (an asymptotic guarantee only). Default ``"hard"``,
            except for ``"mean_residual"``, where enforcing it from the first prediction on
            would copy each group's first labels into its predictions.
        per_batch: whether batches smaller than ``b_tau`` with two or more groups must also
            meet the constraint on their own (mean-type metrics). Default ``False``: below
            ``b_tau`` only the pooled constraint holds, as in the original system's
            small-batch regime (its guarantee is on the aggregate, never on a small batch);
            batches of ``b_tau`` rows or more always meet their own constraint. Measured on
            the original's streaming example (docs/inference.md), the batch's own constraint
            costs 6.2 accuracy points against the offline projection at batch 4 and 2.0 at
            batch 16 (random order), against 0.5 and 0.5 with the pooled one alone.
        group_shares: the groups' shares :math:`\pi` in the population (per label class for
            ``"equalized_odds"``), e.g. from the training data. Default: the running shares
            of the stream. :meth:`calibrate` sets them.
        check_finite: on an accelerator, with ``"mean_pred"`` or ``"equalized_odds"``, two
            groups and no bounds, a call runs in tensor operations on the device (the wrapper
            moved there with ``.to()``) and reads one flag back (finite scores, ids in range,
            valid labels, finite sums) to raise before anything changes. ``False`` drops that
            read: the call never waits for the device, and invalid rows are missing values
            (served as NaN, counted nowhere). Other settings and CPU tensors always check.

    The multipliers of a *training* dual optimizer are not offsets of scores (they weigh a
    gap against the training loss), so they cannot warm-start this wrapper; use
    :meth:`calibrate` on held-out data instead.
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
        pooled: str | None = None,
        per_batch: bool = False,
        group_shares: Sequence[float] | Tensor | None = None,
        threshold: float = 0.5,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        where = "FairInference: "
        if model is not None and not callable(model):
            raise fail("model", "a torch.nn.Module (or None)", type(model).__name__, where)
        S = check_int("num_groups", num_groups, minimum=2, where=where)
        metric = check_choice("metric", metric, _METRICS, where)
        self.fairness_tolerance = check_real("fairness_tolerance", fairness_tolerance, low=0,
                                             where=where)
        self.b_tau = check_int("b_tau", b_tau, minimum=1, where=where)
        # The projections aim a hair inside the band, so that the rounding of the running
        # sums never reports a gap above it.
        self._eps_target = self.fairness_tolerance * (1.0 - 1e-9)
        self.eta_0 = check_real("eta_0", eta_0, low=0, where=where)
        self.threshold = check_real("threshold", threshold, where=where)
        if pooled is None:
            pooled = "dual" if metric == "mean_residual" else "hard"
        self.pooled = check_choice("pooled", pooled, ("hard", "dual"), where)
        self.per_batch = check_bool("per_batch", per_batch, where)
        self.check_finite = check_bool("check_finite", check_finite, where)
        self.prediction_bounds = check_bounds(prediction_bounds, metric, self.threshold, where)
        if protected_attr_idx is not None:
            protected_attr_idx = check_int("protected_attr_idx", protected_attr_idx,
                                           where=where)
        self.protected_attr_idx = protected_attr_idx
        self.model = model
        self.metric = metric
        self.num_groups = S
        self.num_classes = C = 2 if metric == "equalized_odds" else 1
        self._residual = metric == "mean_residual"
        self._decision = metric == "positive_rate"
        self._labelled = metric in _LABELLED
        # Pair p is the constraint mu_g - mu_h - eps <= 0 (per label class); the residual
        # has (upper, lower) per group.
        self._pairs = [(g, h) for g in range(S) for h in range(S) if g != h]
        m = 2 * S if self._residual else C * len(self._pairs)
        cells = (C, S)
        fields = [
            Field("raw_sum", cells, "real", True),
            Field("out_sum", cells, "real", True),
            Field("count", cells, "count", True),
            Field("label_sum", cells, "real", True),
            Field("positive_sum", cells, "count", True),
            Field("response_positive_sum", cells, "count", True),
            Field("multipliers", (m,), "nonneg", True),
            Field("dual_steps", (), "int", True),
            Field("cumulative_samples", (), "count", True),
            Field("cumulative_weighted_violation", (), "real", True),
            Field("weighted_gap_sum", (), "nonneg", True),
            Field("weighted_gap_samples", (), "count", True),
            Field("lambda_max", (), "nonneg", True),
            Field("num_batches", (), "int", True),
            Field("squared_adjustment", (), "nonneg", True),
            Field("group_shares", cells, "nonneg", False),
            Field("fixed_shares", (), "bool", False),
            Field("calibration_offsets", cells, "real", False),
            Field("prior_count", cells, "nonneg", False),
            Field("prior_sum", cells, "real", False),
            Field("prior_label_sum", cells, "real", False),
        ]
        self._layout = Layout(fields)
        self.register_buffer("_flat", torch.zeros(self._layout.size, dtype=torch.float64),
                             persistent=False)
        self._np: np.ndarray | None = None
        if group_shares is not None:
            shares = check_shares(group_shares, C, S, where)
            self._set("group_shares", shares)
            self._set("fixed_shares", torch.ones(()))

    # ------------------------------------------------------------------- the state
    def _view(self, name: str) -> Tensor:
        return self._layout.view(self._flat, name)

    def _set(self, name: str, value: Tensor) -> None:
        self._view(name).copy_(value)

    def _write_flat(self, values: list[float]) -> None:
        """Write the whole state at once (the last act of a serving step)."""
        flat = self._flat
        if flat.device.type != "cpu":
            flat.copy_(torch.tensor(values, dtype=torch.float64))
            return
        # A host view of the buffer, cached; checked against the buffer's memory, which
        # .to(), copies, pickling or an assigning load may have replaced.
        view = self._np
        if view is None or view.ctypes.data != flat.data_ptr():
            view = self._np = flat.numpy()
        view[:] = values

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_np"] = None  # a view of this object's buffer, not to be copied with it
        return state

    def _apply(self, fn: Any, recurse: bool = True) -> FairInference:
        # .to()/.cuda()/.double() replace the buffer: drop the cached host view, and keep the
        # state in float64 whatever the module's dtype becomes (sums stay exact).
        super()._apply(fn, recurse)
        if self._flat.dtype != torch.float64:
            self._flat = self._flat.to(torch.float64)
        self._np = None
        return self

    @property
    def lambda_dual(self) -> Tensor:
        """The multipliers: shape (C, S, S), ``[k, g, h]`` for mu_g - mu_h <= eps in class k;
        for ``"mean_residual"`` shape (S, 2), ``[g]`` = (upper, lower) side of group g."""
        lam = self._view("multipliers")
        S, C = self.num_groups, self.num_classes
        if self._residual:
            return lam.view(S, 2).clone()
        mat = torch.zeros(C, S, S, dtype=lam.dtype, device=lam.device)
        g = torch.tensor([p[0] for p in self._pairs], device=lam.device)
        h = torch.tensor([p[1] for p in self._pairs], device=lam.device)
        mat[:, g, h] = lam.view(C, -1)
        return mat

    @property
    def dual_update_count(self) -> int:
        """Number of dual steps taken (one per served batch)."""
        return int(self._view("dual_steps"))

    @property
    def offsets(self) -> Tensor:
        r"""The current offsets :math:`\nu` (C, S) subtracted from small batches' scores."""
        st = _host._HostState(self)
        return torch.tensor(st.offsets(st.lam), dtype=torch.float64).view(
            self.num_classes, self.num_groups)

    def reset(self) -> None:
        """Zero the serving state (the original system's reset: multipliers, dual step count,
        cumulative samples and violation, lambda max; and every other running statistic).
        What :meth:`calibrate` fitted (offsets, prior, shares) and ``group_shares`` stay."""
        with torch.no_grad():
            for sl in self._layout.reset_slices:
                self._flat[sl] = 0.0

    def get_extra_state(self) -> dict[str, Any]:
        return {"version": _VERSION, "settings": self._settings()}

    def set_extra_state(self, state: Any) -> None:
        check_settings(state, self._settings())

    def _settings(self) -> dict[str, Any]:
        """Every constructor setting that changes what is served (checked on load)."""
        bounds = None if self.prediction_bounds is None else list(self.prediction_bounds)
        return {"num_groups": self.num_groups, "metric": self.metric,
                "fairness_tolerance": self.fairness_tolerance, "b_tau": self.b_tau,
                "eta_0": self.eta_0, "threshold": self.threshold,
                "prediction_bounds": bounds, "pooled": self.pooled,
                "per_batch": self.per_batch}

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str,
                            keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        self._layout.save(self._flat, destination, prefix)

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str,
                              local_metadata: dict[str, Any], strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        # Everything is checked before anything is written: settings first (a wrapper of
        # another size or metric is refused by name), then every entry.
        extra = prefix + "_extra_state"
        if extra in state_dict:
            check_settings(state_dict[extra], self._settings())
        new = self._layout.read(state_dict, prefix, self._flat, strict, missing_keys)
        check_loaded(self._layout, new, self.num_classes, self.num_groups)
        mine = {prefix + f.name for f in self._layout.fields}
        rest = {k: v for k, v in state_dict.items() if k not in mine}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        with torch.no_grad():
            self._flat.copy_(new)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        """Restore a state saved by :meth:`state_dict`. Raises a ValueError and changes
        nothing (the wrapped model included) when an entry is missing, malformed, non-finite
        or from a wrapper with other settings."""
        if not isinstance(state_dict, Mapping):
            raise fail("state_dict", "a mapping from FairInference.state_dict()",
                       type(state_dict).__name__)
        before = copy.deepcopy(super().state_dict())
        flat = self._flat.clone()
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except Exception as exc:
            super().load_state_dict(before, strict=False)
            with torch.no_grad():
                self._flat.copy_(flat)
            if isinstance(exc, RuntimeError):
                raise ValueError(f"state_dict: {exc}") from None
            raise
        finally:
            self._np = None

    # ----------------------------------------------------------------- serving
    def forward(self, x: Tensor, groups: Tensor | None = None,
                labels: Tensor | None = None) -> Tensor:
        """Model scores for ``x``, adjusted; shaped like the model's output (float32 when the
        model computes in half precision)."""
        if self.model is None:
            raise ValueError("FairInference: this wrapper has no model; call "
                             "adjust(scores, groups)")
        if groups is None:
            idx = self.protected_attr_idx
            if idx is None:
                raise ValueError("groups: expected a tensor of group ids (or set "
                                 "protected_attr_idx), got None")
            if not isinstance(x, Tensor) or x.dim() != 2 or not -x.shape[1] <= idx < x.shape[1]:
                raise fail("protected_attr_idx", f"a column of x (x has shape "
                           f"{tuple(getattr(x, 'shape', ()))})", idx)
            groups = x[:, idx].round().long()
        with torch.no_grad():
            out = self.model(x)
        if isinstance(out, Tensor) and out.dtype in (torch.float16, torch.bfloat16):
            out = out.float()
        return self.adjust(out, groups, labels)

    def adjust(self, scores: Tensor, groups: Tensor, labels: Tensor | None = None) -> Tensor:
        """Adjust a batch of scores and update the serving state; returns a new tensor shaped
        and typed like ``scores`` (outside any autograd graph). ``labels`` are required by
        ``"equalized_odds"`` ({0, 1}) and ``"mean_residual"`` (finite); other metrics check
        and ignore them. Raises a ValueError, changing nothing, on bad input."""
        q = _serving.serve(self, scores, groups, labels)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("fair inference batch %d: size %d, lambda max %.4f",
                         int(self._view("num_batches")), q.numel(),
                         float(self._view("lambda_max")))
        return q

    # ------------------------------------------------------------- calibration
    def calibrate(self, loader: Iterable, *, prior_weight: float = 1.0) -> dict[str, Any]:
        """Fit the offsets and group shares on held-out data (batches as for
        :meth:`evaluate`: ``(x, y)`` or ``(x, groups, y)``), without serving anything.

        See :meth:`calibrate_scores`; this one runs the model over ``loader`` first.
        """
        if self.model is None:
            raise ValueError("calibrate: this wrapper has no model; use "
                             "calibrate_scores(scores, groups, labels)")
        scores, groups, labels = [], [], []
        for batch in loader:
            x, g, y = _unpack(batch)
            if g is None:
                idx = self.protected_attr_idx
                if idx is None:
                    raise ValueError("calibrate: batches carry no groups and "
                                     "protected_attr_idx is None")
                g = x[:, idx].round().long()
            with torch.no_grad():
                out = self.model(x)
            scores.append(out.detach().float().reshape(-1))
            groups.append(g.reshape(-1))
            labels.append(y.reshape(-1))
        if not scores:
            raise ValueError("calibrate: expected at least one batch, got an empty loader")
        return self.calibrate_scores(torch.cat(scores), torch.cat(groups), torch.cat(labels),
                                     prior_weight=prior_weight)

    def calibrate_scores(self, scores: Tensor, groups: Tensor, labels: Tensor | None = None,
                         *, prior_weight: float = 1.0) -> dict[str, Any]:
        r"""Fit the offsets and shares on held-out scores; nothing is served or counted.

        * **Offsets** :math:`\nu^{cal}`: those of the exact offline projection of these
          scores onto the constraint (the group shifts of the band projection of the group
          means; for ``"positive_rate"`` the score shift per group that reproduces the
          fewest-flips decisions; for ``"mean_residual"`` the shift that brings each group's
          mean within :math:`\varepsilon` of its mean label). Small batches are served from
          :math:`z - \nu`, so a stream like these data meets :math:`\varepsilon` from its
          first prediction with little left for the hard step.
        * **Shares** :math:`\pi`: the groups' shares here (``group_shares``).
        * **Prior**: these counts and sums, scaled by ``prior_weight``, join the running
          statistics *of the dual only* (not the served pool, not :meth:`stats`), so that its
          first steps do not react to the noise of a handful of predictions. Use a smaller
          weight when the stream may drift away from these data quickly; 0 disables it.

        The multipliers and the dual step count restart at zero (they are a correction on
        top of the calibrated offsets); the served statistics are left as they are.
        ``reset()`` keeps the calibration. Returns the offsets and shares.
        """
        return _calibration.fit(self, scores, groups, labels, prior_weight)

    # ------------------------------------------------------------------ report
    def stats(self) -> dict[str, Any]:
        """Serving statistics under the original system's names (reading them synchronises
        with the device)."""
        return _report.stats(self)

    def evaluate(self, loader: Iterable, criterion: torch.nn.Module | None = None,
                 reset_before: bool = False) -> dict[str, Any]:
        """Serve every batch of ``loader`` (``(x, y)`` or ``(x, groups, y)``) and report:
        ``test_loss`` (``criterion`` on the adjusted outputs, when given) and :meth:`stats`.
        The state is *not* reset unless ``reset_before=True``."""
        if reset_before:
            self.reset()
        total, n = 0.0, 0
        for batch in loader:
            x, groups, y = _unpack(batch)
            labels = y if self._labelled else None
            out = self.forward(x, groups, labels)
            if criterion is not None:
                total += float(criterion(out, y.view_as(out).to(out.dtype))) * len(x)
                n += len(x)
        result = self.stats()
        result["test_loss"] = total / n if n else math.nan
        return result


def _make_view(name: str) -> property:
    return property(lambda self: self._view(name),
                    doc=f"``{name}``: a view of the serving state (writing to it changes it).")


for _name in _SERVING_CELLS + _SERVING_SCALARS:
    setattr(FairInference, _name, _make_view(_name))


def _unpack(batch: Any) -> tuple[Tensor, Tensor | None, Tensor]:
    if len(batch) == 3:
        x, groups, y = batch
        if groups.dim() == 2 and groups.shape[1] > 1:
            groups = groups.argmax(-1)
        return x, groups, y
    x, y = batch
    return x, None, y

