"""Constraint values in any accepted layout -> one tensor per constraint group.

Every check here reads shapes, dtypes and devices only (never a tensor's values), so it costs no
host synchronisation. Messages follow ``{argument}: expected {what}, got {what came}``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import check_real, fail


def mismatch(name: str, expected: str, got: str, where: str = "") -> ValueError:
    """The shared message pattern with ``got`` already written out (a type, a shape, a count)
    rather than a value to ``repr``."""
    return ValueError(f"{where}{name}: expected {expected}, got {got}")


def check_loss(loss: Any) -> None:
    if not isinstance(loss, Tensor):
        raise mismatch("loss", "a scalar (0-d) tensor", type(loss).__name__)
    if loss.dim() != 0:
        raise ValueError(
            f"loss: expected a scalar (0-d) tensor, got shape {tuple(loss.shape)}; "
            "reduce it (e.g. .mean()) first"
        )


def split(groups: list[dict[str, Any]], constraints: Any, arg: str, owner: str) -> list[Tensor]:
    """One tensor per group: 1-D of the group's size, or 0-d for a one-constraint group.

    Parts are the given tensors or their splits, never reshaped copies: every view would be one
    more node for autograd to walk on each step.
    """
    if not groups:
        raise ValueError(f"{owner} has no constraint group yet: add one with "
                         "add_constraint_group(m, ...)")
    if isinstance(constraints, Tensor) and len(groups) == 1:
        # The common case (one group, one tensor) without building the layout lists.
        group = groups[0]
        if constraints.dim() == 1 and constraints.shape[0] == group["m"] or (
            constraints.dim() == 0 and group["m"] == 1
        ):
            check_tensor(constraints, group, arg)
            return [constraints]
    sizes = [g["m"] for g in groups]
    names = [g["name"] for g in groups]
    layout = f"groups {names} of sizes {sizes}"
    if isinstance(constraints, Tensor):
        total = sum(sizes)
        if constraints.dim() > 1 or (constraints.dim() == 0 and total != 1):
            raise ValueError(
                f"{arg}: expected a flat tensor of shape ({total},)"
                f"{' or a 0-d tensor' if total == 1 else ''} holding {layout} in order, "
                f"got shape {tuple(constraints.shape)}"
            )
        flat = constraints.reshape(1) if constraints.dim() == 0 else constraints
        if flat.numel() != total:
            raise ValueError(
                f"{arg}: expected {total} constraint values ({layout}), got {flat.numel()}"
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
        parts = [group_tensor(constraints[n], g, arg) for n, g in zip(names, groups)]
    elif isinstance(constraints, Sequence) and not isinstance(constraints, (str, bytes)):
        if any(isinstance(c, numbers.Number) for c in constraints):
            # Plain numbers carry no gradient: the Lagrangian would not train the model.
            raise ValueError(
                f"{arg}: expected a tensor (e.g. torch.tensor({list(constraints)!r}) computed "
                f"from the model's output), a sequence of one tensor per group or a mapping "
                f"name -> tensor ({layout}), got a {type(constraints).__name__} of numbers "
                f"{_short(constraints)}"
            )
        if len(constraints) != len(sizes):
            raise ValueError(
                f"{arg}: expected a sequence of {len(sizes)} tensors (one per group, "
                f"{layout}), got {len(constraints)}"
            )
        parts = [group_tensor(c, g, arg) for c, g in zip(constraints, groups)]
    else:
        raise ValueError(
            f"{arg}: expected a tensor, a sequence of tensors or a mapping name -> tensor, "
            f"got {type(constraints).__name__}"
        )
    for part, group in zip(parts, groups):
        check_tensor(part, group, arg)
    return parts


def group_tensor(value: Any, group: dict[str, Any], arg: str) -> Tensor:
    m = group["m"]
    if not isinstance(value, Tensor):
        raise ValueError(
            f"{arg}: group {group['name']!r}: expected a tensor of {m} values, "
            f"got {type(value).__name__} {_short(value)}"
        )
    if value.dim() > 1 or value.numel() != m or (value.dim() == 0 and m != 1):
        raise ValueError(
            f"{arg}: group {group['name']!r}: expected shape ({m},)"
            f"{' or ()' if m == 1 else ''}, got {tuple(value.shape)}"
        )
    return value


def check_tensor(part: Tensor, group: dict[str, Any], arg: str) -> None:
    duals = group["params"][0]
    if part.device != duals.device:
        raise ValueError(
            f"{arg}: group {group['name']!r}: expected a tensor on {duals.device} (where the "
            f"multipliers live; build the dual optimizer with device={str(part.device)!r} to "
            f"keep them beside the model), got one on {part.device}"
        )
    if part.dtype != duals.dtype:
        if part.is_floating_point():
            hint = (f"build the dual optimizer with dtype={part.dtype} or cast the values with "
                    f".to({duals.dtype})")
        else:
            # Constraint values are real numbers: an integer or bool dtype is never the fix.
            hint = f"constraint values must be floating point: cast with .to({duals.dtype})"
        raise ValueError(
            f"{arg}: group {group['name']!r}: expected dtype {duals.dtype} (the multipliers' "
            f"dtype), got {part.dtype}; {hint}"
        )


def describe_values(values: Tensor) -> str:
    """A tensor's values for a message: all of a short one, the offending few of a long one."""
    flat = values.detach().reshape(-1).cpu()
    if flat.numel() <= 10:
        return str(flat.tolist())
    bad = (~torch.isfinite(flat)).nonzero().flatten()[:5].tolist()
    return f"{flat.numel()} values such as {flat[bad or [0]].tolist()}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def as_range(dual_range: Any, is_ineq: bool, where: str) -> tuple[float, float]:
    what = "None or a pair (low, high) of numbers (not NaN) with low <= high"
    if dual_range is None:
        lo, hi = -math.inf, math.inf
    else:
        if isinstance(dual_range, (str, bytes)) or not isinstance(dual_range, Sequence) \
                or len(dual_range) != 2:
            raise fail("dual_range", what, dual_range, f"{where}: ")
        try:
            lo, hi = (check_real("dual_range", v, finite=False) for v in dual_range)
        except ValueError:
            raise fail("dual_range", what, dual_range, f"{where}: ") from None
    if is_ineq:
        # Multipliers of inequality constraints are non-negative by definition.
        lo = max(0.0, lo)
    if lo > hi:
        raise fail("dual_range", what + " (low >= 0 for inequality groups)", dual_range,
                   f"{where}: ")
    return lo, hi


