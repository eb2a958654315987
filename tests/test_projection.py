"""FairProjection: exact against scipy, KKT with its multipliers, invariance, gradients,
training through the layer (the two-group paths, the API and bad input have their own files)."""

from __future__ import annotations

import io

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from projection_reference import (
    assert_matches_scipy,
    check_kkt,
    instance,
    scipy_projection,
    use_path,
)

from humancompatible_train.dual_optim.projection import FairProjection

# ------------------------------------------------------------------------ properties


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 5), st.integers(2, 30), st.integers(0, 2**31), st.floats(0.0, 0.3),
       st.booleans())
def test_parity_feasible_optimal_kkt(S, N, seed, eps, boxed):
    _, z, g, bounds = instance(seed, S, N, boxed)
    proj = FairProjection(S, eps, bounds=bounds, dtype=torch.float64)
    q, info = proj.project(torch.tensor(z), torch.tensor(g))
    q = q.numpy()
    present = [s for s in range(S) if (g == s).any()]
    if len(present) < 2:  # nothing to compare: the box alone
        assert np.array_equal(q, np.clip(z, *bounds) if bounds else z)
        assert bool(info.unconstrained) and not proj.duals.any()
        assert bool(info.box_active) == (bounds is not None and not np.array_equal(q, z))
        return
    means = np.array([q[g == s].mean() for s in present])
    assert means.max() - means.min() <= eps + 1e-9
    t = float(info.band[0])
    assert (means >= t - 1e-9).all() and (means <= t + eps + 1e-9).all()
    if bounds:
        assert q.min() >= bounds[0] and q.max() <= bounds[1]
    res = scipy_projection(z, [[g == s for s in present]], eps, bounds)
    if res.success:
        assert_matches_scipy(q, z, res)
    check_kkt(q, z, g, proj.duals.numpy(), eps, bounds, present)
    torch.testing.assert_close(info.multipliers, proj.duals)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 3), st.integers(4, 24), st.integers(0, 2**31), st.floats(0.0, 0.2))
def test_equalized_odds_against_scipy(S, N, seed, eps):
    rng, z, g, bounds = instance(seed, S, N, True)
    y = rng.integers(0, 2, size=N)
    proj = FairProjection(S, eps, bounds=bounds, constraint="equalized_odds",
                          dtype=torch.float64)
    q, info = proj.project(torch.tensor(z), torch.tensor(g), torch.tensor(y))
    q = q.numpy()
    classes = [[(g == s) & (y == k) for s in range(S) if ((g == s) & (y == k)).any()]
               for k in (0, 1)]
    for cls in classes:
        if len(cls) >= 2:
            means = [q[c].mean() for c in cls]
            assert max(means) - min(means) <= eps + 1e-9
        else:  # one group in this class: its rows are only clipped to the box
            for c in cls:
                np.testing.assert_array_equal(q[c], np.clip(z[c], *bounds))
    assert (q >= bounds[0]).all() and (q <= bounds[1]).all()
    band = [c for c in classes if len(c) >= 2]
    res = scipy_projection(z, band, eps, bounds)
    if res.success:
        assert_matches_scipy(q, z, res)
    assert info.shifts.shape == (2, S) and proj.m == 4 * S


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 4), st.integers(2, 24), st.integers(0, 2**31), st.floats(0.0, 0.2),
       st.booleans())
def test_mean_residual_against_scipy(S, N, seed, eps, boxed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, size=N)
    g = rng.integers(0, S, size=N)
    y = (rng.uniform(size=N) < 0.2 + 0.6 * g / S).astype(float)
    bounds = (0.0, 1.0) if boxed else None
    proj = FairProjection(S, eps, bounds=bounds, constraint="mean_residual",
                          dtype=torch.float64)
    q, info = proj.project(torch.tensor(p), torch.tensor(g), torch.tensor(y))
    q = q.numpy()
    present = [s for s in range(S) if (g == s).any()]
    for s in present:
        assert abs(q[g == s].mean() - y[g == s].mean()) <= eps + 1e-9
    res = scipy_projection(p, [g == s for s in present], eps, bounds,
                           [y[g == s].mean() for s in present])
    if res.success:
        assert_matches_scipy(q, p, res)
    lam = proj.duals.view(-1, 2).numpy()
    for s in present:  # stationarity for rows inside the box
        rows = (g == s) & (q > 1e-9) & (q < 1 - 1e-9) if boxed else g == s
        np.testing.assert_allclose(q[rows] - p[rows], (lam[s, 0] - lam[s, 1]) / (g == s).sum(),
                                   atol=1e-9)
    assert torch.isnan(info.band).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.booleans(), st.integers(2, 6))
