r"""The shared machinery of every dual optimizer.

A *dual optimizer* owns the Lagrange multipliers :math:`\lambda` of a constrained problem

.. math::

    \min_\theta f(\theta) \quad \text{s.t.} \quad c_g(\theta) \le 0 \ (\text{inequality groups}),
    \qquad c_g(\theta) = 0 \ (\text{equality groups}),

updates them from observed constraint values, and returns the Lagrangian
:math:`\mathcal L(\theta, \lambda) = f(\theta) + \sum_g \ell_g(\lambda_g, c_g(\theta))` that an
ordinary ``torch.optim`` optimizer then minimises over :math:`\theta` (gradient
descent--ascent, Arrow, Hurwicz & Uzawa 1958).

Each *constraint group* is one ``param_group`` of a :class:`torch.optim.Optimizer`: its
``params`` is the single 1-D multiplier tensor of the group, and it carries its own name,
size, sense (``is_ineq``), multiplier range and algorithm hyperparameters, so learning-rate
schedulers and ``state_dict`` habits carry over unchanged.

Subclasses state their update rule (:meth:`DualOptimizer._dual_step`) and, when it is not the
plain :math:`\lambda^\top c`, their Lagrangian term (:meth:`DualOptimizer._lagrangian_term`).
The other hooks, each with a default: :meth:`~DualOptimizer._validate_group` (hyperparameters;
run at construction, whenever a param group's values change, and in ``load_state_dict``;
single values are checked by the class's ``_HYPERPARAMETERS`` table of rules),
:meth:`~DualOptimizer._objective` (the loss's weight in the Lagrangian),
:meth:`~DualOptimizer._init_state`, :meth:`~DualOptimizer._validate_state`,
:meth:`~DualOptimizer._prepare_step` (checks that depend on the state, before any group
changes), :meth:`~DualOptimizer._masked_dual_step` / :meth:`~DualOptimizer._per_constraint_tensors`
(``check_finite=False``) and :meth:`~DualOptimizer._zero_step_is_identity`.

Three mechanisms live in their own modules as mixins of :class:`DualOptimizer`: constraint
groups and their multipliers (:mod:`._groups`), the re-check of changed hyperparameters
(:mod:`._revalidation`) and checkpoints, copies and pickling (:mod:`._checkpoint`).
"""

from __future__ import annotations

import abc
import logging
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from .._validation import (
    Rule,
    check_bool,
    check_device,
    check_float_dtype,
    check_int,
    check_settings,
    fail,
    real,
)
from . import _distributed, _hooks, _inputs, indexed
from ._checkpoint import Checkpointing
from ._groups import ConstraintGroups
from ._revalidation import Revalidation
from .indexed import IndicesLike

__all__ = ["DualOptimizer", "ConstraintsLike"]

logger = logging.getLogger("humancompatible_train")

ConstraintsLike = Tensor | Sequence[Tensor] | Mapping[str, Tensor]

# Overriding one of these means a call is no longer "one _dual_step": the fast path is off.
# (_masked_dual_step is not one: the fast path calls it, as the general path does, when
# check_finite=False.)
_FAST_PATH_BLOCKERS = ("step", "forward_update", "_update", "_apply_dual_step", "_lagrangian",
                       "_split", "_check_finite")


def linear_term(duals: Tensor, c: Tensor) -> Tensor:
    r""":math:`\lambda^\top c` for a 1-D ``c``, or a 0-d ``c`` of a one-constraint group."""
    if c.dim() == 0:
        # A scalar constraint times a 0-d view of the multiplier: reshaping c instead would
        # add a node to the autograd graph, which costs more than the product.
        return c * duals.view(())
    return torch.dot(duals, c)


