"""State dicts of dual optimizers: what ``state_dict()`` writes and everything that
``load_state_dict`` checks before it changes anything.

The format (every value loads with ``torch.load(weights_only=True)``)::

    {"algorithm": "ALM",                       # type(optimizer).__name__
     "param_groups": [{"name": ..., "m": ..., "params": [i], <hyperparameters>}, ...],
     "duals": [Tensor(m_0), Tensor(m_1), ...],  # copies of the multipliers
     "state": {i: {"step": int, <buffers>}}}    # copies; keys as _init_state makes them

Callables (PrimalDual's ``decay``) are stored as a marker; loading keeps the optimizer's own
callable, and refuses the dict when the optimizer holds none.
"""

from __future__ import annotations

import copy
import numbers
import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .._validation import check_bool, check_int, check_real, fail
from ._inputs import describe_values, mismatch

if TYPE_CHECKING:
    from .base import DualOptimizer

__all__ = ["CALLABLE_MARKER", "HOOK_DICTS", "STRUCTURAL_KEYS", "Checkpointing", "apply",
           "build", "deepcopy_state", "getstate", "plan"]

# Keys of a param group that describe the group rather than tune the algorithm.
STRUCTURAL_KEYS = ("params", "name", "m")
# Stored in place of a Python callable, which weights_only loading refuses.
CALLABLE_MARKER = "<callable>"
_KEYS = ("algorithm", "state", "param_groups", "duals")
# Hooks are not copied or pickled, as in torch.optim.Optimizer.
HOOK_DICTS = (
    "_optimizer_step_pre_hooks", "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks", "_optimizer_load_state_dict_post_hooks",
)

Plan = list[tuple[dict[str, Any], Tensor, dict[str, Any]]]


def build(opt: DualOptimizer) -> dict[str, Any]:
    groups, state = [], {}
    for i, g in enumerate(opt.param_groups):
        entry = {k: CALLABLE_MARKER if callable(v) else v for k, v in g.items() if k != "params"}
        entry["params"] = [i]
        groups.append(entry)
        state[i] = {k: v.detach().clone() if isinstance(v, Tensor) else v
                    for k, v in opt.state[g["params"][0]].items()}
    duals = [g["params"][0].detach().clone() for g in opt.param_groups]
    return {"algorithm": type(opt).__name__, "state": state, "param_groups": groups,
            "duals": duals}


def plan(opt: DualOptimizer, state_dict: Any) -> Plan:
    """Check every part of ``state_dict`` against ``opt``; return, per group, the validated
    group (hyperparameters included), multipliers (CPU, the optimizer's dtype) and state.
    Changes nothing."""
    owner = type(opt).__name__
    if not isinstance(state_dict, Mapping):
        raise mismatch("state_dict", f"a dict from {owner}.state_dict()",
                       type(state_dict).__name__)
    missing = [k for k in _KEYS if k not in state_dict]
    if missing:
        raise ValueError(
            f"state_dict: expected a dict from {owner}.state_dict() with keys {list(_KEYS)}, "
            f"got keys {sorted(map(str, state_dict))} (missing {missing})"
        )
    if state_dict["algorithm"] != owner:
        raise ValueError(
            f"state_dict: expected the state of a {owner}, got one saved by "
            f"{state_dict['algorithm']!r}; a dual optimizer loads only its own algorithm's "
            "state (hyperparameters and buffers differ)"
        )
    saved_groups = state_dict["param_groups"]
    if not _is_list(saved_groups) or not all(
            isinstance(g, Mapping) and "name" in g and "m" in g for g in saved_groups):
        raise mismatch("state_dict['param_groups']", "a list of dicts with 'name' and 'm'",
                       type(saved_groups).__name__)
    saved = [(g["name"], g["m"]) for g in saved_groups]
    mine = [(g["name"], g["m"]) for g in opt.param_groups]
    if saved != mine:
        raise ValueError(
            f"cannot load a state dict with groups (name, size) {saved} into "
            f"{owner} with groups {mine}"
        )
    saved_duals = state_dict["duals"]
    if not _is_list(saved_duals) or len(saved_duals) != len(mine):
        got = len(saved_duals) if _is_list(saved_duals) else type(saved_duals).__name__
        raise mismatch("state_dict['duals']",
                       f"a list of {len(mine)} multiplier tensors (one per group)", str(got))
    saved_state = state_dict["state"]
    if not isinstance(saved_state, Mapping):
        raise mismatch("state_dict['state']", "a dict group index -> state",
                       type(saved_state).__name__)
    out: Plan = []
    for i, (group, sg, d) in enumerate(zip(opt.param_groups, saved_groups, saved_duals)):
        where = f"state_dict: constraint group {group['name']!r}"
        candidate = dict(_hyperparameters(opt, group, sg, where), params=group["params"],
                         name=group["name"], m=group["m"])
        candidate = opt._normalized(candidate, where)
        duals = _multipliers(opt, d, candidate, where)
        entry = saved_state.get(i, saved_state.get(str(i)))
        if entry is None:
            raise ValueError(
                f"{where}: state: expected the group's entry (step counter and buffers) under "
                f"key {i}, got none (the saved state has keys {sorted(map(str, saved_state))})"
            )
        out.append((candidate, duals, _state(opt, candidate, entry, where)))
    return out


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _hyperparameters(opt: DualOptimizer, group: dict[str, Any], saved: Mapping[str, Any],
                     where: str) -> dict[str, Any]:
    missing = [k for k in opt.defaults if k not in saved]
    if missing:
        raise ValueError(f"{where}: expected the hyperparameters {sorted(opt.defaults)}, "
                         f"got {sorted(k for k in saved if k not in STRUCTURAL_KEYS)} "
                         f"(missing {missing})")
    new: dict[str, Any] = {}
    for key, value in saved.items():
        if key in STRUCTURAL_KEYS:
            continue
        if isinstance(value, str) and value == CALLABLE_MARKER:
            current = group.get(key)
            if not callable(current):
                raise ValueError(
                    f"{where}: {key}: expected a callable in this optimizer (the saved group "
                    "used one, which a state dict cannot hold: build the optimizer with the "
                    f"same callable before loading), got {current!r}"
                )
            value = current
        elif key == "dual_range" and isinstance(value, list):
            value = tuple(value)
        elif key not in opt.defaults and not _plain(value):
            # Keys a scheduler adds (``initial_lr``, ...) travel with the group, but only
            # values that ``torch.load(weights_only=True)`` can read back when re-saved.
            raise ValueError(
                f"{where}: {key}: expected a number, string, bool, None or a list of those "
                f"(an extra key of a param group, e.g. a scheduler's), got {value!r}"
            )
        new[key] = value
    return new


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, numbers.Real, str)):
        return True
    return isinstance(value, (list, tuple)) and all(_plain(v) for v in value)


