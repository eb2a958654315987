"""StratifiedBatchSampler: proportions, coverage, reshuffling (property-based), loaders."""

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


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 120), min_size=1, max_size=5),
       batch=st.integers(2, 64), seed=st.integers(0, 10))
def test_proportions_and_coverage(sizes, batch, seed):
    groups = np.repeat(np.arange(len(sizes)), sizes)
    np.random.default_rng(seed).shuffle(groups)
    sampler = StratifiedBatchSampler(groups, batch, seed=seed, small_groups="allow")
    batches = list(sampler)
    n, T = len(groups), len(sampler)
    assert len(batches) == T == -(-n // batch)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(n))  # every index once per epoch
    sizes_b = [len(b) for b in batches]
    assert max(sizes_b) - min(sizes_b) <= 1 and max(sizes_b) <= batch
    for b in batches:
        counts = np.bincount(groups[b], minlength=len(sizes))
        for g, size in enumerate(sizes):
            # within one sample of the group's share of the epoch
            assert abs(counts[g] - size / T) < 1.0


def test_oversampling_puts_small_groups_in_every_batch():
    groups = np.array([0] * 95 + [1] * 3)
    sampler = StratifiedBatchSampler(groups, 10, seed=0)
    batches = list(sampler)
    assert all((groups[b] == 1).any() for b in batches)
    flat = np.concatenate(batches)
    assert set(flat[groups[flat] == 0].tolist()) == set(range(95))
    assert len(flat[groups[flat] == 0]) == 95  # the large group: once each


def test_small_group_error_names_the_group():
    with pytest.raises(ValueError, match=r"group 7 has 2 rows, fewer than the 10 batches"):
        StratifiedBatchSampler(np.array([3] * 98 + [7] * 2), 10, small_groups="error")


def test_reshuffles_every_epoch_and_is_seeded():
    groups = np.arange(200) % 3
    a = StratifiedBatchSampler(groups, 16, seed=1)
    e1, e2 = list(a), list(a)
    assert e1 != e2
    assert list(StratifiedBatchSampler(groups, 16, seed=1)) == e1


def test_intersections_of_two_attributes():
    attrs = np.stack([np.arange(400) % 2, (np.arange(400) // 2) % 4], 1)
    batches = list(StratifiedBatchSampler(attrs, 40, seed=0))
    for b in batches:
        combos = {tuple(r) for r in attrs[b].tolist()}
        assert len(combos) == 8


def test_seed_000_helpers():
    X = np.random.RandomState(0).randn(1000, 5).astype(np.float32)
    X[:, 0] = (np.arange(1000) % 10 < 3).astype(np.float32)
    y = (np.arange(1000) % 2).astype(np.float32)
    train, val = create_stratified_dataloaders(X[:800], y[:800], X[800:], y[800:],
                                               protected_attr_idx=0, batch_size_train=100,
                                               batch_size_eval=100)
    shares = [float(x[:, 0].mean()) for x, _ in train]
    assert len(shares) == 8 and all(abs(s - 0.3) <= 0.011 for s in shares)
    assert sum(len(x) for x, _ in val) == 200
    tr, va, te = create_dataloaders(X[:600], y[:600], X[600:800], y[600:800], X[800:], y[800:],
                                    batch_size_train=64, batch_size_eval=16)
    assert sum(len(x) for x, _ in te) == 200 and isinstance(next(iter(tr))[0], torch.Tensor)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 120), min_size=1, max_size=5),
       batch=st.integers(2, 64), seed=st.integers(0, 10))
def test_oversampling_policy(sizes, batch, seed):
    groups = np.repeat(np.arange(len(sizes)), sizes)
    sampler = StratifiedBatchSampler(groups, batch, seed=seed)
    T = len(sampler)
    batches = list(sampler)
    flat = np.concatenate(batches)
    for g, size in enumerate(sizes):
        mine = flat[groups[flat] == g]
        assert set(mine.tolist()) == set(np.flatnonzero(groups == g).tolist())  # all, >= once
        if size >= T:
            assert len(mine) == size  # large groups: exactly once
        else:
            assert len(mine) == T and all((groups[b] == g).any() for b in batches)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 120), min_size=1, max_size=5),
       batch=st.integers(2, 64), seed=st.integers(0, 10))
def test_drop_last_gives_full_batches_with_the_proportions(sizes, batch, seed):
    groups = np.repeat(np.arange(len(sizes)), sizes)
    n = len(groups)
    if n < batch:
        with pytest.raises(ValueError, match="drop_last=True needs at least one full batch"):
            StratifiedBatchSampler(groups, batch, drop_last=True)
        return
    sampler = StratifiedBatchSampler(groups, batch, seed=seed, small_groups="allow",
                                     drop_last=True)
    batches = list(sampler)
    assert len(batches) == n // batch
    flat = np.concatenate(batches)
    assert len(set(flat.tolist())) == len(flat)  # no row twice
    for b in batches:
        assert len(b) == batch
        counts = np.bincount(groups[b], minlength=len(sizes))
        share = np.array(sizes) * batch / n
        assert np.all(counts >= np.floor(share)) and np.all(counts <= np.ceil(share))


def test_single_member_group_is_oversampled():
    groups = np.array([0] * 50 + [1])
    batches = list(StratifiedBatchSampler(groups, 10, seed=0))
    assert all(50 in b for b in batches) and len(batches) == 6


def test_set_epoch_replays_an_epoch():
    groups = np.arange(300) % 4
    a = StratifiedBatchSampler(groups, 32, seed=3)
    first, second = list(a), list(a)
    b = StratifiedBatchSampler(groups, 32, seed=3)
    b.set_epoch(1)
    assert list(b) == second and first != second
    with pytest.raises(ValueError, match="epoch: expected an int >= 0"):
        b.set_epoch(-1)


def test_argument_checks():
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        StratifiedBatchSampler([0, 1], 0)
    with pytest.raises(ValueError, match="small_groups: expected one of"):
        StratifiedBatchSampler([0, 1], 1, small_groups="drop")
    with pytest.raises(ValueError, match=r"groups: expected shape \(N,\) or \(N, attributes\)"):
        StratifiedBatchSampler(np.zeros((2, 2, 2)), 1)


def test_seed_000_helpers_with_two_protected_columns():
    X = np.random.RandomState(1).randn(600, 4).astype(np.float32)
    X[:, 0] = np.arange(600) % 2
    X[:, 1] = (np.arange(600) // 2) % 3
    train, val = create_stratified_dataloaders(X[:480], np.zeros(480), X[480:], np.zeros(120),
                                               protected_attr_idx=[0, 1], batch_size_train=60,
                                               batch_size_eval=40, drop_last=True)
    for x, _ in train:
        assert len(x) == 60 and len({(a, b) for a, b in x[:, :2].tolist()}) == 6
    assert sum(len(x) for x, _ in val) == 120
    with pytest.raises(ValueError, match="protected_attr_idx: expected column indices"):
        create_stratified_dataloaders(X, X[:, 0], X, X[:, 0], protected_attr_idx=9)
