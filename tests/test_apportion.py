"""Largest-remainder apportionment (shared by the dataset splits and the batch sampler)."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from humancompatible_train._apportion import largest_remainder


def test_hand_worked_ties_go_to_the_first():
    # floors (1, 1, 1), one seat left, remainders (0.5, 0.5, 0): the first of the tie.
    assert largest_remainder(np.array([1.5, 1.5, 1.0]), 4).tolist() == [2, 1, 1]
    assert largest_remainder(np.array([0.2, 0.7, 2.1]), 3).tolist() == [0, 1, 2]


def test_floors_above_the_total_give_back_from_the_smallest_positive_remainder():
    # Quotas summing above the total (the floors sum to 4 for a total of 3): the excess comes
    # off the smallest remainders, ties to the last, never off a zero count.
    assert largest_remainder(np.array([3.0, 0.0, 1.0]), 3).tolist() == [3, 0, 0]
    assert largest_remainder(np.array([0.0, 2.0, 2.0]), 3).tolist() == [0, 2, 1]
    assert largest_remainder(np.array([1.2, 0.0, 2.9]), 2).tolist() == [0, 0, 2]


@pytest.mark.parametrize("quotas", [[1.0, np.inf], [np.nan, 1.0], [2.0, -0.5]])
def test_non_finite_or_negative_quotas_are_refused(quotas):
    with pytest.raises(ValueError, match="quotas: expected finite non-negative"):
        largest_remainder(np.array(quotas), 2)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0.0, 1e3, allow_subnormal=False), min_size=1, max_size=12),
       st.integers(1, 10_000))
@example(weights=[2.2250738585072014e-308], total=4)  # all tiny: total / sum overflowed once
def test_counts_sum_to_the_total_each_the_floor_or_the_ceiling(weights, total):
    w = np.array(weights)
    if w.sum() == 0:
        w = np.ones_like(w)
    # Normalised first: ``total / w.sum()`` overflows when the weights are all tiny.
    quotas = w / w.sum() * total
    counts = largest_remainder(quotas, total)
    assert counts.sum() == total
    assert (counts >= 0).all()
    # Within one of the quota (rounding of the quotas themselves aside).
    assert (np.abs(counts - quotas) < 1.0 + 1e-9 * total).all()
