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

Subclasses only state their update rule (:meth:`DualOptimizer._dual_step`) and, when it is not
the plain :math:`\lambda^\top c`, their Lagrangian term (:meth:`DualOptimizer._lagrangian_term`).
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import indexed
from .indexed import IndicesLike

__all__ = ["DualOptimizer", "ConstraintsLike"]

logger = logging.getLogger("humancompatible_train")

ConstraintsLike = Tensor | Sequence[Tensor] | Mapping[str, Tensor]

# Keys of a param group that describe the group rather than tune the algorithm.
_STRUCTURAL_KEYS = ("params", "name", "m")
# Marker stored in a state dict in place of a Python callable, which weights_only loading refuses.
_CALLABLE_MARKER = "<callable>"


def _as_range(dual_range: Any, is_ineq: bool, where: str) -> tuple[float, float]:
    if dual_range is None:
        lo, hi = -math.inf, math.inf
    else:
        try:
            lo, hi = (float(v) for v in dual_range)
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}: dual_range must be a pair (low, high) of numbers or None, "
                f"got {dual_range!r}"
            ) from None
    if is_ineq:
        # Multipliers of inequality constraints are non-negative by definition.
        lo = max(0.0, lo)
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(
            f"{where}: dual_range must satisfy low <= high (after low >= 0 for inequality "
            f"groups), got {dual_range!r}"
        )
    return lo, hi


def linear_term(duals: Tensor, c: Tensor) -> Tensor:
    r""":math:`\lambda^\top c` for a 1-D ``c``, or a 0-d ``c`` of a one-constraint group."""
    if c.dim() == 0:
        # A scalar constraint times a 0-d view of the multiplier: reshaping c instead would
        # add a node to the autograd graph, which costs more than the product.
        return c * duals.view(())
    return torch.dot(duals, c)


