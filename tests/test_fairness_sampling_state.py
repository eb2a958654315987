"""StratifiedBatchSampler state and the loader helpers' checks (bad-input D12, D15): clear
messages, errors that change nothing, a resumed run that sees the same batches."""

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from humancompatible_train.fairness import (
    StratifiedBatchSampler,
    create_dataloaders,
    create_stratified_dataloaders,
)


def test_missing_group_values_are_named():
    with pytest.raises(ValueError, match=r"groups: expected a group value for every row, got "
                                         r"None at rows \[0, 2\]"):
        StratifiedBatchSampler([None, 1, None, 2], 2)
    with pytest.raises(ValueError, match=r"got nan at rows \[1\]"):
        StratifiedBatchSampler(np.array([1.0, np.nan, 2.0]), 2)
    with pytest.raises(ValueError, match=r"got \[1, None\] at rows \[0\]"):
        StratifiedBatchSampler([[1, None], [2, 3]], 2)
    with pytest.raises(ValueError, match=r"groups: expected values of one comparable kind"):
        StratifiedBatchSampler(np.array([1, "a", 2.5], dtype=object), 2)


def test_arguments_are_checked_with_their_names():
    for kwargs, message in (
        (dict(batch_size=0), r"batch_size: expected a positive int, got 0"),
        (dict(batch_size=2.5), r"batch_size: expected a positive int, got 2.5"),
        (dict(seed=-1), r"seed: expected an int >= 0, got -1"),
        (dict(drop_last="no"), r"drop_last: expected True or False, got 'no'"),
        (dict(small_groups="drop"), r"small_groups: expected one of"),
    ):
        with pytest.raises(ValueError, match=message):
            StratifiedBatchSampler(**{"groups": [0, 1, 0, 1], "batch_size": 2, **kwargs})


def test_state_dict_resumes_the_same_batches(tmp_path):
    groups = np.arange(300) % 4
    whole = StratifiedBatchSampler(groups, 32, seed=3)
    epochs = [list(whole) for _ in range(4)]
    first = StratifiedBatchSampler(groups, 32, seed=3)
    list(first), list(first)
    torch.save(first.state_dict(), tmp_path / "s.pt")
    resumed = StratifiedBatchSampler(groups, 32, seed=99)  # the saved seed wins
    resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert [list(resumed), list(resumed)] == epochs[2:]


BAD_STATES = [
    ({"epoch": -1, "seed": 0, "num_rows": 100, "num_batches": 10},
     r"state\['epoch'\]: expected an int >= 0, got -1"),
    ({"epoch": 1.5, "seed": 0, "num_rows": 100, "num_batches": 10},
     r"state\['epoch'\]: expected an int >= 0, got 1.5"),
    ({"epoch": 1, "seed": "0", "num_rows": 100, "num_batches": 10},
     r"state\['seed'\]: expected an int >= 0, got '0'"),
    ({"epoch": 1, "seed": 0, "num_rows": 99, "num_batches": 10},
     r"state\['num_rows'\]: expected 100 \(this sampler's\), got 99"),
    ({"epoch": 1, "seed": 0, "num_rows": 100, "num_batches": 9},
     r"state\['num_batches'\]: expected 10 \(this sampler's\), got 9"),
    ({"epoch": 1}, r"state: expected a dict with the keys"),
    ([1, 2], r"state: expected a dict with the keys"),
]


@pytest.mark.parametrize("state,message", BAD_STATES)
def test_load_state_dict_refuses_bad_states_and_changes_nothing(state, message):
    sampler = StratifiedBatchSampler(np.arange(100) % 3, 10, seed=5)
    list(sampler)
    before = sampler.state_dict()
    with pytest.raises(ValueError, match=message):
        sampler.load_state_dict(state)
    assert sampler.state_dict() == before


CALLS = st.lists(st.one_of(
    st.tuples(st.just("epoch"), st.one_of(st.integers(-3, 5), st.floats(0, 3),
                                          st.sampled_from(["1", None, True]))),
    st.tuples(st.just("load"), st.one_of(st.integers(-2, 4), st.sampled_from(["x", 2.0]))),
    st.tuples(st.just("iterate"), st.integers(0, 3)),
), max_size=10)


@settings(max_examples=40, deadline=None)
@given(calls=CALLS)
def test_random_calls_errors_change_nothing_and_batches_follow_the_epoch(calls):
    groups = np.arange(60) % 3
    sampler = StratifiedBatchSampler(groups, 8, seed=2)
    for kind, arg in calls:
        before = sampler.state_dict()
        valid = isinstance(arg, int) and not isinstance(arg, bool) and arg >= 0
        if kind == "iterate":
            it = iter(sampler)
            taken = [next(it) for _ in range(arg)]
            if arg:  # a pass started: it used the shuffle of its epoch
                fresh = StratifiedBatchSampler(groups, 8, seed=2)
                fresh.set_epoch(before["epoch"])
                assert list(fresh)[:arg] == taken
            continue
        call, value = ((sampler.set_epoch, arg) if kind == "epoch" else
                       (sampler.load_state_dict, dict(before, epoch=arg)))
        if valid:
            call(value)
            assert sampler.state_dict()["epoch"] == arg
        else:
            with pytest.raises(ValueError):
                call(value)
            assert sampler.state_dict() == before


def test_stratified_loaders_refuse_nan_non_integer_groups_and_mismatched_lengths():
    X = np.zeros((20, 3), dtype=np.float32)
    X[:, 0] = np.arange(20) % 2
    y = np.zeros(20)
    with pytest.raises(ValueError, match=r"y_train: expected 20 labels, shape \(20,\) or "
                                         r"\(20, 1\) \(one per row of X_train\), got shape "
                                         r"\(19,\)"):
        create_stratified_dataloaders(X, y[:19], X, y)
    with pytest.raises(ValueError, match=r"y_val: expected 20 labels"):
        create_stratified_dataloaders(X, y, X, y[:5])
    bad = X.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"X_train\[:, 0\] \(protected_attr_idx\): expected "
                                         r"whole-number group ids, got nan at row 3"):
        create_stratified_dataloaders(bad, y, X, y)
    bad[3, 0] = 0.4
    with pytest.raises(ValueError, match=r"expected whole-number group ids, got 0.4 at row 3"):
        create_stratified_dataloaders(bad, y, X, y)
    with pytest.raises(ValueError, match=r"X_val: expected 3 columns \(as X_train\), got 2"):
        create_stratified_dataloaders(X, y, X[:, :2], y)
    with pytest.raises(ValueError, match=r"X_train: expected a numeric array, got list"):
        create_stratified_dataloaders([["a", "b"]], [0], X, y)
    with pytest.raises(ValueError, match=r"batch_size_eval: expected a positive int, got 0"):
        create_stratified_dataloaders(X, y, X, y, batch_size_eval=0)


def test_plain_loaders_check_lengths_and_sizes():
    X, y = np.zeros((10, 2)), np.zeros(10)
    with pytest.raises(ValueError, match=r"y_test: expected 10 labels"):
        create_dataloaders(X, y, X, y, X, y[:4])
    with pytest.raises(ValueError, match=r"batch_size_train: expected a positive int, got -1"):
        create_dataloaders(X, y, X, y, X, y, batch_size_train=-1)
    with pytest.raises(ValueError, match=r"seed: expected an int >= 0, got -1"):
        create_dataloaders(X, y, X, y, X, y, seed=-1)
