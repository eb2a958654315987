r"""Calibration of :class:`~humancompatible_train.inference.FairInference` on held-out
scores: the offsets of the exact offline projection, the groups' shares and the dual's prior
(the maths in :meth:`FairInference.calibrate_scores`). Nothing is served or counted."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .._projection import band_shifts, decision_band_project
from .._validation import check_real
from ._checks import check_batch, check_values

if TYPE_CHECKING:
    from .wrapper import FairInference

__all__ = ["fit"]


def fit(fi: FairInference, scores: Tensor, groups: Tensor, labels: Tensor | None,
        prior_weight: float) -> dict[str, Any]:
    """Fit and store the offsets, shares and prior; returns them (see the wrapper's method)."""
    where = "calibrate: "
    w = check_real("prior_weight", prior_weight, low=0, where=where)
    if fi._labelled and labels is None:
        raise ValueError(f"{where}labels: metric {fi.metric!r} needs labels, got None")
    z, g, y = check_batch(fi, scores, groups, labels)
    zd = z.to(torch.float64)
    key = check_values(fi, zd, g, y)
    C, S = fi.num_classes, fi.num_groups
    n = torch.bincount(key, minlength=C * S).to(torch.float64).view(C, S)
    raw = torch.bincount(key, weights=zd, minlength=C * S).view(C, S)
    prior_sum = raw
    nu = torch.zeros(C, S, dtype=torch.float64)
    eps = fi.fairness_tolerance
    present = n > 0
    mean = raw / n.clamp(min=1)
    if fi._decision:
        q = decision_band_project(zd, key, C, S, eps, fi.threshold)
        nu = _decision_offsets(zd, q, key, C, S, fi.threshold)
        shifted = zd - nu.view(-1).index_select(0, key)
        prior_sum = torch.bincount(key, weights=(shifted >= fi.threshold).double(),
                                   minlength=C * S).view(C, S)
    elif fi._residual:
        ybar = torch.bincount(key, weights=y, minlength=C * S).view(C, S) / n.clamp(min=1)
        target = torch.minimum(torch.maximum(mean, ybar - eps), ybar + eps)
        nu = torch.where(present, mean - target, 0.0)
        fi._set("prior_label_sum", ybar * n * w)
    else:
        d = band_shifts(mean.numpy(), n.numpy(), eps, present.numpy())
        nu = -torch.from_numpy(np.ascontiguousarray(d))
    totals = n.sum(-1, keepdim=True)
    shares = torch.where(totals > 0, n / totals.clamp(min=1), 1.0 / S)
    with torch.no_grad():
        fi._set("calibration_offsets", nu)
        fi._set("group_shares", shares)
        fi._set("fixed_shares", torch.ones(()))
        fi._set("prior_count", n * w)
        fi._set("prior_sum", prior_sum * w)
        if not fi._residual:
            fi._set("prior_label_sum", torch.zeros(C, S))
        fi._set("multipliers", torch.zeros_like(fi._view("multipliers")))
        fi._set("dual_steps", torch.zeros(()))
    fi._np = None
    return {"offsets": nu.clone(), "group_shares": shares.clone(),
            "samples": int(n.sum())}


def _decision_offsets(z: Tensor, q: Tensor, key: Tensor, C: int, S: int, t: float) -> Tensor:
    """Per cell, the score shift under which thresholding reproduces the positives of ``q``
    (moving the cell's threshold between its k-th and (k + 1)-th largest score)."""
    nu = torch.zeros(C * S, dtype=torch.float64)
    for c in range(C * S):
        zc = z[key == c]
        if zc.numel() == 0:
            continue
        k0 = int((zc >= t).sum())
        k = int((q[key == c] >= t).sum())
        if k == k0:
            continue
        top = zc.sort(descending=True).values
        if k == 0:
            cut = float(torch.nextafter(top[0], torch.tensor(math.inf, dtype=top.dtype)))
        elif k == top.numel():
            cut = float(top[-1])
        else:
            cut = 0.5 * float(top[k - 1] + top[k])
        nu[c] = cut - t
    return nu.view(C, S)
