"""The fused FairnessConstraint equals the implementation it replaced (kept below as the
reference) and fairret's own statistics, in values and gradients, on random inputs: several
statistics (stacked TPR+FPR too), hard and soft memberships, intersections, all four modes."""

import hypothesis.strategies as st
import pytest
import torch
from fairret.statistic import (
    Accuracy,
    FalsePositiveRate,
    FScore,
    PositivePredictiveValue,
    PositiveRate,
    StackedLinearFractionalStatistic,
    TruePositiveRate,
)
from hypothesis import given, settings

from humancompatible_train.fairness import FairnessConstraint

MODES = ("pairwise", "overall", "max_gap", "abs_diff")
STATS = {
    "PR": PositiveRate,
    "TPR": TruePositiveRate,
    "FPR": FalsePositiveRate,
    "PPV": PositivePredictiveValue,
    "ACC": Accuracy,
    "F": FScore,
    "TPR+FPR": lambda: StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate()),
}


# ---------------------------------------------------------------- the replaced implementation
def _ratio(num, den):
    defined = den > 0
    safe = torch.where(defined, den, torch.ones_like(den))
    return torch.where(defined, num / safe, torch.zeros_like(num)), defined


def reference(fc, pred, onehot, labels):
    """FairnessConstraint as it was before the fused computation (fairret's num/denom per
    statistic, group and overall; index gathers for the rows). Returns (values, active,
    statistics, defined, overall)."""
    prob = (torch.sigmoid(pred) if fc.pred == "logits" else pred).reshape(-1, 1)
    y = None if labels is None else labels.reshape(-1, 1).to(prob.dtype)
    nums, dens, onums, odens = [], [], [], []
    for part, takes in zip(fc.parts, fc._takes):
        args = () if y is None or takes is False else (y,)
        nums.append(part.num(prob, onehot, *args))
        dens.append(part.denom(prob, onehot, *args))
        onums.append(part.num(prob, None, *args).reshape(()))
        odens.append(part.denom(prob, None, *args).reshape(()))
    stats, defined = _ratio(torch.stack(nums), torch.stack(dens))
    overall, odef = _ratio(torch.stack(onums), torch.stack(odens))
    eps = fc.eps
    if fc.mode == "max_gap":
        hi = torch.where(defined, stats, torch.full_like(stats, -torch.inf)).amax(-1)
        lo = torch.where(defined, stats, torch.full_like(stats, torch.inf)).amin(-1)
        ok = defined.sum(-1) >= 2
        gap = torch.where(ok, hi - lo, torch.full_like(hi, -torch.inf)).amax()
        active = ok.any().reshape(1)
        values = torch.where(active, gap - eps, torch.zeros_like(gap)).reshape(1)
    else:
        rows = fc._rows[1]
        S = fc.groups.S
        k = torch.tensor([r[0] for r in rows])
        g = torch.tensor([S if r[1] < 0 else r[1] for r in rows])
        h = torch.tensor([S if r[2] < 0 else r[2] for r in rows])
        ext = torch.cat([stats, overall.unsqueeze(-1)], -1)
        ext_def = torch.cat([defined, odef.unsqueeze(-1)], -1)
        diff = ext[k, g] - ext[k, h]
        active = ext_def[k, g] & ext_def[k, h]
        if fc.mode == "abs_diff":
            diff = diff.abs()
        values = torch.where(active, diff - eps, torch.zeros_like(diff))
    return values, active, stats, defined, overall


