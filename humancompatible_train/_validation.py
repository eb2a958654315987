"""Argument checks shared by every public entry point.

Each check returns the value in its canonical Python type or raises a :class:`ValueError`
(a :class:`TypeError` never escapes for a value of the wrong type: callers and the command line
catch one exception class) whose message follows one pattern::

    {where}{name}: expected {what}, got {value!r}

so a user reads which argument was wrong, what it must be and what came. ``where`` is an
optional prefix such as ``"constraint group 'g0': "``.

They are plain Python (no tensor is read), so they are cheap enough to run again wherever a
value may have changed since construction (learning-rate schedulers write into param groups).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "Rule",
    "boolean",
    "check_bool",
    "check_bounds",
    "check_choice",
    "check_device",
    "check_float_dtype",
    "check_int",
    "check_real",
    "check_settings",
    "choice",
    "fail",
    "integer",
    "real",
]


def fail(name: str, expected: str, got: Any, where: str = "") -> ValueError:
    """The error of the shared pattern (returned, so that callers ``raise fail(...)``)."""
    return ValueError(f"{where}{name}: expected {expected}, got {got!r}")


def check_bool(name: str, value: Any, where: str = "") -> bool:
    """A real bool (``numpy.bool_`` too); strings such as ``"False"`` are refused."""
    if isinstance(value, bool):
        return value
    kind = type(value)
    if kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_"):  # numpy.bool_
        return bool(value)
    raise fail(name, "True or False", value, where)


def check_int(name: str, value: Any, *, minimum: int | None = None,
              maximum: int | None = None, where: str = "") -> int:
    """An integer (Python or numpy), not a bool, within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise fail(name, _int_text(minimum, maximum), value, where)
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise fail(name, _int_text(minimum, maximum), value, where)
    return value


def _int_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an int in [{minimum}, {maximum}]"
    if minimum is not None:
        return {0: "an int >= 0", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
    if maximum is not None:
        return f"an int <= {maximum}"
    return "an int"


def check_real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, finite: bool = True,
               where: str = "") -> float:
    """A real number (not a bool, not NaN; finite unless ``finite=False``) in the interval
    given by ``low``/``high`` (closed unless ``low_open``/``high_open``)."""
    what = _real_text(low, high, low_open, high_open, finite)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise fail(name, what, value, where)
    x = float(value)
    if math.isnan(x) or (finite and math.isinf(x)):
        raise fail(name, what, value, where)
    if low is not None and (x < low or (low_open and x == low)):
        raise fail(name, what, value, where)
    if high is not None and (x > high or (high_open and x == high)):
        raise fail(name, what, value, where)
    return x


def _real_text(low: float | None, high: float | None, low_open: bool, high_open: bool,
               finite: bool) -> str:
    kind = "a finite number" if finite else "a number (not NaN)"
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {high}"
    return kind


def check_choice(name: str, value: Any, choices: Iterable[Any], where: str = "") -> Any:
    """One of ``choices`` (compared with ``==``; unhashable values are refused cleanly)."""
    options = tuple(choices)
    try:
        ok = value in options
    except TypeError:
        ok = False
    if not ok:
        raise fail(name, f"one of {options}", value, where)
    return value


def check_float_dtype(name: str, value: Any, where: str = "") -> torch.dtype:
    """A floating-point :class:`torch.dtype` (``"float32"`` and ``torch.float32`` alike)."""
    dtype = value
    if isinstance(value, str):
        dtype = getattr(torch, value.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise fail(name, "a floating-point torch.dtype such as torch.float32", value, where)
    return dtype


def check_device(name: str, value: Any, where: str = "") -> torch.device:
    """A :class:`torch.device` that exists here: ``"cuda"`` on a build or machine without CUDA
    is refused with a message naming the argument, instead of torch's AssertionError later."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise fail(name, "a torch.device or a device string such as 'cpu' or 'cuda:0'", value,
                   where) from None
    try:
        torch.empty(0, device=device)
    except (AssertionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{where}{name}: device {str(device)!r} is not available here "
                         f"({first})") from None
    return device


def check_bounds(name: str, value: Any, where: str = "") -> tuple[float, float]:
    """A pair ``(lo, hi)`` of finite real numbers with ``lo < hi`` (prediction bounds)."""
    what = "a pair (lo, hi) of finite numbers with lo < hi"
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise fail(name, what, value, where)
    pair = tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Real)
                             for v in pair):
        raise fail(name, what, value, where)
    lo, hi = float(pair[0]), float(pair[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise fail(name, what, value, where)
    return lo, hi


@dataclass(frozen=True)
class Rule:
    """How one setting is checked: ``check(label or key, value, where=..., **options)``;
    ``None`` passes unchecked when ``optional``. Tables of rules (``{key: Rule}``) state a
    class's hyperparameters once; :func:`check_settings` applies them."""

    check: Callable[..., Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None
    optional: bool = False


def real(*, label: str | None = None, optional: bool = False, **options: Any) -> Rule:
    """A :func:`check_real` rule (``low``, ``high``, ``low_open``, ``high_open``, ``finite``)."""
    return Rule(check_real, options, label, optional)


def integer(*, label: str | None = None, optional: bool = False, **options: Any) -> Rule:
    """A :func:`check_int` rule (``minimum``, ``maximum``)."""
    return Rule(check_int, options, label, optional)


def choice(choices: Iterable[Any], *, label: str | None = None) -> Rule:
    """A :func:`check_choice` rule."""
    return Rule(check_choice, {"choices": tuple(choices)}, label)


def boolean(*, label: str | None = None) -> Rule:
    """A :func:`check_bool` rule."""
    return Rule(check_bool, {}, label)


def check_settings(values: Mapping[str, Any], rules: Mapping[str, Rule], where: str = "") -> None:
    """Check ``values[key]`` by ``rules[key]`` for every key of ``rules``, in order; raise the
    first failure's ValueError."""
    for key, rule in rules.items():
        value = values[key]
        if value is None and rule.optional:
            continue
        rule.check(rule.label or key, value, where=where, **rule.options)
