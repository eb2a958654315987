"""The serving projections against an independent QP solver (scipy) and brute force.

Each instance is a pool that has already served some predictions (within ε and the bounds,
as the wrapper keeps it) and a new batch; the wrapper (``eta_0=0``: no offsets, so the
served rows are the projection of the raw scores) must return a feasible point whose cost is
at most scipy's optimum.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import LinearConstraint, minimize

from humancompatible_train._projection import (
    decision_joint_project,
    joint_boxed,
    pooled_band_boxed,
)
from humancompatible_train.inference import FairInference

TOL = 1e-9


def cells_of(cell, K, S):
    return [[k * S + s for s in range(S)] for k in range(K)]


def constraints(x_len, cell, K, S, eps, o, N0, use_a):
    """scipy constraints of the batch band (A) and the pooled band (B)."""
    n = np.bincount(cell, minlength=K * S).astype(float)
    T = N0.reshape(-1) + n
    cons = []
    for cells in cells_of(cell, K, S):
        present = [c for c in cells if n[c] > 0]
        if use_a and len(present) >= 2:
            for c, d in itertools.permutations(present, 2):
                cons.append({"type": "ineq", "fun": lambda q, c=c, d=d:
                             eps - (q[cell == c].mean() - q[cell == d].mean())})
        seen = [c for c in cells if T[c] > 0]
        for c, d in itertools.permutations(seen, 2):
            cons.append({"type": "ineq", "fun": lambda q, c=c, d=d:
                         eps - ((o.flat[c] + q[cell == c].sum()) / T[c]
                                - (o.flat[d] + q[cell == d].sum()) / T[d])})
    return cons


def scipy_qp(x, cell, K, S, eps, bounds, o, N0, use_a):
    lo, hi = bounds if bounds is not None else (-np.inf, np.inf)
    cons = constraints(len(x), cell, K, S, eps, o, N0, use_a)
    best = None
    for start in (np.clip(x, lo, hi), np.full(len(x), np.clip(0.0, lo, hi))):
        r = minimize(lambda q: 0.5 * ((q - x) ** 2).sum(), start, jac=lambda q: q - x,
                     bounds=[(lo, hi)] * len(x) if bounds is not None else None,
                     constraints=cons, method="SLSQP", options={"ftol": 1e-12, "maxiter": 500})
        if r.success and (best is None or r.fun < best.fun):
            best = r
    return best


def violation(q, cell, K, S, eps, bounds, o, N0, use_a):
    n = np.bincount(cell, minlength=K * S).astype(float)
    T = N0.reshape(-1) + n
    worst = 0.0
    for cells in cells_of(cell, K, S):
        present = [c for c in cells if n[c] > 0]
        if use_a and len(present) >= 2:
            m = [q[cell == c].mean() for c in present]
            worst = max(worst, max(m) - min(m) - eps)
        seen = [c for c in cells if T[c] > 0]
        if len(seen) >= 2:
            p = [(o.flat[c] + q[cell == c].sum()) / T[c] for c in seen]
            worst = max(worst, max(p) - min(p) - eps)
    if bounds is not None:
        worst = max(worst, bounds[0] - q.min(), q.max() - bounds[1])
    return worst


def instance(seed, S, K=1, max_n=8):
    """A batch and a feasible prior pool (within eps per class, inside the bounds)."""
    rng = np.random.default_rng(seed)
    N = int(rng.integers(2, max_n + 1))
    cell = rng.integers(0, K * S, N)
    x = rng.normal(0.3, 1.5, N)
    lo = float(rng.normal(-0.5, 0.5))
    bounds = (lo, lo + float(rng.uniform(0.6, 2.5)))
    eps = float(rng.choice([0.0, 0.05, 0.3]))
    N0 = rng.integers(0, 6, (K, S)).astype(float)
    level = rng.uniform(bounds[0], bounds[1] - eps, (K, 1))
    o = N0 * (level + rng.uniform(0, eps, (K, S)))
    return x, cell, K, S, eps, bounds, o, N0


@pytest.mark.parametrize("S,K", [(2, 1), (2, 2), (3, 1)])
@pytest.mark.parametrize("use_a", [False, True])
def test_boxed_solvers_match_scipy(S, K, use_a):
    checked = 0
    for seed in range(40):
        x, cell, K_, S_, eps, bounds, o, N0 = instance(seed, S, K)
        ref = scipy_qp(x, cell, K, S, eps, bounds, o, N0, use_a)
        q, eps_k = joint_boxed(torch.tensor(x), torch.tensor(cell), K, S, eps, bounds,
                               torch.tensor(o), torch.tensor(N0), use_a, True)
        assert float(eps_k.max()) == eps  # the prior pool is feasible: no widening
        q = q.numpy()
        assert violation(q, cell, K, S, eps, bounds, o, N0, use_a) <= TOL
        if ref is None:
            continue
        checked += 1
        cost = 0.5 * ((q - x) ** 2).sum()
        assert cost <= ref.fun + 1e-7 * (1 + ref.fun), (seed, cost, ref.fun)
    assert checked >= 30  # scipy's SLSQP solved most instances


def test_pooled_band_alone_is_exact_with_bounds():
    for seed in range(30):
        x, cell, K, S, eps, bounds, o, N0 = instance(100 + seed, 3, 2, max_n=10)
        delta, _ = pooled_band_boxed(torch.tensor(x), torch.tensor(cell), K, S, eps, bounds,
                                     torch.tensor(o), torch.tensor(N0))
        q = (torch.tensor(x) + delta.reshape(-1)[torch.tensor(cell)]).clamp(*bounds).numpy()
        assert violation(q, cell, K, S, eps, bounds, o, N0, False) <= TOL
        ref = scipy_qp(x, cell, K, S, eps, bounds, o, N0, False)
        if ref is not None:
            assert 0.5 * ((q - x) ** 2).sum() <= ref.fun + 1e-7 * (1 + ref.fun)


def test_unreachable_pool_takes_the_smallest_reachable_gap():
    # Fixed cells 0.4 apart (group 1 and 2 absent from the batch): eps widens to 0.4 and
    # group 0's one row lands where the gap is smallest with the least change.
    x, cell = torch.tensor([0.3], dtype=torch.float64), torch.tensor([0])
    o = torch.tensor([[0.0, 1.0, 1.8]], dtype=torch.float64)
    N0 = torch.tensor([[2.0, 2.0, 2.0]], dtype=torch.float64)
    delta, eps_k = pooled_band_boxed(x, cell, 1, 3, 0.1, (-5.0, 5.0), o, N0)
    assert float(eps_k) == pytest.approx(0.4)
    q = float(x + delta[0, 0])
    assert (0.0 + q) / 3 == pytest.approx(0.5)  # the nearest end of [0.5, 0.9]


@pytest.mark.parametrize("bounds", [None, (-0.4, 1.2)])
@pytest.mark.parametrize("per_batch", [True, False])
def test_wrapper_serves_the_qp_optimum_at_every_step(bounds, per_batch):
    """Stream through the wrapper (eta_0 = 0: rows are projected as they come) and check
    every step against scipy on the pool the wrapper holds."""
    rng = np.random.default_rng(7)
    fi = FairInference(fairness_tolerance=0.05, eta_0=0.0, b_tau=6, per_batch=per_batch,
                       prediction_bounds=bounds)
    for size in [3, 1, 4, 2, 6, 5, 1, 7, 3, 8]:
        x = rng.normal(0.5, 1.0, size)
        g = rng.integers(0, 2, size)
        o = fi.out_sum.numpy().copy()
        N0 = fi.count.numpy().copy()
        q = fi.adjust(torch.tensor(x), torch.tensor(g)).numpy()
        use_a = per_batch or size >= 6
        eps = 0.05
        assert violation(q, g, 1, 2, eps, bounds, o, N0, use_a) <= TOL
        ref = scipy_qp(x, g, 1, 2, eps, bounds, o, N0, use_a)
        if ref is not None:
            assert 0.5 * ((q - x) ** 2).sum() <= ref.fun + 1e-7 * (1 + ref.fun)


# --------------------------------------------------------------------- decisions
THR = 0.5
BELOW = math.nextafter(THR, -math.inf)


def flip_cost(v):
    return (v - BELOW) ** 2 if v >= THR else (THR - v) ** 2


def brute_joint(z, g, S, eps, pc, pp):
    """Cheapest subset of flips with batch rates and pooled rates both within eps."""
    best = math.inf
    n = [sum(1 for x in g if x == s) for s in range(S)]
    for mask in range(2 ** len(z)):
        pos = [0] * S
        cost = 0.0
        for i, (v, s) in enumerate(zip(z, g)):
            flip = mask >> i & 1
            pos[s] += (v >= THR) != bool(flip)
            cost += flip_cost(v) if flip else 0.0
        batch = [pos[s] / n[s] for s in range(S) if n[s]]
        pooled = [(pp[s] + pos[s]) / (pc[s] + n[s]) for s in range(S) if pc[s] + n[s]]
        if (max(batch) - min(batch) <= eps + 1e-12 and max(pooled) - min(pooled)
                <= eps + 1e-12):
            best = min(best, cost)
    return best


@pytest.mark.parametrize("S", [2, 3])
def test_joint_decisions_match_brute_force(S):
    rng = np.random.default_rng(S)
    for _ in range(25):
        N = int(rng.integers(2, 9))
        g = rng.integers(0, S, N)
        if len(set(g.tolist())) < 2:
            continue
        z = rng.uniform(0, 1, N)
        pc = rng.integers(0, 6, S).astype(float)
        pp = np.floor(pc * rng.uniform(0.3, 0.7))
        eps = float(rng.choice([0.1, 0.25, 0.5]))
        truth = brute_joint(z.tolist(), g.tolist(), S, eps, pc.tolist(), pp.tolist())
        q = decision_joint_project(torch.tensor(z), torch.tensor(g), 1, S, eps, THR,
                                   torch.tensor(pc).view(1, S), torch.tensor(pp).view(1, S))
        q = q.numpy()
        cost = sum(((a - b) ** 2) for a, b in zip(q, z))
        if math.isinf(truth):
            continue  # no flips meet both bands: the pooled band alone (checked elsewhere)
        assert cost == pytest.approx(truth, abs=1e-12)
        pos = [(q[g == s] >= THR).sum() for s in range(S)]
        batch = [pos[s] / (g == s).sum() for s in range(S) if (g == s).any()]
        assert max(batch) - min(batch) <= eps + 1e-12


def test_decisions_with_bounds_stay_inside():
    z = torch.tensor([-3.0, 0.2, 0.9, 4.0, 0.45, 0.7], dtype=torch.float64)
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    q = decision_joint_project(z, g, 1, 2, 0.0, THR, bounds=(0.0, 1.0))
    assert float(q.min()) >= 0.0 and float(q.max()) <= 1.0
    rates = [float((q[g == s] >= THR).double().mean()) for s in (0, 1)]
    assert rates[0] == rates[1]


# ------------------------------------------------- the benchmark's clairvoyant bound
def _benchmark_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "inference.py"
    spec = importlib.util.spec_from_file_location("inference_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("batch,per_batch", [(1, False), (3, False), (3, True), (4, True)])
def test_clairvoyant_bound_matches_scipy(batch, per_batch):
    """The benchmark's bound (ADMM on cumulative cell masses) against SLSQP on the rows."""
    bench = _benchmark_module()
    rng = np.random.default_rng(batch)
    n = 12
    g = rng.integers(0, 2, n)
    g[:2] = [0, 1]
    z = rng.normal(size=n) * 2 + 1.5 * g
    eps = bench.EPS
    rows_w = []
    for end in range(batch, n + batch, batch):
        e = min(end, n)
        for sel, always in ((np.arange(n) < e, True),
                            ((np.arange(n) >= e - batch) & (np.arange(n) < e), False)):
            big = per_batch or sel.sum() >= bench.B_TAU
            if (always or big) and (g[sel] == 0).any() and (g[sel] == 1).any():
                rows_w.append(np.where(sel, np.where(g == 1, 1 / (g[sel] == 1).sum(),
                                                     -1 / (g[sel] == 0).sum()), 0.0))
    A = np.array(rows_w)
    ref = minimize(lambda q: ((q - z) ** 2).sum(), z, jac=lambda q: 2 * (q - z),
                   hess=lambda q: 2 * np.eye(n), method="trust-constr",
                   constraints=[LinearConstraint(A, -eps, eps)],
                   options={"gtol": 1e-12, "xtol": 1e-14, "maxiter": 5000})
    assert np.abs(A @ ref.x).max() <= eps + 1e-8
    q = bench.oracle(z, g, batch, per_batch)
    assert np.abs(A @ q).max() <= eps + 1e-6
    assert bench.prefix_gap(q, g, batch) <= eps + 1e-6
    np.testing.assert_allclose(q, ref.x, atol=1e-4)
