"""Largest-remainder apportionment, shared by the dataset splits and the stratified sampler."""

from __future__ import annotations

import numpy as np

__all__ = ["largest_remainder"]


def largest_remainder(quotas: np.ndarray, total: int) -> np.ndarray:
    """Integers summing to ``total``, each the floor or the ceiling of its quota (Hamilton's
    method): the floors, plus one for the largest remainders, ties to the first.

    ``quotas`` should sum to ``total`` (then, with rounding errors below one, the floors never
    exceed it). Quotas summing above it lose the excess from the smallest remainders among
    the positive counts (ties to the last), so no count goes below zero.
    """
    quotas = np.asarray(quotas, dtype=np.float64)
    if not np.isfinite(quotas).all() or (quotas < 0).any():
        raise ValueError(f"quotas: expected finite non-negative numbers, got {quotas.tolist()}")
    if total < 0:
        raise ValueError(f"total: expected a non-negative integer, got {total}")
    counts = np.floor(quotas).astype(np.int64)
    short = total - int(counts.sum())
    order = np.argsort(-(quotas - counts), kind="stable")
    if short > 0:
        counts[order[:short]] += 1
    elif short < 0:
        takers = [i for i in order[::-1] if counts[i] > 0][:-short]
        counts[takers] -= 1
    return counts
