"""Small exact solvers of FairInference's streaming step: the weighted band projection of
group values (from the projection solver) and :func:`two_slab_qp`, the two-group step with
both the batch's and the pooled band."""

from __future__ import annotations

import torch
from torch import Tensor

from .solver import _band_unboxed


def band_project(x: Tensor, w: Tensor, eps: float, present: Tensor) -> Tensor:
    r"""Project group values ``x`` (C, S) onto a band of width ``eps`` in the metric
    :math:`\sum_g w_g (y_g - x_g)^2`, groups outside ``present`` untouched (the weighted band
    projection of :mod:`humancompatible_train._projection.solver`)."""
    _, delta = _band_unboxed(x, torch.where(present, w, torch.zeros_like(w)), eps)
    return x + delta


def two_slab_qp(w: Tensor, rows: Tensor, rhs: Tensor) -> Tensor:
    r"""Exact :math:`\min_d \sum_g w_g d_g^2` s.t. ``rows @ d <= rhs`` for two variables.

    ``w``: (..., 2) positive weights; ``rows``: (..., R, 2); ``rhs``: (..., R) (``inf`` marks an
    absent row). By the KKT conditions the optimum has at most two active constraints, so it
    is the cheapest feasible point among: the origin, the projection onto each row's line,
    and the intersection of each pair of lines. All candidates are evaluated at once.
    """
    R = rows.shape[-2]
    inv = (1.0 / w).unsqueeze(-2)
    denom = (rows * rows * inv).sum(-1)
    on_line = (rhs / denom).unsqueeze(-1) * inv * rows  # (..., R, 2)
    j, k = torch.triu_indices(R, R, 1, device=rows.device)
    a, c = rows[..., j, :], rows[..., k, :]
    bj, bk = rhs[..., j], rhs[..., k]
    det = a[..., 0] * c[..., 1] - a[..., 1] * c[..., 0]
    corner = torch.stack([bj * c[..., 1] - bk * a[..., 1], a[..., 0] * bk - c[..., 0] * bj],
                         -1) / det.unsqueeze(-1)  # parallel lines give inf/nan: infeasible
    cand = torch.cat([torch.zeros_like(on_line[..., :1, :]), on_line, corner], -2)
    slack = rhs.unsqueeze(-2) - (cand.unsqueeze(-2) * rows.unsqueeze(-3)).sum(-1)
    tol = 1e-9 * (1.0 + torch.where(torch.isfinite(rhs), rhs.abs(), 0.0)).unsqueeze(-2)
    feasible = ((slack >= -tol) | torch.isnan(slack) & torch.isinf(rhs).unsqueeze(-2)).all(-1) \
        & torch.isfinite(cand).all(-1)
    cost = torch.where(feasible, (w.unsqueeze(-2) * cand * cand).sum(-1), float("inf"))
    best = cost.argmin(-1, keepdim=True).unsqueeze(-1).expand(*cost.shape[:-1], 1, 2)
    return torch.gather(torch.nan_to_num(cand), -2, best).squeeze(-2)