def _multipliers(opt: DualOptimizer, value: Any, group: dict[str, Any], where: str) -> Tensor:
    m = group["m"]
    what = f"a float tensor (or a list) of {m} finite multipliers"
    prefix = f"{where}: "
    if isinstance(value, Tensor):
        t = value.detach()
    elif _is_list(value) and all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                 for v in value):
        t = torch.tensor([float(v) for v in value], dtype=torch.float64)
    else:
        raise fail("duals", what, value, prefix)
    if t.dtype == torch.bool or t.is_complex() or t.device.type == "meta":
        raise mismatch("duals", what, f"a {t.dtype} tensor on {t.device}", prefix)
    if tuple(t.shape) != (m,):
        raise mismatch("duals", f"shape ({m},)", str(tuple(t.shape)), prefix)
    t = t.to("cpu").to(opt._dtype)
    if not bool(torch.isfinite(t).all()):
        raise mismatch("duals", what, describe_values(t), prefix)
    lo, hi = group["dual_range"]
    if bool(((t < lo) | (t > hi)).any()):
        sense = " (an inequality group's multipliers are >= 0)" if group["is_ineq"] else ""
        raise mismatch("duals", f"multipliers in the group's range [{lo}, {hi}]{sense}",
                       describe_values(t), prefix)
    return t


def _state(opt: DualOptimizer, group: dict[str, Any], entry: Any, where: str
           ) -> dict[str, Any]:
    """The saved state of one group, checked key by key against a fresh ``_init_state``."""
    if not isinstance(entry, Mapping):
        raise mismatch("state", "a dict of the group's counters and buffers",
                       type(entry).__name__, f"{where}: ")
    fresh = opt._init_state(group)
    if set(fresh) != set(entry):
        raise ValueError(
            f"{where}: state: expected entries {sorted(fresh)}, got {sorted(map(str, entry))} "
            f"(missing {sorted(set(fresh) - set(entry))}, "
            f"unexpected {sorted(map(str, set(entry) - set(fresh)))})"
        )
    out: dict[str, Any] = {}
    for key, ref in fresh.items():
        out[key] = _state_value(key, ref, entry[key], f"{where}: ")
    opt._validate_state(group, out, where)
    return out


def _state_value(key: str, ref: Any, value: Any, prefix: str) -> Any:
    name = f"state[{key!r}]"
    if isinstance(ref, Tensor):
        kind = _kind(ref)
        if not isinstance(value, Tensor) or _kind(value) != kind or value.device.type == "meta":
            got = (f"a {value.dtype} tensor" if isinstance(value, Tensor)
                   else type(value).__name__)
            raise mismatch(name, f"a {kind} tensor of shape {tuple(ref.shape)}", got, prefix)
        if value.shape != ref.shape:
            raise mismatch(name, f"shape {tuple(ref.shape)}", str(tuple(value.shape)), prefix)
        cast = value.detach().to("cpu").to(ref.dtype)
        if kind == "floating-point" and not bool(torch.isfinite(cast).all()):
            raise mismatch(name, "finite values", describe_values(cast), prefix)
        # Masks stay bool and counters stay integer: only the dtype the fresh state has.
        return cast.to(ref.device).clone()
    if isinstance(ref, bool):
        return check_bool(name, value, prefix)
    if isinstance(ref, numbers.Integral):
        return check_int(name, value, minimum=0 if key == "step" else None, where=prefix)
    if isinstance(ref, numbers.Real):
        return check_real(name, value, where=prefix)
    if ref is not None and type(value) is not type(ref):
        raise mismatch(name, f"a {type(ref).__name__}", type(value).__name__, prefix)
    return value.detach().clone() if isinstance(value, Tensor) else value


