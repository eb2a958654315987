"""The two-group fast path of FairnessConstraint (positive rate, or any statistic of constant
coefficients without labels) equals the general path and the group means computed by hand,
in values, rows' activity, statistics and gradients, on every route: the read on CPU with
both groups present, the read that finds a group absent, no read (``validate=False``), and
``validate=True``; with NaN and infinite predictions (never an inactive zero) and NaN
memberships; ids, one-hot and soft memberships; flat and column predictions."""

import math

import hypothesis.strategies as st
import pytest
import torch
from fairret.statistic import LinearFractionalStatistic
from hypothesis import given, settings

from humancompatible_train.fairness import FairnessConstraint

NAN, INF = float("nan"), float("inf")


class HalfNegativeRate(LinearFractionalStatistic):
    """(1 - p) / 2 per row over 2 per row: a fast-path statistic with a != 0 and c != 1."""

    def num_intercept(self) -> float:
        return 1.0

    def num_slope(self) -> float:
        return -1.0

    def denom_intercept(self) -> float:
        return 2.0

    def denom_slope(self) -> float:
        return 0.0


def general(fc):
    """The same constraint with its fast path switched off."""
    twin = FairnessConstraint(fc.statistic, 2, mode=fc.mode, eps=fc.eps, pred=fc.pred,
                              inactive=fc.inactive, validate=fc.validate)
    twin._fast = None
    return twin


def make_batch(seed, n, layout, absent, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 2, (n,), generator=gen)
    if absent is not None:
        ids = torch.full((n,), 1 - absent)
    onehot = torch.nn.functional.one_hot(ids, 2).to(dtype)
    if layout == "ids":
        sens, weights = ids, onehot
    elif layout == "onehot":
        sens = weights = onehot
    else:  # soft: weights in (0, 1] on the own group, 0 elsewhere (absence stays absence)
        sens = weights = onehot * (0.2 + 0.8 * torch.rand(n, 1, generator=gen, dtype=dtype))
    return torch.randn(n, generator=gen, dtype=dtype) * 2, sens, weights


def by_hand(fc, logit, weights):
    """The rows from the weighted group means, in plain Python (both groups present)."""
    a, b, c, _ = fc._fast
    p = [1 / (1 + math.exp(-z)) for z in logit.tolist()] if fc.pred == "logits" \
        else logit.tolist()
    stats = []
    for g in range(2):
        w = weights[:, g].tolist()
        stats.append(sum(wi * (a + b * pi) for wi, pi in zip(w, p)) / sum(wi * c for wi in w))
    gap = stats[0] - stats[1]
    rows = [abs(gap)] if fc.mode == "abs_diff" else [gap, -gap]
    return [r - fc.eps for r in rows], stats


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 24),
       layout=st.sampled_from(["ids", "onehot", "soft"]),
       absent=st.sampled_from([None, 0, 1]), mode=st.sampled_from(["abs_diff", "pairwise"]),
       validate=st.sampled_from([None, False, True]), inactive=st.sampled_from(["zero", "nan"]),
       stat=st.sampled_from(["PositiveRate", "HalfNegativeRate"]),
       pred=st.sampled_from(["logits", "probabilities"]),
       bad=st.sampled_from([None, NAN, INF, -INF]), column=st.booleans())
