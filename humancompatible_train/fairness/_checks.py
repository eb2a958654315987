"""Value checks of a batch, read from the device at most once.

Shapes and dtypes are checked for free (no tensor is read). Checks of *values* (ids in range,
memberships and labels in [0, 1], finiteness) need the values on the host: on an accelerator
that is a synchronisation, which the training hot path must not pay by default. A
:class:`Reads` collects every value check of one call as small device-side reductions and
reads them all in one transfer; each check then judges its numbers in Python and raises a
``ValueError`` in the shared pattern ``"{name}: expected {what}, got {value!r}"``.

``validate`` (the switch the public classes take):

* ``None`` (automatic): the range checks run on CPU tensors, where a read costs no device
  synchronisation, and are skipped on accelerators; non-finite values are *not* errors here
  (they propagate, as NaN, to whatever consumes the result);
* ``True``: the range checks run on every device (one host read per call), and non-finite
  values are refused too;
* ``False``: nothing is read.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._validation import check_bool

__all__ = ["Reads", "Shown", "check_validate", "kind"]

class Shown(str):
    """A description shown as it is in an error message (``fail`` shows values by ``repr``)."""

    def __repr__(self) -> str:
        return str(self)


def kind(x: object) -> Shown:
    """What ``x`` is, for an error message: a tensor's dtype, or the type's name."""
    dtype = getattr(x, "dtype", None)
    return Shown(f"a tensor of {dtype}" if isinstance(x, torch.Tensor) else
                 type(x).__name__ if dtype is None else f"{type(x).__name__} of {dtype}")


def check_validate(value: object, name: str = "validate") -> bool | None:
    """``None`` (automatic), ``True`` or ``False``; anything else is refused."""
    if value is None:
        return None
    return check_bool(name, value)


def _first_row(bad: Tensor) -> int:
    """Index of the first row (dimension 0) where ``bad`` holds (read on the failure path)."""
    flat = bad.reshape(bad.shape[0], -1).any(1) if bad.dim() > 1 else bad
    return int(flat.nonzero()[0, 0])


class Reads:
    """Value checks of one call, read from the device in one transfer (see the module).

    After :meth:`run`, :attr:`proven_finite` says whether every tensor registered with
    :meth:`span` or :meth:`finite` was read and found finite (then no device-side NaN
    propagation is needed). Lean on purpose: it runs in training steps."""

    __slots__ = ("enabled", "strict", "nonfinite", "_spans", "_flags")
    _Span = tuple[str, Tensor, Tensor, Tensor, float, float, str, "Callable[[], str] | None",
                  str]

    def __init__(self, validate: bool | None, device: torch.device) -> None:
        #: whether any value is read: always (``True``), never (``False``), on CPU (``None``)
        self.enabled = validate is True or (validate is None and device.type == "cpu")
        #: non-finite values are errors (only with ``validate=True``)
        self.strict = validate is True
        self.nonfinite = False  #: a registered tensor held NaN or an infinity (not strict)
        self._spans: list[Reads._Span] = []
        self._flags: list[tuple[Tensor, Callable[[], str]]] = []

    @property
    def proven_finite(self) -> bool:
        return self.enabled and not self.nonfinite

    def span(self, name: str, t: Tensor, low: float, high: float, what: str,
             message: Callable[[], str] | None = None, hint: str = "") -> None:
        """Values of the *detached* ``t`` finite and within ``[low, high]`` (else the error
        ``message()``, by default one naming the range found, then ``hint``); a non-finite
        value is an error only when strict, and otherwise noted in :attr:`nonfinite` (it
        propagates as NaN)."""
        if self.enabled and t.numel():
            lo, hi = torch.aminmax(t)
            self._spans.append((name, t, lo, hi, low, high, what, message, hint))

    def finite(self, name: str, t: Tensor, what: str) -> None:
        """Every value of the *detached* ``t`` finite (see :meth:`span`)."""
        if t.is_floating_point():
            self.span(name, t, -math.inf, math.inf, what)

    def flag(self, bad: Tensor, message: Callable[[], str]) -> None:
        """A 0-d bool computed on the device; ``message()`` (may read more) when it holds."""
        if self.enabled:
            self._flags.append((bad, message))

    def run(self) -> None:
        """Read every registered value at once and raise the first failing check's error."""
        spans, flags = self._spans, self._flags
        if not spans and not flags:
            return
        device = spans[0][2].device if spans else flags[0][0].device
        if device.type == "cpu":  # no device to synchronise with: read each value
            got = [x.item() for s in spans for x in (s[2], s[3])]
            bad = [f[0].item() for f in flags]
        else:
            values = [x.to(torch.float64) for s in spans for x in (s[2], s[3])]
            got = torch.stack(values + [f[0].to(torch.float64) for f in flags]).tolist()
            bad = got[2 * len(spans):]
        for i, (name, t, _, _, low, high, what, message, hint) in enumerate(spans):
            lo, hi = got[2 * i], got[2 * i + 1]
            if not (math.isfinite(lo) and math.isfinite(hi)):
                if self.strict:
                    raise ValueError(_nonfinite(name, what, t))
                self.nonfinite = True  # propagates as NaN
            elif lo < low or hi > high:
                raise ValueError(message() if message is not None else
                                 f"{name}: expected {what} in [{_num(low)}, {_num(high)}]"
                                 f"{hint}, got values in [{_num(lo)}, {_num(hi)}]")
        for (_, flagged), b in zip(flags, bad):
            if b:
                raise ValueError(flagged())


def _num(x: float) -> str:
    return f"{x:g}"


def _nonfinite(name: str, what: str, t: Tensor) -> str:
    row = _first_row(~torch.isfinite(t.detach()))
    value = t.detach()[row]
    got = value.item() if value.numel() == 1 else value.tolist()
    return f"{name}: expected finite {what}, got {got!r} at row {row}"