def _kind(t: Tensor) -> str:
    if t.dtype == torch.bool:
        return "bool"
    if t.is_floating_point():
        return "floating-point"
    return "complex" if t.is_complex() else "integer"


def apply(opt: DualOptimizer, planned: Plan) -> None:
    """Write a validated plan into ``opt`` (cannot fail: every check ran in :func:`plan`)."""
    with torch.no_grad():
        for group, (new, duals, state) in zip(opt.param_groups, planned):
            live = group["params"][0]
            for key in [k for k in group if k not in new]:
                del group[key]  # as torch: the saved group replaces the hyperparameters
            group.update({k: v for k, v in new.items() if k not in STRUCTURAL_KEYS})
            live.copy_(duals)
            opt.state[live] = state


def getstate(opt: DualOptimizer) -> dict[str, Any]:
    """Every attribute but the hooks (torch.optim's own ``__getstate__`` keeps only three,
    which left copies without ``check_finite`` or a subclass's settings)."""
    if opt.__dict__.get("process_group") is not None:
        raise pickle.PicklingError(
            f"cannot pickle a {type(opt).__name__} with a process_group: a process group "
            "belongs to one process. Set process_group=None before pickling and assign the "
            "receiving process's group after loading, or save state_dict() instead"
        )
    return {k: v for k, v in opt.__dict__.items() if k not in HOOK_DICTS}


def deepcopy_state(opt: DualOptimizer, memo: dict[int, Any]) -> dict[str, Any]:
    """A deep copy of every attribute but the hooks; the process group is shared (a handle on
    a communicator of this process, not data)."""
    group = opt.__dict__.get("process_group")
    if group is not None:
        memo[id(group)] = group
    return copy.deepcopy({k: v for k, v in opt.__dict__.items() if k not in HOOK_DICTS}, memo)


class Checkpointing:
    """Mixin of :class:`~humancompatible_train.dual_optim.base.DualOptimizer`:
    ``state_dict``/``load_state_dict`` with torch's state-dict hooks, copy and pickle."""

    param_groups: list[dict[str, Any]]
    _validated: list[tuple[Any, ...] | None]
    _flags: dict[str, Any]
    _snapshot: Any
    _patch_step_function: Any
    _optimizer_state_dict_pre_hooks: Any
    _optimizer_state_dict_post_hooks: Any
    _optimizer_load_state_dict_pre_hooks: Any
    _optimizer_load_state_dict_post_hooks: Any

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: multipliers, buffers, counters, hyperparameters, and
        the algorithm's name (``"algorithm"``), which ``load_state_dict`` checks.

        The returned tensors are copies, so a saved dict does not change with later steps. It
        loads with ``torch.load(weights_only=True)``. State-dict hooks run as in torch.
        """
        for pre in self._optimizer_state_dict_pre_hooks.values():
            pre(self)
        state_dict = build(self)
        for post in self._optimizer_state_dict_post_hooks.values():
            result = post(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore multipliers, buffers, counters and hyperparameters.

        Everything is checked before anything changes: the keys, the algorithm (a dict of
        another class is refused), the groups' names and sizes, the multipliers (count, shape,
        a real dtype, finite, inside each group's range), the hyperparameters (the same checks
        as at construction) and each group's state against a fresh one (keys, shapes, kinds of
        dtype, finite buffers, counters >= 0). Multipliers may be given as lists of numbers.
        Float state takes the multipliers' dtype; bool and integer state keep theirs.
        """
        for pre in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre(self, state_dict)
            if result is not None:
                state_dict = result
        planned = plan(self, state_dict)
        apply(self, planned)
        self._validated = [self._snapshot(g) for g in self.param_groups]
        self._flags["checked_group"] = None
        for post in self._optimizer_load_state_dict_post_hooks.values():
            post(self)

    # ------------------------------------------------------- copy and pickle
    def __getstate__(self) -> dict[str, Any]:
        return getstate(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch.optim.Optimizer.__setstate__ would add a "differentiable" default, which is
        # not a hyperparameter of a dual optimizer.
        self.__dict__.update(state)
        for key in HOOK_DICTS:
            self.__dict__.setdefault(key, OrderedDict())
        self._validated = [None] * len(self.param_groups)
        self._flags["checked_group"] = None
        self._patch_step_function()

    def __deepcopy__(self, memo: dict[int, Any]) -> Checkpointing:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(deepcopy_state(self, memo))
        return new
