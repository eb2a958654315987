r"""Partially observed constraints: a batch gives values for some constraints of a group only.

With ``m`` constraints of which a batch observes the entries ``indices`` (a ``long`` tensor),
the values are scattered into a dense vector of size ``m``; the dual step moves only the
observed multipliers (and their buffers) and the Lagrangian sums over the observed entries
only (an unobserved entry enters as :math:`c_i = 0`, where every Lagrangian term of this
library is 0 with zero gradient). The idea is Cooper's ``IndexedMultiplier``: one constraint
per class, per group or per sample, of which each batch sees a few.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import fail
from ._inputs import raise_non_finite

__all__ = ["IndicesLike", "expand", "forward", "forward_update", "step"]

IndicesLike = Tensor | Sequence[Tensor | None] | Mapping[str, Tensor]


def _per_group(groups: list[dict[str, Any]], given: Any, arg: str, optional: bool
               ) -> list[Any]:
    names = [g["name"] for g in groups]
    if isinstance(given, Tensor):
        if len(groups) != 1:
            raise fail(arg, f"a sequence or a mapping over the groups {names} (one tensor "
                       "serves a single group only)", f"one tensor of shape "
                       f"{tuple(given.shape)}")
        return [given]
    if isinstance(given, Mapping):
        unknown = [k for k in given if k not in names]
        missing = [n for n in names if n not in given]
        if unknown or (missing and not optional):
            raise fail(arg, f"a mapping over the group names {names}",
                       f"unknown {unknown}, missing {missing}")
        return [given.get(n) for n in names]
    if isinstance(given, Sequence) and not isinstance(given, (str, bytes)):
        if len(given) != len(groups):
            raise fail(arg, f"{len(groups)} entries (one per group {names})", len(given))
        return list(given)
    raise fail(arg, "a tensor, a sequence or a mapping name -> tensor",
               type(given).__name__)


def expand(groups: list[dict[str, Any]], values: Any, indices: IndicesLike, arg: str,
           finite: str | None = None) -> tuple[list[Tensor], list[Tensor | None]]:
    """Dense per-group constraint tensors (differentiable in ``values``, 0 where unobserved)
    and per-group observed masks (``None`` for a group given in full).

    Checks everything first, with one host read for all groups: index dtype ``long``, 1-D,
    on the multipliers' device, the same length as the values, inside ``[0, m)`` and without
    repeats; with ``finite`` (the error's wording), finite values too, in the same read.
    Raises a ValueError naming the group otherwise.
    """
    vals = _per_group(groups, values, arg, optional=False)
    idxs = _per_group(groups, indices, "indices", optional=True)
    flags: list[Tensor] = []
    masks: list[Tensor | None] = []
    for group, v, idx in zip(groups, vals, idxs):
        where = f"{arg}: group {group['name']!r}: "
        duals, m = group["params"][0], group["m"]
        if not isinstance(v, Tensor):
            raise fail("values", "a tensor", type(v).__name__, where)
        if v.dtype != duals.dtype or v.device != duals.device:
            raise fail("values", f"dtype {duals.dtype} on {duals.device} (the multipliers')",
                       f"{v.dtype} on {v.device}", where)
        if idx is None:
            if not (tuple(v.shape) == (m,) or (m == 1 and v.dim() == 0)):
                raise fail("values", f"shape ({m},) (no indices: every constraint)",
                           tuple(v.shape), where)
            masks.append(None)
            continue
        if not isinstance(idx, Tensor) or idx.dtype != torch.long or idx.dim() != 1:
            got = f"{idx.dtype} tensor of shape {tuple(idx.shape)}" if isinstance(
                idx, Tensor) else type(idx).__name__
            raise fail("indices", "a 1-D torch.long tensor (bool masks are not indices)", got,
                       where)
        if idx.device != duals.device:
            raise fail("indices", f"a tensor on {duals.device}", str(idx.device), where)
        if v.dim() != 1 or v.shape[0] != idx.shape[0]:
            raise fail("values", f"shape ({idx.shape[0]},), one value per index",
                       tuple(v.shape), where)
        # The mask of the clamped indices is the observed mask once the indices are known to
        # be in range (the clamp changed none); then it has fewer entries set than indices
        # only if some repeat.
        mask = torch.zeros(m, dtype=torch.bool, device=idx.device)
        if idx.numel():
            clamped = idx.clamp(0, m - 1)
            mask.index_fill_(0, clamped, True)
            flags.append((clamped != idx).any() | (mask.sum() != idx.numel()))
        masks.append(mask)
    flag = flags[0] if len(flags) == 1 else torch.stack(flags).any() if flags else None
    # The sum is finite whenever every value is (an overflowing sum is refused too).
    total = None
    if finite is not None:
        sums = [v.detach().sum() for v in vals]
        total = sums[0] if len(sums) == 1 else torch.stack(sums).sum()
    if flag is not None and total is not None:
        bad, total_value = torch.stack([flag.to(total.dtype), total]).tolist()
    else:
        bad = flag is not None and bool(flag)
        total_value = 0.0 if total is None else float(total)
    if bad:
        _raise_bad_indices(groups, idxs, arg)
    # Scattered only now that the indices are known to be valid (an index outside the range
    # would fail inside the kernel on an accelerator).
    dense = [v if idx is None else v.new_zeros(group["m"]).index_put((idx,), v)
             for group, v, idx in zip(groups, vals, idxs)]
    if not math.isfinite(total_value):
        raise_non_finite(groups, [d.detach() for d in dense], finite or "")
    return dense, masks


def _raise_bad_indices(groups: list[dict[str, Any]], idxs: list[Any], arg: str) -> None:
    for group, idx in zip(groups, idxs):
        if idx is None:
            continue
        listed = idx.tolist()
        outside = [i for i in listed if not 0 <= i < group["m"]]
        repeated = sorted({i for i in listed if listed.count(i) > 1})
        if outside or repeated:
            raise fail("indices", f"distinct indices in [0, {group['m']})",
                       f"out of range {outside}, repeated {repeated}",
                       f"{arg}: group {group['name']!r}: ")


def _values(dual: Any, constraints: Any, dual_constraints: Any, indices: IndicesLike
            ) -> tuple[list[Tensor], list[Tensor], list[Tensor | None], bool]:
    """Dense Lagrangian values, dense detached dual-step values, observed masks, and whether
    the dual-step values were already checked finite: all checked."""
    groups = dual.param_groups
    if not groups:
        raise ValueError(f"{type(dual).__name__} has no constraint group yet")
    # Without a process group the finiteness test joins the indices' read; with one it is
    # taken on the averaged values, collectively, in _step.
    local = dual.check_finite and dual.process_group is None
    if dual_constraints is None:
        dense, masks = expand(groups, constraints, indices, "constraints",
                              "constraint values for the dual step" if local else None)
        return dense, [d.detach() for d in dense], masks, local
    dense, masks = expand(groups, constraints, indices, "constraints",
                          "constraints" if local else None)
    proxy, _ = expand(groups, dual_constraints, indices, "dual_constraints",
                      "constraint values for the dual step" if local else None)
    return dense, [p.detach() for p in proxy], masks, local


def _step(dual: Any, values: list[Tensor], masks: list[Tensor | None], checked: bool) -> None:
    """One dual step moving only the observed entries (``masks``; ``None``: all); ``checked``:
    the values are known to be finite."""
    groups = dual.param_groups
    dual._check_hyperparameters()
    for group in groups:
        dual._prepare_step(group, dual.state[group["params"][0]])
    if dual.process_group is not None:
        # Each rank observes its own entries: average each entry over the ranks that
        # observed it (sums and counts in one all_reduce); an entry nobody observed stays
        # unobserved. NaN in the sums reaches every rank, so all raise together below.
        import torch.distributed as dist

        counts = [torch.ones_like(v) if k is None else k.to(v.dtype)
                  for v, k in zip(values, masks)]
        flat = torch.cat([v.reshape(-1) for v in values] + counts)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=dual.process_group)
        sums, seen = flat.split(2 * [sum(g["m"] for g in groups)])
        sizes = [g["m"] for g in groups]
        values = [s / n.clamp(min=1) for s, n in zip(sums.split(sizes), seen.split(sizes))]
        masks = [n > 0 for n in seen.split(sizes)]
    if dual.check_finite and not checked:
        dual._check_finite(values, "constraint values for the dual step")
    state = dual.state
    for group, c, mask in zip(groups, values, masks):
        group_state = state[group["params"][0]]
        if dual.check_finite and (mask is None or dual._zero_step_is_identity(group)):
            # Finite, and 0 at every unobserved entry, where a step then changes nothing.
            dual._dual_step(group, group_state, c)
        else:
            # Unobserved entries enter as NaN: the masked step leaves them out, with their
            # multipliers and per-constraint buffers as they were.
            dual._masked_dual_step(group, group_state,
                                   c if mask is None else torch.where(mask, c, math.nan))
        group_state["step"] += 1


def forward(dual: Any, loss: Tensor, constraints: Any, indices: IndicesLike) -> Tensor:
    """:meth:`DualOptimizer.forward` on partially observed constraints."""
    dual._check_loss(loss)
    dense, _ = expand(dual.param_groups, constraints, indices, "constraints",
                      "constraints" if dual.check_finite else None)
    dual._check_hyperparameters()
    return dual._lagrangian(loss, dense)


def step(dual: Any, constraints: Any, dual_constraints: Any, indices: IndicesLike) -> None:
    """:meth:`DualOptimizer.step` on partially observed constraints."""
    _, values, masks, checked = _values(dual, constraints, dual_constraints, indices)
    _step(dual, values, masks, checked)


def forward_update(dual: Any, loss: Tensor, constraints: Any, dual_constraints: Any,
                   indices: IndicesLike) -> Tensor:
    """:meth:`DualOptimizer.forward_update` on partially observed constraints (step hooks
    run around the dual step, with ``kwargs["indices"]``)."""
    from . import _hooks

    dual._check_loss(loss)
    hooked = _hooks.has_step_hooks(dual)
    if hooked:
        args, kwargs = _hooks.run_step_pre_hooks(dual, constraints, dual_constraints)
        constraints, dual_constraints = _hooks.step_arguments(args, kwargs)
    dense, values, masks, checked = _values(dual, constraints, dual_constraints, indices)
    _step(dual, values, masks, checked)
    # Learning-rate schedulers check that the optimizer stepped before they do.
    dual._flags["opt_called"] = True
    if hooked:
        _hooks.run_step_post_hooks(dual, args, kwargs)
    return dual._lagrangian(loss, dense)