def test_permutation_invariance(seed, boxed, S):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(60, generator=gen, dtype=torch.float64)
    g = torch.randint(0, S, (60,), generator=gen)
    perm = torch.randperm(60, generator=gen)
    proj = FairProjection(S, 0.05, bounds=(-1.0, 1.0) if boxed else None, dtype=torch.float64)
    q, info = proj.project(z, g)
    qp, infop = proj.project(z[perm], g[perm])
    torch.testing.assert_close(qp, q[perm], rtol=0, atol=1e-12)
    torch.testing.assert_close(infop.multipliers, info.multipliers, rtol=0, atol=1e-9)


@pytest.mark.parametrize("S", [2, 4])
def test_one_hot_groups_and_both_paths_agree(monkeypatch, S):
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(500, generator=gen, dtype=torch.float64) * 2
    g = torch.randint(0, S, (500,), generator=gen)
    z = z + g
    proj = FairProjection(S, 0.1, bounds=(-1.0, 3.0), dtype=torch.float64)
    q, info = proj.project(z, g)
    q1, _ = proj.project(z, torch.nn.functional.one_hot(g, S).float())
    torch.testing.assert_close(q1, q)
    assert bool(info.box_active)
    for zz in (z, z * 0.1):  # box active, then inactive
        expected, _ = proj.project(zz, g)
        for path in ("host-torch", "device"):
            with monkeypatch.context() as m:
                use_path(m, path)
                torch.testing.assert_close(proj.project(zz, g)[0], expected)


def test_inactive_box_equals_unbounded_and_large_float32_batch():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(200_000, generator=gen)
    g = torch.randint(0, 3, (200_000,), generator=gen)
    z = z + 0.5 * g
    q, info = FairProjection(3, 0.02).project(z, g)
    qb, infob = FairProjection(3, 0.02, bounds=(-100.0, 100.0)).project(z, g)
    assert not bool(infob.box_active) and q.dtype == torch.float32
    torch.testing.assert_close(qb, q)
    qc, infoc = FairProjection(3, 0.02, bounds=(-2.0, 2.5)).project(z, g)
    assert bool(infoc.box_active)
    for out in (q, qc):
        means = torch.stack([out[g == s].double().mean() for s in range(3)])
        assert float(means.max() - means.min()) <= 0.02 + 1e-6


# ------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("constraint,bounds", [
    ("parity", None), ("parity", (-0.8, 0.9)), ("equalized_odds", (-0.8, 0.9)),
    ("mean_residual", (-0.5, 1.2)), ("mean_residual", None),
])
def test_gradcheck(constraint, bounds):
    gen = torch.Generator().manual_seed(3)
    z = (torch.randn(18, generator=gen, dtype=torch.float64) * 1.2).requires_grad_()
    g = torch.tensor([0, 1, 2] * 6)
    y = torch.tensor([0, 0, 1, 1, 0, 1] * 3)
    proj = FairProjection(3, 0.05, bounds=bounds, constraint=constraint, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: proj.project(v, g, y)[0], (z,))


def test_gradcheck_with_a_fully_clipped_group():
    z = torch.tensor([-0.606, -0.557, 2.864, -1.785, -0.135, 0.361, 0.2],
                     dtype=torch.float64, requires_grad=True)
    g = torch.tensor([1, 1, 1, 0, 0, 2, 2])
    proj = FairProjection(3, 0.05, bounds=(-0.3027, 0.7408), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: proj.project(v, g)[0], (z,))


def test_training_through_the_layer_meets_eps_on_every_batch():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    n, eps = 2000, 0.05
    s = (torch.rand(n, generator=gen) < 0.3).long()
    x = torch.randn(n, 5, generator=gen)
    x[:, 0] += s
    y = ((x[:, 0] + x[:, 1] + 0.3 * torch.randn(n, generator=gen)) > 0.5).float()
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    proj = FairProjection(2, eps, bounds=(-6.0, 6.0))
    bce = torch.nn.BCEWithLogitsLoss()
    first = None
    for _ in range(4):
        for idx in torch.randperm(n, generator=gen).split(250):
            logit, info = proj.project(model(x[idx]), s[idx])
            with torch.no_grad():
                gap = logit[s[idx] == 0].mean() - logit[s[idx] == 1].mean()
            assert float(gap.abs()) <= eps + 1e-6
            loss = bce(logit.squeeze(1), y[idx])
            first = float(loss.detach()) if first is None else first
            lagr = proj.forward_update(loss, None)
            assert lagr is loss
            opt.zero_grad()
            lagr.backward()
            opt.step()
    assert float(loss.detach()) < first
    assert proj.duals.abs().sum() > 0
    buf = io.BytesIO()
    torch.save(proj.state_dict(), buf)
    buf.seek(0)
    other = FairProjection(2, eps, bounds=(-6.0, 6.0))
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(other.duals, proj.duals)