# ---------------------------------------------------------------- random inputs
def batch(seed, n, groups, membership, dtype=torch.float64):
    """(logits, sens as the constraint takes it, one-hot/soft (N, S) for the reference,
    labels) with every group present and both labels in every group."""
    gen = torch.Generator().manual_seed(seed)
    S = 1
    for size in groups:
        S *= size
    perm = torch.randperm(n, generator=gen)
    ids = (torch.arange(n) % S)[perm]  # every group, each with both labels (n >= 2 S)
    y = ((torch.arange(n) // S) % 2)[perm]
    logit = torch.randn(n, generator=gen, dtype=dtype) * 2
    onehot = torch.nn.functional.one_hot(ids, S).to(dtype)
    if membership == "ids":
        if len(groups) == 1:
            sens = ids
        else:  # one id column per attribute
            cols, rest = [], ids.clone()
            for size in reversed(groups):
                cols.append(rest % size)
                rest = rest // size
            sens = torch.stack(cols[::-1], 1)
    elif membership == "onehot":
        sens = onehot
    else:  # soft weights in [0, 1] summing to at most 1 per row (2 x 2 intersections
        # read a row summing to more than 1.5 as side-by-side blocks)
        soft = torch.rand(n, S, generator=gen, dtype=dtype) * 0.5 / S + 0.5 * onehot
        sens = onehot = soft
    return logit, sens, onehot, y


def group_spec(groups):
    if len(groups) == 1:
        return [f"g{i}" for i in range(groups[0])]
    return {f"a{j}": [f"v{i}" for i in range(size)] for j, size in enumerate(groups)}


CASES = [(stat, mode, groups, membership)
         for stat in STATS for mode in MODES
         for groups in ((2,), (3,), (2, 2))
         for membership in ("ids", "onehot", "soft")
         if not (mode == "abs_diff" and groups != (2,))]


@pytest.mark.parametrize("stat,mode,groups,membership", CASES)
def test_values_and_gradients_equal_the_replaced_implementation(stat, mode, groups,
                                                                  membership):
    logit, sens, onehot, y = batch(len(CASES) % 97 + len(stat), 48, groups, membership)
    fc = FairnessConstraint(STATS[stat](), group_spec(groups), mode=mode, eps=0.03)
    labels = y if fc.needs_labels else None
    z1 = logit.clone().requires_grad_()
    z2 = logit.clone().requires_grad_()
    new = fc(z1, sens, labels)
    values, active, stats, defined, overall = reference(fc, z2, onehot, labels)
    torch.testing.assert_close(new.values, values)
    assert torch.equal(new.active, active)
    torch.testing.assert_close(new.statistics[defined], stats[defined])
    assert torch.equal(new.defined, defined)
    torch.testing.assert_close(new.overall, overall)
    w = torch.linspace(0.5, 1.5, fc.m, dtype=logit.dtype)
    (g1,) = torch.autograd.grad((new.values * w).sum(), z1)
    (g2,) = torch.autograd.grad((values * w).sum(), z2)
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("stat", list(STATS))
def test_statistics_equal_fairret_on_random_inputs(stat):
    for seed, membership in ((1, "onehot"), (2, "soft")):
        logit, sens, onehot, y = batch(seed, 60, (3,), membership)
        statistic = STATS[stat]()
        fc = FairnessConstraint(statistic, 3, mode="overall", eps=0.0)
        args = (y.double().view(-1, 1),) if fc.needs_labels else ()
        p = torch.sigmoid(logit).view(-1, 1)
        rows = fc(logit, sens, y if fc.needs_labels else None)
        expected = statistic(p, onehot, *args).reshape(rows.statistics.shape)
        torch.testing.assert_close(rows.statistics, expected)
        torch.testing.assert_close(rows.overall,
                                   statistic.overall_statistic(p, *args).reshape(-1))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(6, 40), mode=st.sampled_from(MODES),
       stat=st.sampled_from(["PR", "TPR+FPR", "PPV"]), drop=st.integers(0, 2))
def test_absent_groups_match_the_replaced_implementation(seed, n, mode, stat, drop):
    """Batches where some group is absent (or lacks positive labels): the same active rows
    and values; the fused statistics are NaN where the replaced ones were 0."""
    gen = torch.Generator().manual_seed(seed)
    S = 3
    ids = torch.randint(0, S, (n,), generator=gen)
    ids[ids == drop] = (drop + 1) % S  # group `drop` absent
    y = torch.randint(0, 2, (n,), generator=gen)
    logit = torch.randn(n, generator=gen, dtype=torch.float64)
    fc = FairnessConstraint(STATS[stat](), S, mode=mode if mode != "abs_diff" else "pairwise",
                            eps=0.02)
    labels = y if fc.needs_labels else None
    z1, z2 = logit.clone().requires_grad_(), logit.clone().requires_grad_()
    new = fc(z1, ids, labels)
    onehot = torch.nn.functional.one_hot(ids, S).double()
    values, active, stats, defined, _ = reference(fc, z2, onehot, labels)
    assert torch.equal(new.active, active)
    torch.testing.assert_close(new.values, values)
    assert torch.equal(new.defined, defined)
    assert torch.isnan(new.statistics[~defined]).all()
    if new.values.requires_grad:
        (g1,) = torch.autograd.grad(new.values.sum(), z1, allow_unused=True)
        (g2,) = torch.autograd.grad(values.sum(), z2, allow_unused=True)
        torch.testing.assert_close(g1, g2)
        assert torch.isfinite(g1).all()


def test_decisions_equal_the_replaced_implementation_on_thresholded_predictions():
    logit, sens, onehot, y = batch(7, 50, (3,), "onehot")
    fc = FairnessConstraint("TruePositiveRate+FalsePositiveRate", 3, mode="pairwise",
                            threshold=0.4)
    decided = (torch.sigmoid(logit) >= 0.4).double()
    ref = FairnessConstraint(fc.statistic, 3, mode="pairwise", pred="probabilities")
    values, active, *_ = reference(ref, decided, onehot, y)
    got = fc.decisions(logit, sens, y)
    torch.testing.assert_close(got.values, values)
    assert torch.equal(got.active, active) and not got.values.requires_grad


def test_float32_matches_float64_and_keeps_its_dtype():
    logit, sens, _, y = batch(3, 64, (2,), "onehot")
    fc = FairnessConstraint("TruePositiveRate+FalsePositiveRate", 2, mode="abs_diff")
    r64 = fc(logit, sens, y)
    r32 = fc(logit.float(), sens.float(), y)
    assert r32.values.dtype == torch.float32
    torch.testing.assert_close(r32.values.double(), r64.values, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_column_and_flat_predictions_agree_with_gradients(mode):
    logit, sens, _, _ = batch(11, 40, (2,), "onehot")
    fc = FairnessConstraint("PositiveRate", 2, mode=mode, eps=0.01)
    flat = logit.clone().requires_grad_()
    column = logit.clone().view(-1, 1).requires_grad_()
    a, b = fc(flat, sens), fc(column, sens)
    torch.testing.assert_close(a.values, b.values)
    assert a.values.shape == b.values.shape == (fc.m,)
    torch.testing.assert_close(a.statistics, b.statistics)
    torch.testing.assert_close(a.overall, b.overall)
    (ga,) = torch.autograd.grad(a.values.sum(), flat)
    (gb,) = torch.autograd.grad(b.values.sum(), column)
    torch.testing.assert_close(ga, gb.view(-1))