def test_fast_path_equals_the_general_path_and_the_group_means(
        seed, n, layout, absent, mode, validate, inactive, stat, pred, bad, column):
    statistic = HalfNegativeRate() if stat == "HalfNegativeRate" else stat
    fc = FairnessConstraint(statistic, 2, mode=mode, eps=0.03, pred=pred, inactive=inactive,
                            validate=validate)
    assert fc._fast is not None
    logit, sens, weights = make_batch(seed, n, layout, absent)
    if pred == "probabilities":
        logit = torch.sigmoid(logit)
    if bad is not None and n:
        if pred == "probabilities" and bad != bad:  # NaN probabilities: out of range
            logit[seed % n] = bad
        elif pred == "logits":
            logit[seed % n] = bad
    if column:
        logit = logit.view(-1, 1)
    z1, z2 = logit.clone().requires_grad_(), logit.clone().requires_grad_()
    nonfinite = not bool(torch.isfinite(logit).all())
    if nonfinite and validate is True:
        for c in (fc, general(fc)):
            with pytest.raises(ValueError, match="pred: expected"):
                c(z1, sens)
        return
    fast, slow = fc(z1, sens), general(fc)(z2, sens)
    torch.testing.assert_close(fast.values, slow.values, equal_nan=True)
    assert torch.equal(fast.active, slow.active)
    assert torch.equal(fast.absent, slow.absent)
    torch.testing.assert_close(fast.statistics, slow.statistics, equal_nan=True)
    torch.testing.assert_close(fast.overall, slow.overall, equal_nan=True)
    torch.testing.assert_close(fast.largest_gap(), slow.largest_gap(), equal_nan=True)
    both = n > 0 and absent is None and bool((weights.sum(0) > 0).all())
    # NaN is never fair: a non-finite prediction makes every row of present groups NaN and
    # active; an absent group makes its rows inactive (0 or NaN as asked), never active.
    assert bool(fast.active.all()) == both
    if nonfinite and both:
        assert fast.values.isnan().all()
    if not both:
        fill = fast.values.isnan() if inactive == "nan" else fast.values == 0
        assert fill.all()
    if both and not nonfinite:
        rows, stats = by_hand(fc, logit.reshape(-1), weights)
        torch.testing.assert_close(fast.values, torch.tensor(rows, dtype=logit.dtype))
        torch.testing.assert_close(fast.statistics.reshape(-1),
                                   torch.tensor(stats, dtype=logit.dtype))
    if fast.values.requires_grad:
        w = torch.linspace(0.5, 1.5, fc.m, dtype=logit.dtype)
        (g1,) = torch.autograd.grad((fast.values * w).nansum(), z1, allow_unused=True)
        (g2,) = torch.autograd.grad((slow.values * w).nansum(), z2, allow_unused=True)
        torch.testing.assert_close(g1, g2, equal_nan=True)


@pytest.mark.parametrize("validate", [None, True, False])
def test_the_fast_path_answers_two_group_positive_rates(validate, monkeypatch):
    """The general path is not consulted for valid two-group batches, on any route."""
    fc = FairnessConstraint("PositiveRate", 2, mode="abs_diff", validate=validate)

    def refuse(*args, **kwargs):
        raise AssertionError("the general path ran")

    monkeypatch.setattr(fc, "_inputs", refuse)
    logit = torch.tensor([0.3, -1.0, 2.0, 0.5])
    for sens in (torch.tensor([0, 1, 1, 0]), torch.tensor([1, 1, 1, 1]),
                 torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])):
        rows = fc(logit, sens)
        assert rows.values.shape == (1,)


def test_out_of_range_memberships_raise_and_nan_memberships_give_active_nan_rows():
    fc = FairnessConstraint("PositiveRate", 2, mode="pairwise")
    for sens in (torch.tensor([0, 2, 1]), torch.tensor([[1.0, 0.0], [1.5, 0.0], [0.0, 1.0]])):
        with pytest.raises(ValueError, match="sens"):
            fc(torch.zeros(3), sens)
    rows = fc(torch.zeros(3), torch.tensor([[1.0, 0.0], [NAN, 0.0], [0.0, 1.0]]))
    assert rows.values.isnan().all() and rows.active.all()
    assert rows.nonfinite_names == rows.names


def test_absent_group_read_on_cpu_is_inactive_and_reads_its_activity_lazily():
    fc = FairnessConstraint("PositiveRate", ["a", "b"], mode="pairwise", inactive="nan")
    rows = fc(torch.tensor([0.5, -0.5, 1.0]), torch.tensor([1, 1, 1]))
    assert rows.values.isnan().all() and not rows.active.any()
    assert rows.absent.tolist() == [[True, False]]
    assert rows.inactive_names == rows.names and rows.nonfinite_names == []
    assert math.isnan(float(rows.largest_gap()))
    rows = fc(torch.tensor([0.5, -0.5, 1.0]), torch.tensor([1, 0, 1]))
    assert rows.active.all() and rows.inactive_names == [] and not rows.absent.any()