class DualOptimizer(torch.optim.Optimizer, metaclass=abc.ABCMeta):
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
        device, dtype: where the multipliers live (default: CPU, the default dtype). Constraint
            tensors must match both.
        process_group: a :mod:`torch.distributed` process group; when given, the *detached*
            constraint values that drive the dual step are averaged over its processes with
            ``all_reduce`` so that every replica holds identical multipliers, while the
            Lagrangian keeps the local values so that gradients flow.
        check_finite: raise a :class:`ValueError` naming the group and index when a constraint
            value is NaN or infinite, leaving every multiplier and buffer untouched (one host
            synchronisation per step on accelerators). When ``False``, non-finite entries are
            masked out of the dual step and the Lagrangian with tensor operations instead.
    """

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
        dtype: torch.dtype | None = None,
        process_group: Any | None = None,
        check_finite: bool = True,
    ) -> None:
        if "lr" not in defaults:
            raise ValueError("defaults must contain the dual step size 'lr'")
        defaults = dict(defaults, is_ineq=bool(is_ineq), dual_range=dual_range)
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._dtype = dtype if dtype is not None else torch.get_default_dtype()
        if not self._dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {self._dtype}")
        self.process_group = process_group
        self.check_finite = bool(check_finite)
        # torch.optim.Optimizer refuses an empty parameter list; groups are added below.
        self._placeholder = True
        super().__init__([torch.zeros(0)], defaults)
        self._placeholder = False
        self.param_groups.clear()
        self.state.clear()
        if m is not None:
            self.add_constraint_group(m, name=name, init_duals=init_duals)
        elif name is not None:
            raise ValueError("name was given without m: pass m to create the first group")

    # ------------------------------------------------------------------ groups
    def add_constraint_group(
        self,
        m: int,
        *,
        name: str | None = None,
        init_duals: float | Tensor | Sequence[float] | None = None,
        **hyperparameters: Any,
    ) -> None:
        """Add a group of ``m`` constraints with its own multipliers and hyperparameters.

        Settings not given are taken from the constructor's defaults.
        """
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"m must be a positive int (the group's constraint count), got {m!r}")
        unknown = set(hyperparameters) - set(self.defaults)
        if unknown:
            raise ValueError(
                f"unknown hyperparameter(s) {sorted(unknown)} for {type(self).__name__}; "
                f"expected some of {sorted(self.defaults)}"
            )
        name = f"g{len(self.param_groups)}" if name is None else str(name)
        if name in self.names:
            raise ValueError(f"a constraint group named {name!r} exists already: {self.names}")
        group: dict[str, Any] = dict(self.defaults)
        group.update(hyperparameters)
        where = f"constraint group {name!r}"
        group["dual_range"] = _as_range(group["dual_range"], group["is_ineq"], where)
        self._validate_group(group, where)
        duals = self._initial_duals(init_duals, m, where, group)
        group.update(params=[duals], name=name, m=m)
        self._placeholder = True
        try:
            super().add_param_group(group)
        finally:
            self._placeholder = False
        self.state[duals] = self._init_state(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self._placeholder:
            super().add_param_group(param_group)
            return
        raise TypeError(
            f"{type(self).__name__} holds multipliers, not model parameters: use "
            "add_constraint_group(m, name=..., **hyperparameters)"
        )

    def _initial_duals(
        self, init_duals: Any, m: int, where: str, group: dict[str, Any]
    ) -> Tensor:
        if init_duals is None:
            init_duals = 0.0
        if isinstance(init_duals, (int, float)) and not isinstance(init_duals, bool):
            duals = torch.full((m,), float(init_duals), device=self._device, dtype=self._dtype)
        else:
            duals = torch.as_tensor(init_duals, dtype=self._dtype).to(self._device).flatten()
            if duals.numel() != m:
                raise ValueError(
                    f"{where}: init_duals must be a number or hold m={m} values, "
                    f"got {duals.numel()} values"
                )
            duals = duals.clone()
        if not bool(torch.isfinite(duals).all()):
            raise ValueError(f"{where}: init_duals must be finite, got {duals.tolist()}")
        lo, hi = group["dual_range"]
        if bool(((duals < lo) | (duals > hi)).any()):
            raise ValueError(
                f"{where}: init_duals must lie in the dual range [{lo}, {hi}], "
                f"got {duals.tolist()}"
            )
        return duals

    # ------------------------------------------------------------- properties
    @property
    def names(self) -> list[str]:
        """The constraint groups' names, in registration order."""
        return [g["name"] for g in self.param_groups]

    @property
    def m(self) -> int:
        """Total number of constraints over all groups."""
        return sum(g["m"] for g in self.param_groups)

    @property
    def duals(self) -> Tensor:
        """All multipliers as one flat detached tensor (a copy), in registration order."""
        if not self.param_groups:
            return torch.zeros(0, device=self._device, dtype=self._dtype)
        return torch.cat([g["params"][0].detach() for g in self.param_groups]).clone()

    def dual(self, name: str) -> Tensor:
        """The multiplier tensor of the group called ``name`` (the live tensor)."""
        for g in self.param_groups:
            if g["name"] == name:
                return g["params"][0]
        raise KeyError(f"no constraint group named {name!r}; groups are {self.names}")

    @property
    def duals_by_name(self) -> dict[str, Tensor]:
        """``{name: multipliers}`` (copies) for logging."""
        return {g["name"]: g["params"][0].detach().clone() for g in self.param_groups}

    # ------------------------------------------------------------ the API
    def forward(self, loss: Tensor, constraints: ConstraintsLike, *,
                indices: IndicesLike | None = None) -> Tensor:
        """The Lagrangian at the current multipliers; changes no state.

        ``indices``: the observed entries of partially observed groups (see
        :mod:`~humancompatible_train.dual_optim.indexed`).
        """
        if indices is not None:
            return indexed.forward(self, loss, constraints, indices)
        self._check_loss(loss)
        parts = self._split(constraints, "constraints")
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

        ``indices`` (a ``long`` tensor, or one per group): the batch observes only these
        constraints of a group, ``constraints`` holds their values in the same order; only
        their multipliers move and only they enter the Lagrangian
        (:mod:`~humancompatible_train.dual_optim.indexed`).
        """
        if indices is not None:
            return indexed.forward_update(self, loss, constraints, dual_constraints, indices)
        # Learning-rate schedulers check that the optimizer stepped before they do
        # (``_opt_called``); this method bypasses the profiling wrapper of ``step`` that sets
        # it, to keep the hot path short.
        groups = self.param_groups
        if (len(groups) == 1 and dual_constraints is None and self.check_finite
                and self.process_group is None and isinstance(constraints, Tensor)
                and isinstance(loss, Tensor) and loss.dim() == 0):
            # The common case (one group, one tensor, default checks) in one pass: the same
            # checks, hooks and state as the general path below, without its layers, which
            # cost about 1.5 % of a small model's training step (10 of 680 us).
            group = groups[0]
            duals = group["params"][0]
            if (constraints.dtype == duals.dtype and constraints.device == duals.device and (
                    constraints.shape == duals.shape
                    or constraints.dim() == 0 and group["m"] == 1)):
                c = constraints.detach()
                if not math.isfinite(float(c if group["m"] == 1 else c.sum())):
                    self._check_finite([c], "constraint values for the dual step")
                state = self.state[duals]
                self._dual_step(group, state, c)
                state["step"] += 1
                self._opt_called = True
                return loss + self._lagrangian_term(group, duals.clone(), constraints)
        self._check_loss(loss)
        parts = self._split(constraints, "constraints")
        self._update(parts, dual_constraints)
        self._opt_called = True
        return self._lagrangian(loss, parts)

    def _update(self, parts: list[Tensor], dual_constraints: ConstraintsLike | None) -> None:
        if dual_constraints is not None:
            if self.check_finite:
                self._check_finite([p.detach() for p in parts], "constraints")
            parts = self._split(dual_constraints, "dual_constraints")
        self._apply_dual_step(parts)

    # ------------------------------------------------------ subclass hooks
    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        """Raise a ValueError for invalid hyperparameters of a group."""
        lr = group["lr"]
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr >= 0:
            raise ValueError(f"{where}: lr must be a number >= 0, got {lr!r}")

    def _init_state(self, group: dict[str, Any]) -> dict[str, Any]:
        """Fresh per-group state (buffers, counters)."""
        return {"step": 0}

    @abc.abstractmethod
    def _dual_step(self, group: dict[str, Any], state: dict[str, Any], c: Tensor) -> None:
        """One dual step of ``group``: update its multipliers and tensor buffers in place.

        ``c`` is detached, validated and finite. The step must not raise: every check runs
        before the first group is touched, which is what keeps an error from leaving some
        groups updated and others not. ``state["step"]`` is the number of steps taken before
        this one; the base class increments it.
        """

    def _lagrangian_term(self, group: dict[str, Any], duals: Tensor, c: Tensor) -> Tensor:
        r"""The group's term of the Lagrangian; the plain :math:`\lambda^\top c` by default.

        ``c`` is 1-D, or 0-d for a one-constraint group given as a scalar.
        """
        return linear_term(duals, c)

    def _zero_step_is_identity(self, group: dict[str, Any]) -> bool:
        """Whether a dual step on a constraint value of 0 leaves multipliers and buffers as
        they are; then ``check_finite=False`` masks non-finite entries by zeroing them alone."""
        return False

    def _clamp(self, group: dict[str, Any], duals: Tensor) -> Tensor:
        """Clamp multipliers to the group's range, in place."""
        lo, hi = group["dual_range"]
        if hi == math.inf:
            return duals if lo == -math.inf else duals.clamp_(min=lo)
        return duals.clamp_(min=lo, max=hi)

    # ------------------------------------------------------------ internals
    def _lagrangian(self, loss: Tensor, parts: list[Tensor]) -> Tensor:
        lagrangian = loss
        for group, c in zip(self.param_groups, parts):
            if not self.check_finite:
                # One op whose gradient is zero at the non-finite entries.
                c = torch.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0)
            # A snapshot of the multipliers: the graph must keep this step's values even when
            # later dual steps (gradient accumulation) update the live tensor in place first.
            duals = group["params"][0].clone()
            lagrangian = lagrangian + self._lagrangian_term(group, duals, c)
        return lagrangian

    def _apply_dual_step(self, parts: list[Tensor]) -> None:
        # Everything below works on detached tensors, so no autograd graph is recorded.
        values = [p.detach() for p in parts]
        if self.process_group is not None:
            values = self._average_over_processes(values)
        if self.check_finite:
            self._check_finite(values, "constraint values for the dual step")
            step = self._dual_step
        else:
            step = self._masked_dual_step
        state = self.state
        for group, c in zip(self.param_groups, values):
            group_state = state[group["params"][0]]
            step(group, group_state, c)
            group_state["step"] += 1

    def _masked_dual_step(self, group: dict[str, Any], state: dict[str, Any], c: Tensor) -> None:
        """The dual step with non-finite entries of ``c`` left out (``check_finite=False``)."""
        zeroed = torch.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0)
        if self._zero_step_is_identity(group):
            self._dual_step(group, state, zeroed)
            return
        duals = group["params"][0]
        tensors = [duals] + [v for v in state.values()
                             if isinstance(v, Tensor) and v.shape == duals.shape]
        before = [t.clone() for t in tensors]
        self._dual_step(group, state, zeroed)
        invalid = ~torch.isfinite(c)
        for t, old in zip(tensors, before):
            t.copy_(torch.where(invalid, old, t))

    def _average_over_processes(self, values: list[Tensor]) -> list[Tensor]:
        flat = torch.cat([v.reshape(-1) for v in values])
        # SUM then divide: the gloo backend has no AVG reduction.
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.process_group)
        flat /= dist.get_world_size(self.process_group)
        return list(flat.split([g["m"] for g in self.param_groups]))

    def _check_finite(self, parts: list[Tensor], what: str) -> None:
        """Raise a ValueError naming the group and index of a non-finite entry of the
        *detached* ``parts``."""
        if not parts:
            return
        # One reduction and one read instead of an element-wise test: the sum is finite
        # whenever every entry is (an overflowing sum falls through to the exact test below).
        # A single value is read as it is, without the reduction.
        if len(parts) == 1:
            total = parts[0]
            if total.numel() != 1:
                total = total.sum()
        else:
            total = sum(p.sum() for p in parts)
        if math.isfinite(float(total)):
            return
        for group, p in zip(self.param_groups, parts):
            flat = p.detach().reshape(-1)
            bad = (~torch.isfinite(flat)).nonzero().flatten().tolist()
            if bad:
                raise ValueError(
                    f"{what}: non-finite value(s) in constraint group {group['name']!r} at "
                    f"index {bad} (values {flat[bad].tolist()}); no multiplier was changed"
                )

    @staticmethod
    def _check_loss(loss: Any) -> None:
        if not isinstance(loss, Tensor):
            raise ValueError(f"loss must be a scalar tensor, got {type(loss).__name__}")
        if loss.dim() != 0:
            raise ValueError(
                f"loss must be a scalar (0-d) tensor, got shape {tuple(loss.shape)}; "
                "reduce it (e.g. .mean()) first"
            )

    def _split(self, constraints: ConstraintsLike, arg: str) -> list[Tensor]:
        """Constraint input in any accepted layout -> one tensor per group.

        Each part is 1-D, or 0-d for a one-constraint group given as a scalar. Parts are the
        given tensors or their splits, never reshaped copies: every view would be one more
        node for autograd to walk on each step.
        """
        groups = self.param_groups
        if not groups:
            raise ValueError(f"{type(self).__name__} has no constraint group yet")
        if isinstance(constraints, Tensor) and len(groups) == 1:
            # The common case (one group, one tensor) without building the layout lists.
            group = groups[0]
            if constraints.dim() == 1 and constraints.shape[0] == group["m"] or (
                constraints.dim() == 0 and group["m"] == 1
            ):
                self._check_tensor(constraints, group, arg)
                return [constraints]
        sizes = [g["m"] for g in self.param_groups]
        names = self.names
        if isinstance(constraints, Tensor):
            total = sum(sizes)
            if constraints.dim() > 1 or (constraints.dim() == 0 and total != 1):
                raise ValueError(
                    f"{arg}: expected a flat tensor of shape ({total},)"
                    f"{' or a 0-d tensor' if total == 1 else ''} holding groups {names} "
                    f"of sizes {sizes} in order, got shape {tuple(constraints.shape)}"
                )
            flat = constraints.reshape(1) if constraints.dim() == 0 else constraints
            if flat.numel() != total:
                raise ValueError(
                    f"{arg}: expected {total} constraint values (groups {names} of sizes "
                    f"{sizes}), got {flat.numel()}"
                )
            parts = [flat] if len(sizes) == 1 else list(flat.split_with_sizes(sizes))
        elif isinstance(constraints, Mapping):
            keys = list(constraints.keys())
            if set(keys) != set(names):
                missing = [n for n in names if n not in constraints]
                extra = [k for k in keys if k not in names]
                raise ValueError(
                    f"{arg}: expected a mapping with exactly the group names {names}; "
                    f"missing {missing}, unexpected {extra}"
                )
            parts = [self._group_tensor(constraints[n], g, arg)
                     for n, g in zip(names, self.param_groups)]
        elif isinstance(constraints, Sequence) and not isinstance(constraints, (str, bytes)):
            if len(constraints) != len(sizes):
                raise ValueError(
                    f"{arg}: expected a sequence of {len(sizes)} tensors (one per group "
                    f"{names}), got {len(constraints)}"
                )
            parts = [self._group_tensor(c, g, arg) for c, g in zip(constraints, self.param_groups)]
        else:
            raise ValueError(
                f"{arg}: expected a tensor, a sequence of tensors or a mapping name -> tensor, "
                f"got {type(constraints).__name__}"
            )
        for part, group in zip(parts, self.param_groups):
            self._check_tensor(part, group, arg)
        return parts

    @staticmethod
    def _group_tensor(value: Any, group: dict[str, Any], arg: str) -> Tensor:
        if not isinstance(value, Tensor):
            raise ValueError(
                f"{arg}: group {group['name']!r} expects a tensor of {group['m']} values, "
                f"got {type(value).__name__}"
            )
        if value.dim() > 1 or value.numel() != group["m"] or (value.dim() == 0 and group["m"] != 1):
            raise ValueError(
                f"{arg}: group {group['name']!r} expects shape ({group['m']},)"
                f"{' or ()' if group['m'] == 1 else ''}, got {tuple(value.shape)}"
            )
        return value

    def _check_tensor(self, part: Tensor, group: dict[str, Any], arg: str) -> None:
        duals = group["params"][0]
        if part.device != duals.device:
            raise ValueError(
                f"{arg}: group {group['name']!r} is on {part.device} but its multipliers are on "
                f"{duals.device}; build the dual optimizer with device={part.device!s}"
            )
        if part.dtype != duals.dtype:
            raise ValueError(
                f"{arg}: group {group['name']!r} has dtype {part.dtype} but its multipliers "
                f"have {duals.dtype}; build the dual optimizer with dtype={part.dtype} or cast"
            )

    # --------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: multipliers, buffers, counters, hyperparameters.

        The returned tensors are copies, so a saved dict does not change with later steps. It
        loads with ``torch.load(weights_only=True)``.
        """
        groups = []
        state = {}
        for i, g in enumerate(self.param_groups):
            entry = {k: self._storable(v) for k, v in g.items() if k != "params"}
            entry["params"] = [i]
            groups.append(entry)
            state[i] = {
                k: v.detach().clone() if isinstance(v, Tensor) else v
                for k, v in self.state[g["params"][0]].items()
            }
        duals = [g["params"][0].detach().clone() for g in self.param_groups]
        return {"state": state, "param_groups": groups, "duals": duals}

    @staticmethod
    def _storable(value: Any) -> Any:
        return _CALLABLE_MARKER if callable(value) else value

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore multipliers, buffers, counters and hyperparameters.

        Raises a :class:`ValueError` (and changes nothing) when the saved groups' names or
        sizes differ from this optimizer's.
        """
        try:
            saved_groups = state_dict["param_groups"]
            saved_duals = state_dict["duals"]
            saved_state = state_dict["state"]
        except (KeyError, TypeError):
            raise ValueError(
                "state_dict must be a dict from DualOptimizer.state_dict() with keys "
                "'state', 'param_groups' and 'duals'"
            ) from None
        saved = [(g["name"], g["m"]) for g in saved_groups]
        mine = [(g["name"], g["m"]) for g in self.param_groups]
        if saved != mine:
            raise ValueError(
                f"cannot load a state dict with groups (name, size) {saved} into "
                f"{type(self).__name__} with groups {mine}"
            )
        for (name, m), d in zip(mine, saved_duals):
            if tuple(d.shape) != (m,):
                raise ValueError(f"saved multipliers of group {name!r} have shape "
                                 f"{tuple(d.shape)}, expected ({m},)")
        with torch.no_grad():
            for i, (group, saved_group, d) in enumerate(
                zip(self.param_groups, saved_groups, saved_duals)
            ):
                duals = group["params"][0]
                for k, v in saved_group.items():
                    if k in _STRUCTURAL_KEYS or v == _CALLABLE_MARKER:
                        continue
                    group[k] = tuple(v) if k == "dual_range" else v
                duals.copy_(d)
                entry = saved_state.get(i, saved_state.get(str(i), {}))
                self.state[duals] = {
                    k: v.detach().clone().to(device=duals.device, dtype=duals.dtype)
                    if isinstance(v, Tensor) else v
                    for k, v in entry.items()
                }
