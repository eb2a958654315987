r"""What a :class:`~humancompatible_train.fairness.FairnessConstraint` returns for one batch,
and the fused computation of linear-fractional statistics behind it.

A statistic of group :math:`g` (fairret's canonical form) is

.. math:: \gamma_g = \frac{\sum_i s_{ig}\,(a_i + b_i p_i)}{\sum_i s_{ig}\,(c_i + d_i p_i)}

for membership :math:`s`, prediction :math:`p` and coefficients that depend on the labels.

* **Linear statistics** (:math:`d = 0`: positive rate, TPR, FPR, accuracy): the denominator
  does not depend on :math:`p`, so :math:`\gamma = A + B p` with
  :math:`B_{gi} = s_{ig} b_i / \sum_j s_{jg} c_j` and :math:`A_g = \sum_i B_{gi} a_i / b_i`
  computed without gradient. Every row of a linear comparison mode is then one product
  :math:`R A + (R B) p` (:math:`R` the row's :math:`\pm 1` coefficients): for two groups the
  whole constraint is a single ``addmv`` in the autograd graph.
* **Other statistics** (PPV, FOR, F-score, ...): every numerator and denominator of every
  group comes from one product of the ``(S, N)`` membership with the batch's linear terms,
  then one division.

A group whose denominator is 0 is *absent*; the safe denominators keep its gradients at 0.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._validation import fail
from ._checks import Shown, kind

__all__ = ["ConstraintValues"]

#: (a, b, c, d): the canonical-form coefficients of one statistic for one batch
Coef = tuple[Any, Any, Any, Any]


def is_real(x: Any) -> bool:
    # Exact types first: an ABC check costs microseconds (more on a tensor) every batch.
    t = type(x)
    return t is float or t is int or (
        t is not bool and not isinstance(x, Tensor) and isinstance(x, numbers.Real))


def is_linear(coefs: list[Coef]) -> bool:
    """Whether no denominator depends on the prediction (every :math:`d` is 0)."""
    return all(is_real(d) and d == 0 for _, _, _, d in coefs)


def _values(x: Any, n: int, like: Tensor, where: str) -> Tensor | float:
    """A coefficient as a Python number or an ``(N,)`` tensor of ``like``'s dtype."""
    if is_real(x):
        return float(x)
    if not isinstance(x, Tensor):
        raise fail(where, "numbers or tensors as canonical-form coefficients", kind(x))
    if x.numel() == 1:
        x = x.reshape(1).expand(n)
    elif x.numel() != n or (x.dim() == 2 and x.shape[1] != 1) or x.dim() > 2:
        raise fail(where, f"coefficients broadcastable to the predictions' shape ({n}, 1)",
                   Shown(f"shape {tuple(x.shape)}"))
    x = x.reshape(n)
    return x if x.dtype == like.dtype else x.to(like.dtype)


def _sum_of(member_t: Tensor, x: Tensor | float, counts: Tensor) -> Tensor:
    """(X,) membership-weighted sums of a coefficient."""
    if isinstance(x, Tensor):
        return member_t @ x
    return counts if x == 1.0 else counts * x