def initial_duals(init_duals: Any, m: int, dual_range: tuple[float, float], dtype: torch.dtype,
                  device: torch.device, where: str) -> Tensor:
    """The first multipliers of a group, checked on the host (also for a meta or accelerator
    target), then moved."""
    what = f"a finite number or a tensor/sequence of m={m} finite numbers"
    prefix = f"{where}: "
    if init_duals is None:
        init_duals = 0.0
    if isinstance(init_duals, numbers.Real) and not isinstance(init_duals, bool):
        values = torch.full((m,), check_real("init_duals", init_duals, where=prefix),
                            dtype=dtype)
    else:
        if isinstance(init_duals, (str, bytes, bool)):
            raise fail("init_duals", what, init_duals, prefix)
        try:
            values = torch.as_tensor(init_duals)
            if values.dtype == torch.bool or values.is_complex():
                raise TypeError(values.dtype)
            values = values.detach().to("cpu").to(dtype).flatten().clone()
        except (TypeError, ValueError, RuntimeError, NotImplementedError):
            raise mismatch("init_duals", what, _short(init_duals), prefix) from None
        if values.numel() != m:
            raise mismatch("init_duals", what, f"{values.numel()} values", prefix)
        if not bool(torch.isfinite(values).all()):
            raise mismatch("init_duals", what, _short(init_duals) if m <= 10
                           else describe_values(values), prefix)
    lo, hi = dual_range
    if bool(((values < lo) | (values > hi)).any()):
        raise mismatch("init_duals", f"values in the dual range [{lo}, {hi}]",
                       describe_values(values), prefix)
    return values.to(device)


def raise_non_finite(groups: list[dict[str, Any]], parts: list[Tensor], what: str,
                     suffix: str = "") -> None:
    """Raise a ValueError naming the first group with a non-finite entry and its indices."""
    for group, p in zip(groups, parts):
        values = p.detach().reshape(-1)
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"{what}: non-finite value(s) in constraint group {group['name']!r} at index "
                f"{bad[:10]}{' ...' if len(bad) > 10 else ''} (values "
                f"{values[bad[:10]].tolist()}); no multiplier was changed{suffix}"
            )


def check_finite(groups: list[dict[str, Any]], parts: list[Tensor], what: str,
                 flat: Tensor | None = None, lagrangian: list[Tensor] | None = None) -> None:
    """Raise a ValueError naming the group and index of a non-finite entry of the detached
    ``parts``. Under a process group, ``flat`` is the reduced tensor (the averaged values and
    the ranks' flag for ``lagrangian``): the same on every rank, so every rank raises or none.
    """
    if not parts:
        return
    # One reduction and one read instead of an element-wise test: the sum is finite whenever
    # every entry is (an overflowing sum falls through to the exact test below). A single
    # value is read as it is, without the reduction.
    if flat is not None:
        total = flat.sum()
    elif len(parts) == 1:
        total = parts[0]
        if total.numel() != 1:
            total = total.sum()
    else:
        total = sum(p.sum() for p in parts)
    if math.isfinite(float(total)):
        return
    if flat is None:
        raise_non_finite(groups, parts, what)
        return
    raise_non_finite(groups, parts, f"{what} (averaged over the process group)",
                     " on any process")
    if lagrangian is not None and not bool(torch.isfinite(flat[-1])):
        raise_non_finite(groups, lagrangian, "constraints", " on any process")
        raise ValueError(
            "constraints: a non-finite constraint value on another process of the process "
            "group; no multiplier was changed on any process"
        )
