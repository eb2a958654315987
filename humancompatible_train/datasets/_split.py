"""Stratified sub-sampling and splitting of a dataset's rows: every combination of label and
sensitive groups (a stratum) is sampled and cut on its own, so rates agree across the parts."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .._apportion import largest_remainder

__all__ = ["check_fractions", "strata_of", "stratified_split", "stratified_subsample"]


def check_fractions(split: Sequence[float]) -> tuple[float, float, float]:
    try:
        fr = tuple(float(f) for f in split)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"split: expected three numbers (train, val, test), got {split!r}"
        ) from exc
    if len(fr) != 3 or any(not math.isfinite(f) or f < 0 for f in fr):
        raise ValueError(
            f"split: expected three non-negative fractions (train, val, test), got {split!r}"
        )
    if abs(sum(fr) - 1.0) > 1e-6 or fr[0] <= 0:
        raise ValueError(
            f"split: fractions must sum to 1 with a positive train part, got {split!r}"
        )
    return fr[0], fr[1], fr[2]


def strata_of(y: np.ndarray, sens: np.ndarray) -> np.ndarray:
    """One stratum id per row: the combination of label and all sensitive groups."""
    key = np.column_stack([y.astype(np.int64), sens])
    _, inverse = np.unique(key, axis=0, return_inverse=True)
    return inverse.reshape(-1)


def _apportion(weights: np.ndarray, total: int) -> np.ndarray:
    """``total`` shared in proportion to ``weights`` (zeros when there is nothing to share)."""
    if total <= 0 or weights.sum() == 0:
        return np.zeros_like(weights, dtype=np.int64)
    return largest_remainder(weights * (total / weights.sum()), total)


def stratified_subsample(strata: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of a stratified sample of ``max_rows`` rows (every stratum kept if possible)."""
    sizes = np.bincount(strata)
    present = sizes > 0
    if max_rows >= int(present.sum()):
        base = present.astype(np.int64)
        counts = base + _apportion((sizes - base).astype(np.float64), max_rows - base.sum())
    else:
        counts = _apportion(sizes.astype(np.float64), max_rows)
    chosen = [
        rng.permutation(np.flatnonzero(strata == s))[:c]
        for s, c in enumerate(counts.tolist())
        if c > 0
    ]
    return np.sort(np.concatenate(chosen))


def stratified_split(
    strata: np.ndarray, fractions: tuple[float, float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (into ``strata``) of the train/val/test parts, each shuffled.

    Every stratum is cut in the given proportions (rounded, train first), so label and group
    rates agree across the parts and every group of the data is in the training part.
    """
    parts: list[list[np.ndarray]] = [[], [], []]
    cum = np.cumsum(fractions)
    for s in range(int(strata.max()) + 1):
        idx = rng.permutation(np.flatnonzero(strata == s))
        n = idx.size
        if n == 0:
            continue
        cuts = np.floor(cum * n + 0.5).astype(np.int64)
        cuts[0] = max(cuts[0], 1)
        cuts[1] = max(cuts[1], cuts[0])
        cuts[2] = n
        parts[0].append(idx[: cuts[0]])
        parts[1].append(idx[cuts[0] : cuts[1]])
        parts[2].append(idx[cuts[1] :])
    out = []
    for p in parts:
        joined = np.concatenate(p) if p else np.empty(0, dtype=np.int64)
        out.append(rng.permutation(joined))
    return out[0], out[1], out[2]