def linear_statistics(coefs: list[Coef], member_t: Tensor, p: Tensor, names: list[str]
                      ) -> tuple[Tensor | None, Tensor, Tensor]:
    """(A (K, X) or None when 0, B (K, X, N), absent (K, X)) of linear statistics, so that the
    statistics are ``A + B @ p``; ``member_t`` is the ``(X, N)`` membership."""
    n = member_t.shape[1]
    counts = member_t.sum(1)
    tiny = torch.finfo(member_t.dtype).tiny
    As: list[Tensor | None] = []
    Bs, absent = [], []
    for (a, b, c, _), where in zip(coefs, names):
        a, b, c = (_values(v, n, p, where) for v in (a, b, c))
        den = _sum_of(member_t, c, counts)
        absent.append(den == 0)
        # Per-row weights of the group means; an absent group has no row (weights 0).
        w = member_t / den.clamp_min(tiny).unsqueeze(1)
        if isinstance(b, Tensor):
            Bs.append(w * b)
        else:
            Bs.append(w if b == 1.0 else w * b)
        if isinstance(a, Tensor):
            As.append(w @ a)
        else:
            As.append(None if a == 0.0 else w.sum(1) * a)
    if len(coefs) == 1:
        A = None if As[0] is None else As[0].unsqueeze(0)
        return A, Bs[0].unsqueeze(0), absent[0].unsqueeze(0)
    A = None
    if any(x is not None for x in As):
        A = torch.stack([torch.zeros_like(absent[0], dtype=member_t.dtype) if x is None else x
                         for x in As])
    return A, torch.stack(Bs), torch.stack(absent)


def ratio_statistics(coefs: list[Coef], member_t: Tensor, p: Tensor, names: list[str]
                     ) -> tuple[Tensor, Tensor]:
    """(statistics (K, X) with any value where absent, absent (K, X)) of any linear-fractional
    statistics: every numerator and denominator from one product with ``member_t``."""
    n = member_t.shape[1]
    cols: list[Tensor] = []
    for (a, b, c, d), where in zip(coefs, names):
        for lo, hi in ((a, b), (c, d)):
            lo, hi = _values(lo, n, p, where), _values(hi, n, p, where)
            term = p if isinstance(hi, float) and hi == 1.0 else hi * p
            if isinstance(term, float):  # a constant: its sums are multiples of the sizes
                term = p.new_full((n,), term)
            cols.append(term if isinstance(lo, float) and lo == 0.0 else lo + term)
    sums = torch.stack(cols, 1).T @ member_t.T  # (2K, X): one product for all
    num, den = sums[0::2], sums[1::2]
    absent = den == 0
    if den.requires_grad:
        return num / torch.where(absent, 1.0, den), absent
    # No gradient through the denominator: the clamp keeps absent entries' gradients 0.
    return num / den.clamp_min(torch.finfo(den.dtype).tiny), absent


def overall_statistics(coefs: list[Coef], p: Tensor, names: list[str]
                       ) -> tuple[Tensor, Tensor]:
    """(K,) statistics over every row of the batch, and where their denominator is 0."""
    p = p.reshape(-1)
    every = torch.ones_like(p).unsqueeze(0)
    if is_linear(coefs):
        A, B, absent = linear_statistics(coefs, every, p, names)
        raw = linear_combination(A, B, p)
    else:
        raw, absent = ratio_statistics(coefs, every, p, names)
    return raw.reshape(-1), absent.reshape(-1)


def linear_combination(A: Tensor | None, B: Tensor, p: Tensor) -> Tensor:
    """``A + B @ p`` for (K, X) ``A`` and (K, X, N) ``B``: the (K, X) statistics."""
    K, X, N = B.shape
    flat = B.reshape(K * X, N) @ p if A is None else torch.addmv(A.reshape(-1),
                                                                   B.reshape(K * X, N), p)
    return flat.view(K, X)