# ------------------------------------------------------------------ breakpoint-sweep edges


def _edge_instances():
    """Small instances on the sweep's edge cases: ties between kinks, eps = 0, a group
    entirely clipped, every prediction outside the box on one side, inputs on the bounds,
    one row per group."""
    rng = np.random.default_rng(11)
    yield "ties", np.round(rng.normal(size=24), 1), rng.integers(0, 3, 24), 0.0, (-0.5, 0.6)
    yield "ties-eps", np.round(rng.normal(size=24), 1), rng.integers(0, 3, 24), 0.1, (-0.5, 0.5)
    z = rng.normal(size=20)
    g = rng.integers(0, 3, 20)
    z[g == 1] = 2.0 + rng.uniform(size=(g == 1).sum())  # group 1 entirely above hi
    yield "clipped-group", z, g, 0.05, (-0.8, 0.9)
    yield "all-above", 3 + np.abs(rng.normal(size=12)), rng.integers(0, 2, 12), 0.0, (-1.0, 1.0)
    yield "all-below", -3 - np.abs(rng.normal(size=12)), rng.integers(0, 3, 12), 0.2, (-1.0, 1.0)
    yield "on-bounds", np.clip(rng.normal(size=16) * 2, -0.7, 0.8), rng.integers(0, 2, 16), 0.0, \
        (-0.7, 0.8)
    yield "one-row-each", rng.normal(size=4) * 2, np.arange(4), 0.0, (-0.4, 0.9)
    yield "eps-wide", rng.normal(size=10) * 3, rng.integers(0, 2, 10), 2.0, (-1.0, 0.5)


@pytest.mark.parametrize("name,z,g,eps,bounds", list(_edge_instances()),
                         ids=[c[0] for c in _edge_instances()])
def test_sweep_edge_cases_against_scipy(name, z, g, eps, bounds):
    S = int(g.max()) + 1
    proj = FairProjection(S, eps, bounds=bounds, dtype=torch.float64)
    q, info = proj.project(torch.tensor(z), torch.tensor(g))
    q = q.numpy()
    present = [s for s in range(S) if (g == s).any()]
    means = np.array([q[g == s].mean() for s in present])
    assert means.max() - means.min() <= eps + 1e-9
    assert q.min() >= bounds[0] and q.max() <= bounds[1]
    res = scipy_projection(z, [[g == s for s in present]], eps, bounds)
    if res.success:
        assert_matches_scipy(q, z, res)
    check_kkt(q, z, g, proj.duals.numpy(), eps, bounds, present)


@pytest.mark.parametrize("seed", [0, 1])
def test_many_groups_box_active_is_optimal(seed):
    """18 groups, box active: feasible and the returned multipliers certify optimality
    (the KKT conditions are sufficient for this convex problem)."""
    rng = np.random.default_rng(seed)
    z = np.round(rng.normal(size=300) * 1.5 + rng.normal(), 1)  # with ties
    g = rng.integers(0, 18, size=300)
    bounds, eps = (-0.6, 0.7), 0.01 * seed
    proj = FairProjection(18, eps, bounds=bounds, dtype=torch.float64)
    q, info = proj.project(torch.tensor(z), torch.tensor(g))
    assert bool(info.box_active)
    q = q.numpy()
    means = np.array([q[g == s].mean() for s in range(18)])
    assert means.max() - means.min() <= eps + 1e-9
    check_kkt(q, z, g, proj.duals.numpy(), eps, bounds, list(range(18)), tol=1e-9)


def test_equalized_odds_many_groups_against_scipy():
    rng = np.random.default_rng(5)
    N, S, eps, bounds = 40, 6, 0.0, (-0.3, 0.5)
    z = rng.normal(size=N) * 1.5
    g = rng.integers(0, S, size=N)
    y = rng.integers(0, 2, size=N)
    proj = FairProjection(S, eps, bounds=bounds, constraint="equalized_odds",
                          dtype=torch.float64)
    q, info = proj.project(torch.tensor(z), torch.tensor(g), torch.tensor(y))
    assert bool(info.box_active)
    q = q.numpy()
    classes = [[(g == s) & (y == k) for s in range(S) if ((g == s) & (y == k)).any()]
               for k in (0, 1)]
    for cls in classes:
        means = [q[c].mean() for c in cls]
        assert max(means) - min(means) <= eps + 1e-9
    res = scipy_projection(z, classes, eps, bounds)
    if res.success:
        assert_matches_scipy(q, z, res)
    alpha = (info.counts * info.shifts).sum(-1)
    assert alpha.abs().max() <= 1e-9 * (1 + info.multipliers.sum())
