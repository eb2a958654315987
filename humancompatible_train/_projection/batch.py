"""What the projection solvers start from (:class:`Cells`) and what they return
(:class:`Solution`).

A batch's rows fall into cells ``c = k * S + s`` (label class ``k``, group ``s``). Every
solver needs each cell's size and sum first; input checks read the same sums (their total is
finite exactly when every row is), so the caller builds :class:`Cells` once, checks, and
hands it to :func:`~.solver.project_cells`.

On the CPU, for one class of two groups (the common case), the cells are kept as NumPy views
of the tensors' memory and Python numbers: there is no device to wait for, and NumPy's
per-call cost on small arrays is a fraction of torch's, so the small-batch path
(:func:`~.pair.pair_host`) runs at a constant overhead of a few microseconds.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Cells", "PairSolution", "Solution", "host_branch", "segment_sum"]

_F64 = torch.float64
_HOST_DTYPES = (torch.float32, torch.float64)


def host_branch(device: torch.device) -> bool:
    """Whether reading a value back costs nothing (CPU tensors): then branches are taken on
    the host instead of computing both sides and selecting with ``torch.where``."""
    return device.type == "cpu"


def segment_sum(values: Tensor, ids: Tensor, C: int) -> Tensor:
    """Sum of ``values`` per id in ``0..C-1``, without reading anything back."""
    return torch.zeros(C, dtype=values.dtype, device=values.device).index_add_(0, ids, values)


class Cells:
    """The rows of a batch by cell, with each cell's size and sum (float64).

    Args:
        z: (N,) floating rows (any device).
        cell: (N,) int64 cell ids, expected in ``0..K*S-1``.
        K, S: classes and groups.
        band: the band problem will be solved (``False`` for fixed intervals).

    Attributes:
        host: the host path (CPU, ``K == 1``, ``S == 2``, band, float32/float64 rows): then
            ``zn`` (float64) and ``cn`` are NumPy arrays and ``n``, ``sums`` tuples of
            floats. Otherwise ``zd`` is the float64 tensor of the rows and ``n``, ``sums``
            are (C,) float64 tensors.
        total: the sum of all rows, finite exactly when every row is (unless it overflows):
            a float on the host path, else a 0-d tensor.

    Raises:
        IndexError: (CPU) a cell id outside ``0..K*S-1``, found from the length of the
            counts (an id is clamped to ``K*S`` first, so a huge id allocates nothing). On an
            accelerator nothing is read back: ids must have been checked.
    """

    def __init__(self, z: Tensor, cell: Tensor, K: int, S: int, band: bool = True) -> None:
        C = K * S
        self.z, self.cell, self.K, self.S = z, cell, K, S
        self.host = K == 1 and S == 2 and band and z.dtype in _HOST_DTYPES \
            and host_branch(z.device)
        if self.host:
            cn = cell.numpy()
            try:
                n = np.bincount(np.minimum(cn, C), minlength=C)
            except ValueError:  # a negative id
                n = None
            if n is None or n.size != C:
                raise IndexError(f"cell ids must lie in 0..{C - 1}")
            self.cn = cn
            self.zn = z.detach().numpy().astype(np.float64, copy=False)
            s0, s1 = np.bincount(cn, self.zn, C).tolist()
            self.n, self.sums, self.total = tuple(n.tolist()), (s0, s1), s0 + s1
            return
        self.zd = z.detach().to(_F64)
        if host_branch(z.device):
            try:
                n = torch.bincount(cell.clamp(max=C), minlength=C)
            except RuntimeError:  # a negative id
                n = None
            if n is None or n.numel() != C:
                raise IndexError(f"cell ids must lie in 0..{C - 1}")
            self.n = n.to(_F64)
            self.sums = torch.bincount(cell, weights=self.zd, minlength=C)
        else:
            # bincount would wait for the device to size its output: sums into C slots. An id
            # out of range stops the kernel (callers that promise an error check ids first).
            self.n = segment_sum(torch.ones_like(self.zd), cell, C)
            self.sums = segment_sum(self.zd, cell, C)
        self.total = self.sums.sum()

    def counts(self) -> Tensor:
        """(K, S) rows per cell as a float64 tensor on the rows' device."""
        if self.host:
            return torch.tensor([self.n], dtype=_F64)
        return self.n.view(self.K, self.S)


class Solution:
    """Result of :func:`~.solver.project_cells` (tensors; nothing read back by the host).

    Attributes:
        q: the projection, shaped and typed like ``z``.
        shifts: ``(K, S)`` each cell's shift :math:`\\delta_c` before the box.
        counts: ``(K, S)`` rows per cell (float64).
        band: ``(K,)`` the band position :math:`t_k` (NaN for the fixed problem and for a
            class with fewer than two groups).
        changed: ``(K,)`` bool, the class had at least two groups (band) or rows (fixed), so
            its constraints were enforced; rows of other classes are only clipped to the box.
        box_active: 0-d bool, the box changed the solution.
        multipliers: ``(2*K*S,)`` the optimal multipliers ``[class][cell][low, up]``: with
            :math:`\\alpha_c = n_c\\delta_c`, :math:`\\lambda^{low}_c = [\\alpha_c]_+` and
            :math:`\\lambda^{up}_c = [-\\alpha_c]_+`.
    """

    def __init__(self, q: Tensor, shifts: Tensor, counts: Tensor, band: Tensor,
                 changed: Tensor, box_active: Tensor) -> None:
        self.q, self.shifts, self.counts, self.band = q, shifts, counts, band
        self.changed, self.box_active = changed, box_active

    @functools.cached_property
    def multipliers(self) -> Tensor:
        alpha = (self.counts * self.shifts).unsqueeze(-1)
        return torch.cat([alpha, -alpha], -1).clamp_(min=0).view(-1) + 0.0  # no -0.0


class PairSolution(Solution):
    """A :class:`Solution` of the host path, whose tensors are made from its few numbers on
    first access (most callers read ``q`` and the multipliers only)."""

    def __init__(self, q: Tensor, shifts: tuple[float, float], counts: tuple[float, float],
                 band: float, changed: bool, box_active: bool) -> None:
        self.q = q
        self.shifts_host, self.counts_host = shifts, counts
        self._host: tuple[Any, ...] = (shifts, counts, band, changed, box_active)
        (d0, d1), (n0, n1) = shifts, counts
        a0, a1 = n0 * d0, n1 * d1
        # max(x, 0.0) + 0.0: a multiplier is never -0.0.
        self._mult = np.array([max(a0, 0.0), max(-a0, 0.0), max(a1, 0.0), max(-a1, 0.0)]) + 0.0

    @functools.cached_property
    def shifts(self) -> Tensor:  # type: ignore[override]
        return torch.tensor([self._host[0]], dtype=_F64)

    @functools.cached_property
    def counts(self) -> Tensor:  # type: ignore[override]
        return torch.tensor([self._host[1]], dtype=_F64)

    @functools.cached_property
    def band(self) -> Tensor:  # type: ignore[override]
        return torch.tensor([self._host[2]], dtype=_F64)

    @functools.cached_property
    def changed(self) -> Tensor:  # type: ignore[override]
        return torch.tensor([self._host[3]])

    @functools.cached_property
    def box_active(self) -> Tensor:  # type: ignore[override]
        return torch.tensor(self._host[4])

    @functools.cached_property
    def multipliers(self) -> Tensor:
        return torch.from_numpy(self._mult)
