r"""The derivative of the projection (:mod:`.solver`): a hand-written backward pass.

The solution map is piecewise affine. With :math:`F_r` the free rows (:math:`lo < q_i < hi`),
:math:`a_c` their number in cell ``c``, :math:`A_k` the cells of class ``k`` whose constraint
binds (with :math:`a_c > 0`), :math:`u = v \odot 1_{F_r}` and :math:`U_c = \sum_{i\in c} u_i`,
the vector-Jacobian product of the band problem is

.. math::

    (J^\top v)_j = u_j + 1[j \in F_r,\ c_j \in A_k]\Big(-\frac{U_{c_j}}{a_{c_j}} +
    \frac{n_{c_j}}{a_{c_j}}\,\frac{\sum_{c \in A_k} n_c U_c / a_c}
    {\sum_{c \in A_k} n_c^2 / a_c}\Big)

(derivation in :mod:`.solver`); the fixed problem drops the coupling term. It is written once
(:func:`vjp`) against the few array operations that NumPy and torch spell alike: projections
solved on the host (:mod:`.pair`) differentiate on NumPy views, the others with tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .batch import segment_sum

__all__ = ["Apply", "vjp"]


def _segment_sum(xp: Any, ids: Any, values: Any, C: int) -> Any:
    """Sum of ``values`` per id in ``0..C-1`` (no value read back on an accelerator)."""
    return np.bincount(ids, values, C) if xp is np else segment_sum(values, ids, C)


def vjp(xp: Any, v: Any, cell: Any, free: Any, n: Any, active: Any, K: int, S: int,
        coupled: bool) -> Any:
    """:math:`J^\\top v` for float64 ``v`` (N,); ``free``: (N,) rows strictly inside the box
    (``None`` without a box); ``n``, ``active``: (K, S) counts and binding cells; ``coupled``:
    the band problem (else the fixed one). ``xp`` is :mod:`numpy` or :mod:`torch`."""
    C = K * S
    if free is not None:
        u = xp.where(free, v, 0.0)
        a = _segment_sum(xp, cell, xp.where(free, 1.0, 0.0), C)
    else:
        u, a = v, n.reshape(-1)
    U = _segment_sum(xp, cell, u, C)
    inv_a = xp.where(active.reshape(-1) & (a > 0), 1.0 / xp.where(a > 0, a, 1.0), 0.0)
    corr = -U * inv_a
    if coupled:
        nn = n.reshape(-1)
        num = (nn * U * inv_a).reshape(K, S).sum(-1)
        den = (nn * nn * inv_a).reshape(K, S).sum(-1)
        # A binding cell with every row on the box has a flat mean map: the band sits on
        # that jump of F, so t_k is locally constant and the cells decouple.
        pinned = (active.reshape(-1) & (a == 0)).reshape(K, S).any(-1)
        ratio = xp.where((den > 0) & ~pinned, num / xp.where(den > 0, den, 1.0), 0.0)
        corr = corr + ((nn * inv_a).reshape(K, S) * ratio.reshape(K, 1)).reshape(-1)
    step = corr[cell]
    return u + (step if free is None else xp.where(free, step, 0.0))


class Apply(torch.autograd.Function):
    """The projection ``q`` (computed without autograd) as a function of ``z``, with the
    exact piecewise-affine derivative :func:`vjp`."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, parts: tuple[Any, ...], K: int, S: int, coupled: bool
                ) -> Tensor:
        """``parts``: ``(q, cell, free, n, active)``: ``q`` the result, already in ``z``'s
        dtype (inside the tuple, so that autograd does not take it for an input), then the
        tensors of :func:`vjp`, or NumPy arrays when the projection was solved on the host
        (``cell`` a copy then: the caller's ids may change before the backward pass)."""
        q, *rest = parts
        if isinstance(rest[0], np.ndarray):
            ctx.host = rest
        else:
            ctx.host = None
            cell, free, n, active = rest
            ctx.save_for_backward(cell, n, active, *(() if free is None else (free,)))
        ctx.shape = (K, S, coupled)
        return q

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        (v,) = grads
        K, S, coupled = ctx.shape
        if ctx.host is not None:
            vn = v.detach().numpy()
            g = vjp(np, vn.astype(np.float64), *ctx.host, K, S, coupled)
            return torch.from_numpy(g.astype(vn.dtype)), None, None, None, None
        cell, n, active, *free = ctx.saved_tensors
        g = vjp(torch, v.to(torch.float64), cell, free[0] if free else None, n, active, K, S,
                coupled)
        return g.to(v.dtype), None, None, None, None
