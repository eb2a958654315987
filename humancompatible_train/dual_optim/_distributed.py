"""Collectives of the dual step under a process group: every rank takes the same decision.

Two rules keep ranks together:

* the values that drive the dual step are averaged with one ``all_reduce``, and a flag saying
  "some constraint value of the Lagrangian is not finite on this rank" travels in the same
  reduction, so that a NaN on one rank makes *every* rank raise after the collective (instead of
  one rank raising before it while its peers wait in ``all_reduce``);
* once per process group (and again after ``add_constraint_group`` or ``load_state_dict``), the
  ranks compare their group layout, hyperparameters, step counters and multipliers; a rank
  built differently would otherwise drift apart silently.
"""

from __future__ import annotations

import numbers
import zlib
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def average(values: list[Tensor], lagrangian: list[Tensor] | None, group: Any
            ) -> tuple[list[Tensor], Tensor]:
    """Average ``values`` over the ranks of ``group``; returns the parts and the flat tensor.

    With ``lagrangian`` given, one more entry is reduced: 0 where every local Lagrangian value
    is finite, NaN where one is not (``x * 0`` is 0 for finite x and NaN otherwise, and a sum of
    zeros cannot overflow), so the flat tensor is non-finite on every rank as soon as one rank
    has a bad value anywhere.
    """
    pieces = [v.reshape(-1) for v in values]
    if lagrangian is not None:
        flag = sum((p.detach() * 0).sum() for p in lagrangian)
        pieces.append(flag.reshape(1).to(pieces[0].dtype))
    flat = torch.cat(pieces)
    # SUM then divide: the gloo backend has no AVG reduction.
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= dist.get_world_size(group)
    sizes = [v.numel() for v in values]
    parts = flat[: sum(sizes)].split(sizes)
    return [p.view_as(v) for p, v in zip(parts, values)], flat


def check_ranks_agree(groups: list[dict[str, Any]], keys: tuple[str, ...],
                      states: list[dict[str, Any]], device: torch.device, group: Any,
                      owner: str) -> None:
    """Raise on every rank when the ranks' dual optimizers differ (two one-time collectives).

    The layout (group count, sizes, names) is compared first with a fixed-size reduction, so
    that ranks with different sizes never enter a reduction of mismatched lengths.
    """
    layout = [float(len(groups)), float(sum(g["m"] for g in groups)),
              float(_code([(g["name"], g["m"]) for g in groups]))]
    same, _ = _same_everywhere(torch.tensor(layout, dtype=torch.float64, device=device), group)
    if not same.all():
        raise ValueError(
            f"process_group: expected every rank's {owner} to hold the same constraint groups, "
            f"got different groups on different ranks (this rank: "
            f"{[(g['name'], g['m']) for g in groups]}); build it alike on every rank"
        )
    labels: list[str] = []
    values: list[Tensor] = []
    for g, s in zip(groups, states):
        for key in keys:
            labels.append(f"constraint group {g['name']!r}: {key}")
            values.append(torch.tensor([_number(g[key])], dtype=torch.float64))
        labels.append(f"constraint group {g['name']!r}: step counter")
        values.append(torch.tensor([_number(s.get("step", 0))], dtype=torch.float64))
        duals = g["params"][0].detach().reshape(-1)
        labels.extend([f"constraint group {g['name']!r}: multiplier"] * duals.numel())
        values.append(duals.to("cpu", torch.float64))
    same, _ = _same_everywhere(torch.cat(values).to(device), group)
    if not same.all():
        where = labels[int(same.logical_not().nonzero()[0])]
        raise ValueError(
            f"process_group: expected every rank's {owner} to hold the same hyperparameters, "
            f"step counters and multipliers, got different values of {where} on different "
            "ranks; build and load it alike on every rank (e.g. load the same checkpoint on "
            "every rank)"
        )


def _same_everywhere(vector: Tensor, group: Any) -> tuple[Tensor, Tensor]:
    """Element-wise: is ``vector`` equal on every rank? (one MAX reduction of [v, -v])."""
    both = torch.cat([vector, -vector])
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    n = vector.numel()
    return (both[:n] == -both[n:]).cpu(), both


def _number(value: Any) -> float:
    """A hyperparameter as one float: numbers as they are, ranges by a code of their repr,
    callables as 0 (two ranks' callables cannot be compared)."""
    if callable(value):
        return 0.0
    if isinstance(value, numbers.Real):
        return float(value)
    return float(_code(value))


def _code(value: Any) -> int:
    return zlib.crc32(repr(value).encode())
