"""The fast path of :class:`~humancompatible_train.fairness.FairnessConstraint` for two
groups and a statistic of constant coefficients without labels (the positive rate): the rows
are the difference of two group means, a few tensor operations with one product in the
autograd graph. Same maths as the general path (:meth:`FairnessConstraint._compute`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .constraint_values import ConstraintValues


def _two_groups(member: Tensor, dtype: torch.dtype) -> Tensor:
    """``member`` itself, or the (N, 2) one-hot of (N,) group ids (ids outside 0..1 belong to
    no group)."""
    if member.dim() == 2:
        return member
    return (member.unsqueeze(1) == torch.arange(2, device=member.device)).to(dtype)


def _fast_statistics(a: float, b: float, c: float, member: Tensor, p: Tensor) -> Tensor:
    """(1, 2) statistics of the fast path, (a n_g + b s_g . p) / (c n_g) per group, for the
    membership (or group ids) ``member``; any finite value where n_g = 0."""
    member = _two_groups(member, p.dtype)
    counts = member.sum(0)
    den = counts.clamp_min(torch.finfo(counts.dtype).tiny)
    return ((a * counts + b * (p.reshape(-1) @ member)) / (den if c == 1 else den * c)
            ).unsqueeze(0)


def _no_rows(m: int, device: torch.device) -> Tensor:
    """(m,) False: no row (or group) of the fast path is inactive (or absent)."""
    return torch.zeros(m, dtype=torch.bool, device=device)


class TwoGroupFastPath:
    """Mixin of :class:`FairnessConstraint`: :meth:`_fast_path` and its two routes. Uses the
    constraint's ``_fast`` (a, b, c, d), ``_fast_cache``, ``mode``, ``pred``, ``validate``,
    ``eps``, ``m``, names and ``_probabilities``."""

    _fast: Any
    _fast_cache: dict[tuple[torch.device, torch.dtype], Tensor]
    _fill: float
    _names: tuple[str, ...]
    mode: str
    pred: str
    validate: bool | None
    eps: float
    m: int
    name: str
    short: list[str]
    _probabilities: Callable[..., Tensor]

    def _fast_path(self, pred: Tensor, sens: Tensor) -> ConstraintValues | None:
        """The rows for two groups and a constant-coefficient statistic, or None when the
        inputs need the general path (other layouts, or a check that fails: the general
        path then raises with the full message). The same maths as :meth:`_compute`.

        Two routes. Where values may be read (on CPU, or with ``validate=True``), one read
        of the checks also brings the group sizes: with both groups present (the common
        case) no row can be inactive, and the rows are the plain difference of the two
        group means. Otherwise (accelerators by default, ``validate=False``, an absent
        group) nothing is read and tensor operations replace the inactive rows."""
        if not (isinstance(pred, Tensor) and isinstance(sens, Tensor)):
            return None
        shape, dtype, device = pred.shape, pred.dtype, pred.device
        if not dtype.is_floating_point or sens.device != device or not (
                len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            return None
        n = shape[0]
        if sens.dtype == dtype and sens.shape == (n, 2):
            member = sens
        elif sens.shape == (n,) and not (sens.is_floating_point() or sens.is_complex()):
            member = sens.long()  # group ids
        else:
            return None
        a, b, c, _ = self._fast
        cached = self._fast_cache.get((device, dtype))
        if cached is None:
            # Row r's coefficients over the two groups (the names' order), per group: b / c
            # (the group sizes divide them per batch).
            sign = [b / c, -b / c] if self.mode == "abs_diff" else [[b / c, -b / c],
                                                                      [-b / c, b / c]]
            cached = self._fast_cache[(device, dtype)] = torch.tensor(sign, dtype=dtype,
                                                                      device=device)
        validate = self.validate
        if n and (validate is True or (validate is None and device.type == "cpu")):
            return self._fast_read(pred, member, cached)
        return self._fast_unread(pred, member, cached, False)

    def _fast_read(self, pred: Tensor, member: Tensor, coef: Tensor
                   ) -> ConstraintValues | None:
        """The fast path with one read: the checks, the logits' finiteness and the group
        sizes; the rows of two present groups without any inactive-row handling."""
        n, device = pred.shape[0], pred.device
        z = pred.detach()
        ids = member.dim() == 1
        lo, hi = torch.aminmax(member)
        # Ids already in range sum to the size of group 1; memberships, per column.
        counts = member.sum() if ids else member.sum(0)
        # Logits: their sum is finite when every logit is (a finite sum that overflows only
        # costs the NaN guard); probabilities: their range.
        reads = [lo, hi, z.sum()] if self.pred == "logits" else [lo, hi, *torch.aminmax(z)]
        if device.type == "cpu":  # no device to synchronise with: read each value
            got = [x.item() for x in reads]
            sizes = counts.tolist()
        else:
            got = torch.cat([torch.stack([x.to(torch.float64) for x in reads]),
                             counts.to(torch.float64).reshape(-1)]).tolist()
            got, sizes = got[:len(reads)], got[len(reads):]
            if ids:
                sizes = sizes[0]
        if not (got[0] >= 0 and got[1] <= 1):
            return None  # out of range or NaN memberships: the general path says which
        if len(got) == 4 and not (got[2] >= 0 and got[3] <= 1):
            return None  # probabilities out of range (or NaN)
        finite = math.isfinite(got[2])
        if not finite and self.validate is True:
            return None
        if ids:
            sizes = [n - sizes, sizes]
        if not (sizes[0] > 0 and sizes[1] > 0):  # a group absent (or NaN weights)
            return self._fast_unread(pred, member, coef, finite)
        # The rows' coefficients (no gradient): the difference of the two group means.
        if ids:  # each prediction's coefficient is its group's: a gather, no one-hot
            n_g = torch.tensor(sizes, dtype=coef.dtype, device=device)
            rows = (coef / (n_g if coef.dim() == 1 else n_g.unsqueeze(1)))[member]
        else:
            rows = member @ (coef / (counts if coef.dim() == 1 else counts.unsqueeze(1)))
        p = self._probabilities(pred, finite)
        # dot and mv: the cheapest products forward and backward (matmul of a vector and a
        # matrix adds reshapes on both passes).
        if self.mode == "abs_diff":
            values = torch.dot(rows, p).abs().view(1)
        else:
            values = torch.mv(rows.t(), p)
        a, b, c, _ = self._fast
        return ConstraintValues(values - self.eps, (_no_rows, (self.m, device)), self._names,
                                self.name, self.eps, (_fast_statistics, (a, b, c, member, p)),
                                (_no_rows, (2, device)), ([self._fast], p, self.short))

    def _fast_unread(self, pred: Tensor, member: Tensor, coef: Tensor, finite: bool
                     ) -> ConstraintValues:
        """The fast path without any read: an absent group's rows are replaced on the
        device."""
        a, b, c, _ = self._fast
        shape, dtype = pred.shape, pred.dtype
        member = _two_groups(member, dtype)
        counts = member.sum(0)
        # Per-row coefficients of the rows (no gradient): the difference of the group means,
        # member @ (coef / n_g); an absent group (n_g = 0) has no member, its share is 0.
        inv = counts.clamp_min(torch.finfo(dtype).tiny)
        rows = member @ (coef / inv if coef.dim() == 1 else coef / inv.unsqueeze(1))
        # An (N, 1) prediction stays a column for abs_diff: (N,) @ (N, 1) is the (1,) row.
        column = self.mode == "abs_diff" and len(shape) == 2
        p = self._probabilities(pred, finite, flat=not column)
        values = rows @ p if column else p @ rows  # the only product in the autograd graph
        if self.mode == "abs_diff":
            values = values.abs()
        # With both groups present the intercept a cancels in the difference; with one
        # absent the row is inactive and its value replaced.
        absent = counts == 0  # c != 0 (else no fast path)
        inactive = absent.any(0, keepdim=True)  # (1,): where() broadcasts a 0-d value
        if self.mode == "pairwise":
            inactive = inactive.expand(2)
        values = torch.where(inactive, self._fill, values - self.eps)
        return ConstraintValues(values, inactive, self._names, self.name, self.eps,
                                (_fast_statistics, (a, b, c, member, p)), absent,
                                ([self._fast], p, self.short))