class ConstraintValues:
    """One batch's constraint rows (inequalities, ``<= 0``) and what they came from.

    Pass :attr:`values` (or :meth:`as_dict` when the dual optimizer has several named groups)
    to the dual optimizer. Three cases, told apart by :attr:`active` and the values:

    * every group the row compares has a statistic: active, its value;
    * the row involves an *absent* group (zero denominator: no rows, or e.g. no positive
      labels for TPR): inactive (``active`` False), value 0 (``inactive="zero"``) or NaN
      (``inactive="nan"``); its statistic is NaN and :attr:`absent` marks it;
    * a non-finite prediction or label in the batch: every statistic NaN, and every row that
      involves no absent group active and NaN (:attr:`nonfinite`); a non-finite membership
      weight: the same for its group's statistic and rows.

    Attributes other than :attr:`values` are computed when first read (no host read unless
    the name says so): the training step pays only for the rows.
    """

    def __init__(self, values: Tensor, inactive: Tensor, names: tuple[str, ...], group: str,
                 eps: float, statistics: Tensor | tuple[Callable[..., Tensor], tuple[Any, ...]],
                 absent: Tensor,
                 overall: tuple[Any, ...]) -> None:
        self.values = values  #: (m,) differentiable where active; 0 (or NaN) where inactive
        self.group = group  #: the dual optimizer's constraint group these rows belong to
        self.eps = eps  #: the tolerance the rows subtract
        self._names = names
        self._inactive = inactive
        self._stats = statistics  # (K, S), any value where absent; or (function, arguments)
        self._absent = absent  # (K, S)
        self._overall = overall  # (statistics, absent) or what computes them

    def __repr__(self) -> str:
        return (f"ConstraintValues(group={self.group!r}, names={self.names}, "
                f"values={self.values}, active={self.active})")

    @property
    def names(self) -> list[str]:
        """(m,) row names, e.g. ``"PR[female] - PR[male]"``, in the order of the values."""
        return list(self._names)

    @property
    def active(self) -> Tensor:
        """(m,) bool: no group the row compares is absent."""
        return ~self._inactive

    @property
    def absent(self) -> Tensor:
        """(K, S) bool: the group's denominator was 0 in the batch (no rows, or e.g. no
        positive labels for TPR)."""
        return self._absent if self._absent.dim() == 2 else self._absent.unsqueeze(0)

    def _raw(self) -> Tensor:
        if isinstance(self._stats, tuple):  # (function, its arguments): computed on first use
            self._stats = self._stats[0](*self._stats[1])
        return self._stats

    @property
    def statistics(self) -> Tensor:
        """(K, S) per-group statistics: NaN where the group is absent or an input non-finite."""
        return torch.where(self.absent, torch.nan, self._raw())

    @property
    def overall(self) -> Tensor:
        """(K,) the statistic over every row of the batch (NaN where undefined)."""
        if len(self._overall) != 2:  # the batch's terms: computed on first use
            self._overall = overall_statistics(*self._overall)
        raw, absent = self._overall
        return torch.where(absent, torch.nan, raw)

    @property
    def defined(self) -> Tensor:
        """(K, S) bool: the group's statistic is a finite number."""
        return ~self.absent & torch.isfinite(self._raw())

    @property
    def nonfinite(self) -> Tensor:
        """(m,) bool: active rows whose value is NaN or infinite (non-finite inputs)."""
        return ~self._inactive & ~torch.isfinite(self.values.detach())

    @property
    def inactive_names(self) -> list[str]:
        """Names of the rows that contributed nothing (reads ``active`` on the host)."""
        return [n for n, a in zip(self._names, self._inactive.tolist()) if a]

    @property
    def nonfinite_names(self) -> list[str]:
        """Names of the active rows whose value is not finite (reads on the host)."""
        return [n for n, b in zip(self._names, self.nonfinite.tolist()) if b]

    def largest_gap(self) -> Tensor:
        r"""0-d: the largest active row plus :math:`\varepsilon`, i.e. the largest gap
        between groups (or to the overall statistic) in every mode. NaN when an active row is
        NaN, and NaN when no row is active (the gap is undefined: report it as missing, never
        as met). No host read."""
        top = torch.where(self._inactive, -torch.inf, self.values.detach()).amax()
        return torch.where(self._inactive.all(), torch.nan, top + self.eps)

    def as_dict(self) -> dict[str, Tensor]:
        """``{group: values}``: the dual optimizer's dict layout."""
        return {self.group: self.values}

    def named(self) -> dict[str, float]:
        """``{row name: value}`` for logging (reads the values on the host)."""
        return dict(zip(self._names, self.values.detach().tolist()))
