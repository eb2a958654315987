"""FairInference's checks: of a batch before it is served, of the settings, and of a state
dict before it is loaded. Each raises a ValueError naming the argument, what was expected and
what came; none changes anything."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .._validation import fail
from ._state import Layout

if TYPE_CHECKING:
    from .wrapper import FairInference

__all__ = ["check_batch", "check_bounds", "check_loaded", "check_settings", "check_shares",
           "check_values"]

_F64 = torch.float64


def check_batch(fi: FairInference, scores: Any, groups: Any, labels: Any, read: bool = True
                ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Types and shapes: flat detached scores, int64 group ids, labels. ``read=False``
    reads no value (floating ids are then returned as they are, unchecked)."""
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        got = scores.dtype if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores: expected a floating tensor (float32 or float64), got {got}")
    if scores.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"scores: expected float32 or float64 (half precision cannot hold the "
                         f"adjustment to within the tolerance; cast with .float()), got "
                         f"{scores.dtype}")
    if scores.dim() > 2 or (scores.dim() == 2 and scores.shape[1] != 1):
        raise ValueError(f"scores: expected shape (N,) or (N, 1), got {tuple(scores.shape)}")
    z = scores.detach().reshape(-1)
    N = z.shape[0]
    if N == 0:
        raise ValueError("scores: expected a non-empty batch, got 0 rows")
    g = _per_row("groups", groups, z, f"a tensor of {N} group ids")
    if g.is_floating_point():
        if read:
            if not bool((g == g.round()).all()):
                raise ValueError(f"groups: expected whole-number group ids, got "
                                 f"{_few(g)}")
            g = g.long()
    elif g.dtype != torch.int64:
        g = g.long()
    if labels is None:
        if fi._labelled:
            raise ValueError(f"labels: metric {fi.metric!r} needs labels with every batch, "
                             "got None")
        return z, g, None
    return z, g, _per_row("labels", labels, z, f"a tensor of {N} values").to(_F64)


def _per_row(arg: str, value: Any, z: Tensor, expected: str) -> Tensor:
    """``value`` as a flat detached tensor of one real entry per score, on the scores'
    device."""
    if not isinstance(value, Tensor) or value.numel() != z.shape[0] or value.is_complex():
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{arg}: expected {expected}, got {got}")
    if value.device != z.device:
        raise ValueError(f"{arg}: expected a tensor on the scores' device {z.device}, got "
                         f"{value.device}")
    return value.detach().reshape(-1)


def _few(t: Tensor) -> str:
    values = t.reshape(-1)[:8].tolist()
    return f"{values}{' ...' if t.numel() > 8 else ''}"


def check_values(fi: FairInference, zd: Tensor, g: Tensor, y: Tensor | None) -> Tensor:
    """Group ids in range, finite scores whose sums cannot overflow, valid labels; returns
    the rows' cells ``class * S + group``."""
    S = fi.num_groups
    try:
        n_g = torch.bincount(g, minlength=S)
    except RuntimeError:  # a negative id
        n_g = None
    if n_g is None or n_g.numel() != S:
        raise ValueError(f"groups: expected ids in 0..{S - 1}, got values "
                         f"{sorted(set(g.tolist()))[:10]}")
    sq = float(torch.dot(zd, zd))
    if not math.isfinite(sq):
        if not bool(torch.isfinite(zd).all()):
            raise ValueError("scores: expected finite values, got NaN or Inf; nothing was "
                             "changed")
        raise ValueError("scores: expected values whose squares sum to a finite float64 "
                         "(|score| below about 1e154), got larger ones; nothing was changed")
    if y is None:
        return g
    if fi.metric == "equalized_odds":
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError(f"labels: expected values in {{0, 1}} for equalized_odds, got "
                             f"{_few(y)}")
        return y.long() * S + g
    if not math.isfinite(float(torch.dot(y, y))):
        raise ValueError("labels: expected finite values (below about 1e154), got "
                         f"{_few(y)}; nothing was changed")
    return g


def check_bounds(bounds: Any, metric: str, threshold: float, where: str
                  ) -> tuple[float, float] | None:
    if bounds is None:
        return None
    expected = "None or a pair (lo, hi) of finite numbers with lo < hi"
    if isinstance(bounds, (str, bytes)) or not isinstance(bounds, Sequence) or len(bounds) != 2:
        raise fail("prediction_bounds", expected, bounds, where)
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in bounds):
        raise fail("prediction_bounds", expected, bounds, where)
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise fail("prediction_bounds", expected, bounds, where)
    if metric == "positive_rate" and not lo < threshold <= hi:
        raise fail("prediction_bounds", f"lo < threshold <= hi (threshold {threshold}) for "
                   "metric 'positive_rate'", bounds, where)
    return lo, hi


def check_shares(shares: Any, C: int, S: int, where: str) -> Tensor:
    expected = (f"{S} non-negative finite shares summing to 1"
                + (f" (or {C} x {S}, one row per label class)" if C > 1 else ""))
    try:
        t = torch.as_tensor(shares, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise fail("group_shares", expected, shares, where) from None
    if t.numel() not in (S, C * S) or t.is_complex():
        raise fail("group_shares", expected, shares, where)
    t = t.reshape(-1, S).expand(C, S).clone()
    if not bool(torch.isfinite(t).all() & (t >= 0).all()) or not torch.allclose(
            t.sum(-1), torch.ones(C, dtype=torch.float64)):
        raise fail("group_shares", expected, shares, where)
    return t


def check_settings(state: Any, mine: dict[str, Any]) -> None:
    if not isinstance(state, Mapping) or not isinstance(state.get("settings"), Mapping):
        raise fail("state_dict: _extra_state", "the dict FairInference.state_dict() saves",
                   type(state).__name__)
    saved = state["settings"]
    for key, value in mine.items():
        got = saved.get(key, "<missing>")
        if isinstance(got, tuple):
            got = list(got)
        if got != value:
            raise ValueError(f"state_dict: {key}: expected {value!r} (this wrapper's setting), "
                             f"got {got!r}; build the wrapper with the saved settings")


def check_loaded(layout: Layout, flat: Tensor, C: int, S: int) -> None:
    """Consistency across entries of a state about to be loaded."""

    def get(name: str) -> Tensor:
        return layout.view(flat, name)

    count = get("count")
    for name in ("positive_sum", "response_positive_sum"):
        if bool((get(name) > count).any()):
            raise ValueError(f"state_dict: {name}: expected at most count per cell, got "
                             f"{get(name).tolist()} against {count.tolist()}")
    if float(get("fixed_shares")) > 0:
        sums = get("group_shares").sum(-1)
        if not torch.allclose(sums, torch.ones(C, dtype=torch.float64)):
            raise ValueError(f"state_dict: group_shares: expected {S} shares summing to 1 per "
                             f"class, got {get('group_shares').tolist()}")
