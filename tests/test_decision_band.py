"""Tests of decision_band_project against brute force written in plain Python."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from humancompatible_train._projection import decision_band_project

THR = 0.5
BELOW = math.nextafter(THR, -math.inf)
TOL = 1e-9


def band_violation(rates: list[float], eps: float) -> float:
    """min over a of sum_s dist(r_s, [a, a + eps]); convex piecewise linear, kinks at r, r - eps."""
    if not rates:
        return 0.0
    best = math.inf
    for a in rates + [r - eps for r in rates]:
        best = min(best, sum(max(a - r, 0.0) + max(r - a - eps, 0.0) for r in rates))
    return best


def flip_cost(x: float) -> float:
    return (x - BELOW) ** 2 if x >= THR else (THR - x) ** 2


def class_cells(z, key, c, S, pc, pp):
    """Per defined group of class c: (items, prior count, prior positives)."""
    out = []
    for s in range(S):
        items = [x for x, k in zip(z, key) if k == c * S + s]
        if pc[c][s] + len(items) > 0:
            out.append((items, pc[c][s], pp[c][s]))
    return out


def brute_by_counts(z, key, C, S, eps, pc, pp):
    """Per class lexicographic min of (violation, cost) over every vector of counts k_s."""
    result = []
    for c in range(C):
        cells = class_cells(z, key, c, S, pc, pp)
        options = []  # per group: list of (rate, cost) for k = 0..n
        for items, n0, p0 in cells:
            neg = sorted(flip_cost(x) for x in items if x < THR)
            pos = sorted(flip_cost(x) for x in items if x >= THR)
            k0, opts = len(pos), []
            for k in range(len(items) + 1):
                cost = sum(neg[: k - k0]) if k >= k0 else sum(pos[: k0 - k])
                opts.append(((p0 + k) / (n0 + len(items)), cost))
            options.append(opts)
        best = (math.inf, math.inf)
        for combo in itertools.product(*options):
            v = band_violation([r for r, _ in combo], eps)
            cost = sum(x for _, x in combo)
            if v < best[0] - TOL or (v <= best[0] + TOL and cost < best[1]):
                best = (min(v, best[0]), cost)
        result.append(best if cells else (0.0, 0.0))
    return result


def brute_by_subsets(z, key, C, S, eps, pc, pp):
    """Per class lexicographic min of (violation, cost) over every subset of flipped items."""
    result = []
    for c in range(C):
        idx = [i for i, k in enumerate(key) if c * S <= k < (c + 1) * S]
        best = (math.inf, math.inf)
        for mask in range(2 ** len(idx)):
            flipped = {idx[j] for j in range(len(idx)) if mask >> j & 1}
            rates = []
            for s in range(S):
                members = [i for i in idx if key[i] == c * S + s]
                total = pc[c][s] + len(members)
                if total > 0:
                    positive = sum((z[i] >= THR) != (i in flipped) for i in members)
                    rates.append((pp[c][s] + positive) / total)
            v = band_violation(rates, eps)
            cost = sum(flip_cost(z[i]) for i in flipped)
            if v < best[0] - TOL or (v <= best[0] + TOL and cost < best[1]):
                best = (min(v, best[0]), cost)
        result.append(best)
    return result


def evaluate(q, z, key, C, S, eps, pc, pp):
    """Per class (violation, cost, rates) of the output ``q``."""
    out = []
    for c in range(C):
        rates, cost = [], 0.0
        for s in range(S):
            members = [i for i, k in enumerate(key) if k == c * S + s]
            total = pc[c][s] + len(members)
            cost += sum((q[i] - z[i]) ** 2 for i in members)
            if total > 0:
                rates.append((pp[c][s] + sum(q[i] >= THR for i in members)) / total)
        out.append((band_violation(rates, eps), cost, rates))
    return out


def run(z, key, C, S, eps, pc=None, pp=None):
    zt = torch.tensor(z, dtype=torch.float64)
    kt = torch.tensor(key, dtype=torch.long)
    pct = None if pc is None else torch.tensor(pc, dtype=torch.float64)
    ppt = None if pp is None else torch.tensor(pp, dtype=torch.float64)
    q = decision_band_project(zt, kt, C, S, eps, THR, pct, ppt)
    assert q.dtype == zt.dtype and q.shape == zt.shape
    return q


def check_against(truth, q, z, key, C, S, eps, pc, pp):
    qs = q.tolist()
    for i, (x, y) in enumerate(zip(z, qs)):
        assert y == x or (y == THR and x < THR) or (y == BELOW and x >= THR), (i, x, y)
    got = evaluate(qs, z, key, C, S, eps, pc, pp)
    for (v, cost), (gv, gcost, rates) in zip(truth, got):
        assert gv == pytest.approx(v, abs=TOL)
        assert gcost == pytest.approx(cost, abs=TOL)
        if v <= TOL and rates:
            assert max(rates) - min(rates) <= eps + TOL


# values on a coarse grid so that ties (in scores, costs and rates) are frequent
SCORES = [i / 8 for i in range(9)]


@st.composite
def instances(draw):
    C = draw(st.sampled_from([1, 2]))
    S = draw(st.sampled_from([2, 3]))
    N = draw(st.integers(0, 8))
    z = draw(st.lists(st.sampled_from(SCORES), min_size=N, max_size=N))
    key = draw(st.lists(st.integers(0, C * S - 1), min_size=N, max_size=N))
    eps = draw(st.sampled_from([0.0, 0.1, 0.3]))
    if draw(st.booleans()):
        pc = [[0.0] * S for _ in range(C)]
        pp = [[0.0] * S for _ in range(C)]
    else:
        pc = [[float(draw(st.integers(0, 5))) for _ in range(S)] for _ in range(C)]
        pp = [[float(draw(st.integers(0, int(n)))) for n in row] for row in pc]
    return z, key, C, S, eps, pc, pp


@settings(max_examples=150, deadline=None)
@given(instances())
def test_matches_brute_force_over_counts(inst):
    z, key, C, S, eps, pc, pp = inst
    q = run(z, key, C, S, eps, pc, pp)
    check_against(brute_by_counts(z, key, C, S, eps, pc, pp), q, z, key, C, S, eps, pc, pp)


def test_matches_brute_force_over_flip_subsets():
    rng = random.Random(1234)
    for _ in range(60):
        C, S = rng.choice([1, 2]), rng.choice([2, 3])
        N = rng.randint(0, 8)
        z = [rng.choice([rng.random(), rng.choice(SCORES)]) for _ in range(N)]
        key = [rng.randrange(C * S) for _ in range(N)]
        eps = rng.choice([0.0, 0.1, 0.3])
        pc = [[float(rng.choice([0, rng.randint(0, 6)])) for _ in range(S)] for _ in range(C)]
        pp = [[float(rng.randint(0, int(n))) for n in row] for row in pc]
        q = run(z, key, C, S, eps, pc, pp)
        truth = brute_by_subsets(z, key, C, S, eps, pc, pp)
        by_counts = brute_by_counts(z, key, C, S, eps, pc, pp)
        flat = [x for pair in by_counts for x in pair]
        assert [x for pair in truth for x in pair] == pytest.approx(flat, abs=TOL)
        check_against(truth, q, z, key, C, S, eps, pc, pp)


def test_one_flip_needed():
    # group 0 rate 1, group 1 rate 1/2; raising 0.3 (cost 0.04) beats lowering 0.8 (cost 0.09)
    q = run([0.9, 0.8, 0.7, 0.3], [0, 0, 1, 1], 1, 2, 0.4)
    assert q.tolist() == [0.9, 0.8, 0.7, THR]


def test_one_flip_lowering():
    # group 0 rate 1/2, group 1 rate 0; lowering 0.6 (cost ~0.01) beats raising 0.35 (0.0225)
    q = run([0.6, 0.2, 0.35, 0.1], [0, 0, 1, 1], 1, 2, 0.0)
    assert q.tolist() == [BELOW, 0.2, 0.35, 0.1]


def test_wide_band_changes_nothing():
    z = [0.9, 0.8, 0.7, 0.3]
    q = run(z, [0, 0, 1, 1], 1, 2, 0.5)
    assert torch.equal(q, torch.tensor(z, dtype=torch.float64))


def test_exact_window_end_is_feasible():
    # rates 3/10 and 4/10: in floating point 0.4 - 0.3 > 0.1, yet the band of 0.1 holds
    z = [0.9] * 3 + [0.1] * 7 + [0.9] * 4 + [0.1] * 6
    q = run(z, [0] * 10 + [1] * 10, 1, 2, 0.1)
    assert torch.equal(q, torch.tensor(z, dtype=torch.float64))


def test_group_present_in_one_class_only():
    # class 0 as in test_one_flip_needed; class 1 holds only group 0, so it is left alone
    z = [0.9, 0.8, 0.7, 0.3, 0.9, 0.1]
    q = run(z, [0, 0, 1, 1, 2, 2], 2, 2, 0.4)
    assert q.tolist() == [0.9, 0.8, 0.7, THR, 0.9, 0.1]


def test_absent_group_is_ignored():
    z, key = [0.9, 0.8, 0.7, 0.3], [0, 0, 1, 1]
    q3 = run(z, key, 1, 3, 0.4)  # group 2 has neither items nor priors
    assert torch.equal(q3, run(z, key, 1, 2, 0.4))
    assert q3.tolist() == [0.9, 0.8, 0.7, THR]


def test_single_group_without_priors_unchanged():
    z = [0.9, 0.1, 0.6, 0.2]
    q = run(z, [1, 1, 1, 1], 1, 3, 0.0)
    assert torch.equal(q, torch.tensor(z, dtype=torch.float64))


def test_fixed_prior_group_pulls_batch_group():
    # group 0 is absent from the batch with rate 0 served so far; eps = 0 forces group 1 to 0
    q = run([0.7, 0.9], [1, 1], 1, 2, 0.0, [[10.0, 0.0]], [[0.0, 0.0]])
    assert q.tolist() == [BELOW, BELOW]


def test_infeasible_priors_keep_reachable_group_unchanged():
    # fixed rates 0 and 1 violate eps = 0.1 whatever happens; any window in [0, 0.9] has the
    # least violation 0.9 and group 1 already sits in one of them, so nothing is flipped
    z = [0.7, 0.2]
    q = run(z, [1, 1], 1, 3, 0.1, [[10.0, 0.0, 10.0]], [[0.0, 0.0, 10.0]])
    assert torch.equal(q, torch.tensor(z, dtype=torch.float64))


def test_empty_batch():
    q = decision_band_project(torch.zeros(0), torch.zeros(0, dtype=torch.long), 2, 2, 0.1, 0.5)
    assert q.shape == (0,)


def test_float32_lowered_below_threshold():
    z = torch.tensor([0.6, 0.2, 0.35, 0.1], dtype=torch.float32)
    key = torch.tensor([0, 0, 1, 1], dtype=torch.int32)
    q = decision_band_project(z, key, 1, 2, 0.0, 0.3)
    assert q.dtype == torch.float32
    # group 0: 0.6, 0.2 -> 1/2; group 1: 0.35 positive -> 1/2; already fair
    assert torch.equal(q, z)
    q = decision_band_project(z, key, 1, 2, 0.0, 0.5)
    assert q[0] < 0.5 and (q >= 0.5).sum() == 0


def test_large_batch_satisfies_band_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    N = 2000
    z = torch.rand(N, generator=g)
    group = (torch.rand(N, generator=g) < 0.3).long()
    z = z + 0.2 * group  # group 1 scores higher
    label = (torch.rand(N, generator=g) < 0.5).long()
    key = label * 2 + group
    q = decision_band_project(z, key, 2, 2, 0.02, 0.5)
    assert torch.equal(q, decision_band_project(z, key, 2, 2, 0.02, 0.5))
    for c in range(2):
        rates = [(q[key == c * 2 + s] >= 0.5).double().mean() for s in range(2)]
        assert abs(rates[0] - rates[1]) <= 0.02 + 1e-12
    changed = q != z
    assert changed.any()
    assert ((q[changed] == 0.5) | (q[changed] == torch.nextafter(
        torch.tensor(0.5), torch.tensor(-math.inf)))).all()


Z4, K4 = torch.tensor([0.9, 0.8, 0.7, 0.3]), torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"z": Z4.long()}, "z"),
        ({"z": Z4.view(2, 2)}, "z"),
        ({"z": torch.tensor([0.9, math.nan, 0.7, 0.3])}, "z"),
        ({"key": K4.float()}, "key"),
        ({"key": K4[:3]}, "key"),
        ({"key": torch.tensor([0, 0, 1, 2])}, "key"),
        ({"key": torch.tensor([0, -1, 1, 1])}, "key"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_groups": 1}, "num_groups"),
        ({"num_groups": 2.0}, "num_groups"),
        ({"eps": -0.1}, "eps"),
        ({"eps": math.nan}, "eps"),
        ({"threshold": math.inf}, "threshold"),
        ({"prior_count": torch.zeros(2, 2)}, "prior_count"),
        ({"prior_count": -torch.ones(1, 2)}, "prior_count"),
        ({"prior_pos": torch.zeros(1, 3)}, "prior_pos"),
        ({"prior_count": torch.ones(1, 2), "prior_pos": 2 * torch.ones(1, 2)}, "prior_pos"),
    ],
)
def test_bad_input_raises(kwargs, name):
    args = {"z": Z4, "key": K4, "num_classes": 1, "num_groups": 2, "eps": 0.1, "threshold": 0.5}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        decision_band_project(**args)