class DualOptimizer(Checkpointing, Revalidation, ConstraintGroups, torch.optim.Optimizer,
                    metaclass=abc.ABCMeta):
    r"""Base class of the dual optimizers: holds multipliers as ``param_groups``.

    Args:
        m: size of the first constraint group, or ``None`` to add groups later with
            :meth:`add_constraint_group`.
        defaults: the algorithm's default hyperparameters (must contain ``"lr"``, the dual
            step size on which learning-rate schedulers act).
        init_duals: initial multipliers of the first group: a number, or a tensor/sequence of
            size ``m``.
        is_ineq: default sense of a group: ``True`` for :math:`c \le 0`, ``False`` for
            :math:`c = 0`.
        dual_range: default ``(low, high)`` clamp of the multipliers; inequality groups are
            always clamped below at 0.
        name: name of the first group (default ``"g0"``, ``"g1"``, ...).
        device, dtype: where the multipliers live (default: CPU, the default dtype; a dtype
            may be given as a string such as ``"float32"``). Constraint tensors must match
            both.
        process_group: a :mod:`torch.distributed` process group; when given, the *detached*
            constraint values that drive the dual step are averaged over its processes with
            ``all_reduce`` so that every replica holds identical multipliers, while the
            Lagrangian keeps the local values so that gradients flow. Every rank takes the same
            decision on non-finite values, and the first step checks that the ranks hold the
            same groups, hyperparameters and multipliers.
        check_finite: raise a :class:`ValueError` naming the group and index when a constraint
            value is NaN or infinite, leaving every multiplier and buffer untouched (one host
            synchronisation per step on accelerators). When ``False``, non-finite entries are
            masked out of the dual step and the Lagrangian with tensor operations instead.

    Copies: :func:`copy.deepcopy` gives an independent optimizer that behaves like the
    original (the process group is shared, not copied); :mod:`pickle` does too, except that an
    optimizer with a ``process_group`` refuses to be pickled (a process group belongs to one
    process). Step and state-dict hooks are not copied, as in :class:`torch.optim.Optimizer`.
    """

    #: Whether ``forward_update`` may take its one-pass route for one group given one tensor;
    #: off automatically for a subclass that overrides a method of the general path.
    _fast_path = True
    #: How each hyperparameter is checked (:meth:`_validate_group`); a subclass extends the
    #: table of its parent (``{**Parent._HYPERPARAMETERS, ...}``) and overrides
    #: :meth:`_validate_group` only for rules that relate several values.
    _HYPERPARAMETERS: dict[str, Rule] = {"lr": real(low=0.0)}
    #: Other names accepted by ``add_constraint_group`` for a hyperparameter key.
    _ALIASES: dict[str, str] = {}
    #: Whether the class overrides :meth:`_prepare_step` (the fast path skips the no-op call).
    _prepares = False
    #: Whether the class overrides :meth:`_objective` (both paths skip the no-op call).
    _weighs_loss = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_fast_path" not in vars(cls):
            cls._fast_path = cls._fast_path and not any(n in vars(cls)
                                                        for n in _FAST_PATH_BLOCKERS)
        cls._prepares = cls._prepare_step is not DualOptimizer._prepare_step
        cls._weighs_loss = cls._objective is not DualOptimizer._objective

    def __init__(
        self,
        m: int | None,
        defaults: dict[str, Any],
        *,
        init_duals: float | Tensor | Sequence[float] = 0.0,
        is_ineq: bool = False,
        dual_range: tuple[float, float] | None = None,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        process_group: Any | None = None,
        check_finite: bool = True,
    ) -> None:
        if not isinstance(defaults, dict) or "lr" not in defaults:
            raise fail("defaults", "a dict holding the dual step size 'lr'", defaults)
        if m is not None:
            m = check_int("m", m, minimum=1)
        if name is not None and m is None:
            raise ValueError("name: expected m as well (name names the first group, which m "
                             f"creates), got name={name!r} with m=None")
        self._device = torch.device("cpu") if device is None else check_device("device", device)
        self._dtype = torch.get_default_dtype() if dtype is None else check_float_dtype(
            "dtype", dtype)
        self.check_finite = check_bool("check_finite", check_finite)
        if self._device.type == "meta" and self.check_finite:
            raise ValueError(
                "device: expected a device that holds values with check_finite=True (the "
                "check reads the constraint values), got 'meta'; pass check_finite=False to "
                "trace shapes on the meta device"
            )
        self.process_group = process_group
        defaults = dict(defaults, is_ineq=check_bool("is_ineq", is_ineq), dual_range=dual_range)
        # Hyperparameters as validated, per group, to re-check only what changed since.
        self._keys = tuple(defaults)
        self._validated: list[tuple[Any, ...] | None] = []
        # Flags that a step sets live in a dict: torch.compile replays a compiled step's dict
        # writes but drops its attribute writes on an optimizer (torch 2.13).
        self._flags: dict[str, Any] = {"opt_called": False, "checked_group": None}
        # torch.optim.Optimizer refuses an empty parameter list; groups are added below.
        self._placeholder = True
        super().__init__([torch.zeros(0)], defaults)
        self._placeholder = False
        self.param_groups.clear()
        self.state.clear()
        if m is not None:
            self.add_constraint_group(m, name=name, init_duals=init_duals)
        else:
            self._normalized(dict(defaults, m=1, name="g0", params=[]), type(self).__name__)

    # ------------------------------------------------------------ the API
    def forward(self, loss: Tensor, constraints: ConstraintsLike, *,
                indices: IndicesLike | None = None) -> Tensor:
        """The Lagrangian at the current multipliers; changes no state.

        With ``check_finite=True`` a non-finite constraint value raises, as in a step.
        ``indices``: the observed entries of partially observed groups (see
        :mod:`~humancompatible_train.dual_optim.indexed`).
        """
        if indices is not None:
            return indexed.forward(self, loss, constraints, indices)
        self._check_loss(loss)
        parts = self._split(constraints, "constraints")
        self._check_hyperparameters()
        if self.check_finite:
            self._check_finite([p.detach() for p in parts], "constraints")
        return self._lagrangian(loss, parts)

    def step(  # type: ignore[override]
        self,
        constraints: ConstraintsLike,
        dual_constraints: ConstraintsLike | None = None,
        *,
        indices: IndicesLike | None = None,
    ) -> None:
        """Take one dual step from the constraint values.

        ``dual_constraints``, when given, drive the step instead of ``constraints`` (see
        :meth:`forward_update`); ``indices``, the observed entries of partially observed
        groups (only those multipliers move). Nothing is changed when an error is raised.
        """
        if indices is not None:
            indexed.step(self, constraints, dual_constraints, indices)
            return
        self._update(self._split(constraints, "constraints"), dual_constraints)

    def update(
        self,
        constraints: ConstraintsLike,
        dual_constraints: ConstraintsLike | None = None,
        *,
        indices: IndicesLike | None = None,
    ) -> None:
        """Alias of :meth:`step`."""
        if indices is not None:
            self.step(constraints, dual_constraints, indices=indices)
        else:
            self.step(constraints, dual_constraints)

    def forward_update(
        self,
        loss: Tensor,
        constraints: ConstraintsLike,
        dual_constraints: ConstraintsLike | None = None,
        *,
        indices: IndicesLike | None = None,
    ) -> Tensor:
        """One dual step, then the Lagrangian at the *new* multipliers.

        This is the two-line integration into a training loop::

            lagrangian = dual.forward_update(loss, constraints)
            lagrangian.backward(); optimizer.step()

        ``dual_constraints`` are *proxy* values: when the quantity you want to constrain has no
        useful gradient (say the positive-rate gap of thresholded decisions), pass a smooth
        surrogate (the gap of probabilities) as ``constraints`` -- it enters the Lagrangian and
        gives the model its gradient -- and the true, possibly non-differentiable values as
        ``dual_constraints``, which alone move the multipliers (Cotter et al., "Optimization
        with non-differentiable constraints...", ALT 2019).

        Hooks registered with ``register_step_pre_hook``/``register_step_post_hook`` run around
        the dual step as for :meth:`step`, with ``args = (self, constraints)`` and
        ``kwargs = {"dual_constraints": ...}`` when proxies are given.

        ``indices`` (a ``long`` tensor, or one per group): the batch observes only these
        constraints of a group, ``constraints`` holds their values in the same order; only
        their multipliers move and only they enter the Lagrangian
        (:mod:`~humancompatible_train.dual_optim.indexed`).
        """
        if indices is not None:
            return indexed.forward_update(self, loss, constraints, dual_constraints, indices)
        groups = self.param_groups
        if (len(groups) == 1 and dual_constraints is None
                and self.process_group is None and self._fast_path
                and isinstance(constraints, Tensor) and isinstance(loss, Tensor)
                and loss.dim() == 0 and not (
                    self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                    or _global_optimizer_pre_hooks or _global_optimizer_post_hooks)):
            # The common case (one group, one tensor, no hooks) in one pass: the same checks,
            # masking and state as the general path below, without its layers, which cost
            # about 1.5 % of a small model's training step (10 of 680 us; 90 us with
            # check_finite=False). Every call saved here is inlined for the same reason.
            group = groups[0]
            duals = group["params"][0]
            if (constraints.dtype == duals.dtype and constraints.device == duals.device and (
                    constraints.shape == duals.shape
                    or constraints.dim() == 0 and group["m"] == 1)):
                seen = self._validated[0]
                if seen is None or len(seen) != len(group) or not all(
                        map(operator.is_, group.values(), seen)):
                    self._check_hyperparameters()
                c = constraints.detach()
                checked = self.check_finite
                if checked and not math.isfinite(float(c if group["m"] == 1 else c.sum())):
                    self._check_finite([c], "constraint values for the dual step")
                state = self.state[duals]
                if self._prepares:
                    self._prepare_step(group, state)
                if checked:
                    self._dual_step(group, state, c)
                else:
                    self._masked_dual_step(group, state, c)
                    # One op whose gradient is zero at the non-finite entries.
                    constraints = torch.nan_to_num(constraints, nan=0.0, posinf=0.0,
                                                   neginf=0.0)
                state["step"] += 1
                # Learning-rate schedulers check that the optimizer stepped before they do.
                self._flags["opt_called"] = True
                if self._weighs_loss:
                    loss = self._objective(loss)
                return loss + self._lagrangian_term(group, duals.clone(), constraints)
        self._check_loss(loss)
        hooked = _hooks.has_step_hooks(self)
        if hooked:
            args, kwargs = _hooks.run_step_pre_hooks(self, constraints, dual_constraints)
            constraints, dual_constraints = _hooks.step_arguments(args, kwargs)
        parts = self._split(constraints, "constraints")
        self._update(parts, dual_constraints)
        self._flags["opt_called"] = True
        if hooked:
            _hooks.run_step_post_hooks(self, args, kwargs)
        return self._lagrangian(loss, parts)

    @property
    def _opt_called(self) -> bool:
        # Read and written by learning-rate schedulers (did the optimizer step before them?).
        return self._flags["opt_called"]

    @_opt_called.setter
    def _opt_called(self, value: bool) -> None:
        self._flags["opt_called"] = value

    def _update(self, parts: list[Tensor], dual_constraints: ConstraintsLike | None) -> None:
        lagrangian = None
        if dual_constraints is not None:
            if self.check_finite:
                if self.process_group is None:
                    self._check_finite([p.detach() for p in parts], "constraints")
                else:
                    # Checked with the collective: raising here alone would leave the other
                    # ranks waiting in all_reduce.
                    lagrangian = parts
            parts = self._split(dual_constraints, "dual_constraints")
        self._apply_dual_step(parts, lagrangian)

    # ------------------------------------------------------ subclass hooks
    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        """Raise a ValueError for invalid hyperparameters of a group; change nothing.

        ``group`` holds every key of ``defaults`` (``is_ineq`` and ``dual_range`` already in
        canonical form), ``name`` and ``m``. It runs at construction, in
        :meth:`add_constraint_group`, in :meth:`load_state_dict` and before a step or forward
        whenever a hyperparameter of the group changed (schedulers write ``lr``). Messages
        follow ``f"{where}: {name}: expected {what}, got {value!r}"``
        (``humancompatible_train._validation``).
        """
        check_settings(group, self._HYPERPARAMETERS, f"{where}: ")

    def _init_state(self, group: dict[str, Any]) -> dict[str, Any]:
        """Fresh per-group state (buffers, counters) on the multipliers' device: every buffer
        at its full size, masks as bool, counters as int. ``load_state_dict`` checks a saved
        state against it key by key (same keys, shapes and kinds of dtype)."""
        return {"step": 0}

    def _validate_state(self, group: dict[str, Any], state: dict[str, Any], where: str) -> None:
        """Raise a ValueError when a loaded state breaks an invariant of the algorithm (beyond
        the keys, shapes, dtypes and finiteness that ``load_state_dict`` checks itself)."""

    def _prepare_step(self, group: dict[str, Any], state: dict[str, Any]) -> None:
        """Checks that depend on the state (e.g. a step size computed from the step count),
        run for every group before the first group changes; raise a ValueError here, never in
        :meth:`_dual_step`."""

    @abc.abstractmethod
    def _dual_step(self, group: dict[str, Any], state: dict[str, Any], c: Tensor) -> None:
        """One dual step of ``group``: update its multipliers and tensor buffers in place.

        ``c`` is detached, validated and finite. The step must not raise: every check runs
        before the first group is touched (:meth:`_validate_group`, :meth:`_prepare_step`),
        which is what keeps an error from leaving some groups updated and others not.
        ``state["step"]`` is the number of steps taken before this one; the base class
        increments it.
        """

    def _lagrangian_term(self, group: dict[str, Any], duals: Tensor, c: Tensor) -> Tensor:
        r"""The group's term of the Lagrangian; the plain :math:`\lambda^\top c` by default.

        ``c`` is 1-D, or 0-d for a one-constraint group given as a scalar.
        """
        return linear_term(duals, c)

    def _objective(self, loss: Tensor) -> Tensor:
        """The loss's term of the Lagrangian, after this call's dual step; the loss itself by
        default (SSG drops it while it descends a constraint)."""
        return loss

    def _zero_step_is_identity(self, group: dict[str, Any]) -> bool:
        """Whether a dual step on a constraint value of 0 leaves multipliers and buffers as
        they are; then ``check_finite=False`` masks non-finite entries by zeroing them alone."""
        return False

    def _masked_dual_step(self, group: dict[str, Any], state: dict[str, Any], c: Tensor) -> None:
        """The dual step with the non-finite entries of ``c`` left out (``check_finite=False``).

        Default: when :meth:`_zero_step_is_identity`, a step on ``c`` with those entries set
        to 0; otherwise a step on that ``c`` after which the tensors of
        :meth:`_per_constraint_tensors` get their old values back at those entries. Override
        it when the state is not one entry per constraint (a scalar penalty, a norm): such
        state has no "entry" to restore.
        """
        zeroed = torch.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0)
        if self._zero_step_is_identity(group):
            self._dual_step(group, state, zeroed)
            return
        tensors = self._per_constraint_tensors(group, state)
        before = [t.clone() for t in tensors]
        self._dual_step(group, state, zeroed)
        invalid = ~torch.isfinite(c)
        for t, old in zip(tensors, before):
            t.copy_(torch.where(invalid, old, t))

    def _per_constraint_tensors(self, group: dict[str, Any], state: dict[str, Any]
                                ) -> list[Tensor]:
        """The tensors holding one entry per constraint (restored by the default masking): the
        multipliers and every state tensor of their shape."""
        duals = group["params"][0]
        return [duals] + [v for v in state.values()
                          if isinstance(v, Tensor) and v.shape == duals.shape]

    def _clamp(self, group: dict[str, Any], duals: Tensor) -> Tensor:
        """Clamp multipliers to the group's range, in place."""
        lo, hi = group["dual_range"]
        if hi == math.inf:
            return duals if lo == -math.inf else duals.clamp_(min=lo)
        return duals.clamp_(min=lo, max=hi)

    # ------------------------------------------------------------ internals
    def _lagrangian(self, loss: Tensor, parts: list[Tensor]) -> Tensor:
        lagrangian = self._objective(loss) if self._weighs_loss else loss
        for group, c in zip(self.param_groups, parts):
            if not self.check_finite:
                # One op whose gradient is zero at the non-finite entries.
                c = torch.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0)
            # A snapshot of the multipliers: the graph must keep this step's values even when
            # later dual steps (gradient accumulation) update the live tensor in place first.
            duals = group["params"][0].clone()
            lagrangian = lagrangian + self._lagrangian_term(group, duals, c)
        return lagrangian

    def _apply_dual_step(self, parts: list[Tensor], lagrangian: list[Tensor] | None = None
                         ) -> None:
        """Check, then step every group on ``parts``; ``lagrangian``: the Lagrangian's values
        when proxies drive the step under a process group (checked with the collective)."""
        self._check_hyperparameters()
        groups, state = self.param_groups, self.state
        states = [state[g["params"][0]] for g in groups]
        for group, group_state in zip(groups, states):
            self._prepare_step(group, group_state)
        # Everything below works on detached tensors, so no autograd graph is recorded.
        values = [p.detach() for p in parts]
        flat = None
        if self.process_group is not None:
            if self._flags["checked_group"] is not self.process_group:
                _distributed.check_ranks_agree(groups, self._keys, states, self._device,
                                               self.process_group, type(self).__name__)
                self._flags["checked_group"] = self.process_group
            values, flat = _distributed.average(
                values, lagrangian if self.check_finite else None, self.process_group)
        if self.check_finite:
            self._check_finite(values, "constraint values for the dual step", flat, lagrangian)
            step = self._dual_step
        else:
            step = self._masked_dual_step
        for group, group_state, c in zip(groups, states, values):
            step(group, group_state, c)
            group_state["step"] += 1

    def _check_finite(self, parts: list[Tensor], what: str, flat: Tensor | None = None,
                      lagrangian: list[Tensor] | None = None) -> None:
        """Raise a ValueError naming the group and index of a non-finite entry of the
        *detached* ``parts``. Under a process group, ``flat`` is the reduced tensor (the
        averaged values and the ranks' flag for ``lagrangian``): the same on every rank, so
        every rank raises or none does."""
        _inputs.check_finite(self.param_groups, parts, what, flat, lagrangian)

    @staticmethod
    def _check_loss(loss: Any) -> None:
        _inputs.check_loss(loss)

    def _split(self, constraints: ConstraintsLike, arg: str) -> list[Tensor]:
        """Constraint input in any accepted layout -> one tensor per group (1-D, or 0-d for a
        one-constraint group given as a scalar)."""
        return _inputs.split(self.param_groups, constraints, arg, type(self).__name__)
