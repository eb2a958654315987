"""The projection's two-group path and the box for batches with fewer than two groups:
every path of the solver (host NumPy, host torch, tensor-only) against the general sweep,
SciPy and the KKT conditions, and its derivative against finite differences."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from projection_reference import assert_matches_scipy, check_kkt, scipy_projection, use_path

from humancompatible_train._projection import batch, pair, solver
from humancompatible_train.dual_optim.projection import FairProjection

PATHS = ["host", "host-torch", "device"]

# ---------------------------------------------------------------- fewer than two groups


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("S", [2, 3])
def test_one_group_is_clipped_to_the_bounds_with_zero_multipliers(monkeypatch, path, S):
    """The issue's reproducer: bounds (0, 1) on [5, -3] of one group gave [5, -3]. With one
    group there is nothing to compare: the projection onto the box alone, clip(z), with
    every fairness multiplier 0 (the KKT conditions of the box: z - q is the box's normal)."""
    use_path(monkeypatch, path)
    proj = FairProjection(S, 0.05, bounds=(0.0, 1.0), dtype=torch.float64)
    proj.project(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))  # non-zero multipliers
    assert proj.duals.any()
    z = torch.tensor([5.0, -3.0, 0.25], dtype=torch.float64)
    q, info = proj.project(z, torch.tensor([1, 1, 1]))
    torch.testing.assert_close(q, torch.tensor([1.0, 0.0, 0.25], dtype=torch.float64))
    assert not proj.duals.any() and not info.multipliers.any()
    assert bool(info.unconstrained) and bool(info.box_active) and "fewer than two" in info.reason
    assert not info.shifts.any() and torch.isnan(info.band).all()
    torch.testing.assert_close(info.counts, torch.tensor([[0.0, 3.0] + [0.0] * (S - 2)],
                                                         dtype=torch.float64))
    inside = torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64)
    q, info = proj.project(inside, torch.tensor([0, 0, 0]))  # inside the box: unchanged
    assert torch.equal(q, inside)
    assert bool(info.unconstrained) and not bool(info.box_active)
    q, info = FairProjection(S, 0.05).project(z, torch.tensor([1, 1, 1]))  # no box
    assert torch.equal(q, z) and bool(info.unconstrained) and not bool(info.box_active)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 20), st.integers(0, 2**31), st.sampled_from(PATHS))
def test_one_group_against_scipy(N, seed, path):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=N) * 2
    bounds = (-float(rng.uniform(0.1, 1.5)), float(rng.uniform(0.1, 1.5)))
    s = int(rng.integers(0, 2))
    with pytest.MonkeyPatch.context() as m:
        use_path(m, path)
        proj = FairProjection(2, 0.05, bounds=bounds, dtype=torch.float64)
        q, info = proj.project(torch.tensor(z), torch.full((N,), s))
    res = scipy_projection(z, [], 0.05, bounds)  # the box alone
    assert_matches_scipy(q.numpy(), z, res)
    check_kkt(q.numpy(), z, np.full(N, s), proj.duals.numpy(), 0.05, bounds, [s])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 3), st.integers(4, 20), st.integers(0, 2**31), st.sampled_from(PATHS))
def test_equalized_odds_with_a_single_group_class(S, N, seed, path):
    """Label class 1 holds one group only: its rows are clipped (zero multipliers), class 0
    is projected with the box; against SciPy over the whole batch."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=N) * 2
    y = np.zeros(N, dtype=int)
    y[: N // 2] = 1
    g = rng.integers(0, S, size=N)
    g[: N // 2] = 0
    g[N // 2:N // 2 + 2] = [0, 1]
    bounds = (-0.6, 0.8)
    with pytest.MonkeyPatch.context() as m:
        use_path(m, path)
        proj = FairProjection(S, 0.05, bounds=bounds, constraint="equalized_odds",
                              dtype=torch.float64)
        q, info = proj.project(torch.tensor(z), torch.tensor(g), torch.tensor(y))
    q = q.numpy()
    np.testing.assert_array_equal(q[y == 1], np.clip(z[y == 1], *bounds))
    assert not proj.duals.view(2, S, 2)[1].any() and torch.isnan(info.band[1])
    cls0 = [(g == s) & (y == 0) for s in range(S) if ((g == s) & (y == 0)).any()]
    res = scipy_projection(z, [cls0], 0.05, bounds)
    if res.success:
        assert_matches_scipy(q, z, res)


# ------------------------------------------------------------------ two groups, one class


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 40), st.integers(0, 2**31), st.sampled_from([0.0, 0.02, 0.3]),
       st.booleans(), st.booleans())
def test_two_group_paths_agree_with_the_general_sweep(N, seed, eps, ties, boxed):
    """Two groups of one class: the host path (NumPy, and torch for its O(N) work), the
    tensor-only search and the general sweep give the same q and band (multipliers may
    differ only where G is flat, i.e. both groups are on the box)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=N) * 2 + rng.normal()
    z = np.round(z, 1) if ties else z
    g = rng.integers(0, 2, size=N)
    g[:2] = [0, 1]
    lo, hi = -float(rng.uniform(0.1, 1.5)), float(rng.uniform(0.1, 1.5))
    bounds = (lo, hi) if boxed else None
    zt, gt = torch.tensor(z), torch.tensor(g)
    n = torch.bincount(gt, minlength=2).double().view(1, 2)
    if boxed:
        t2, d2, _ = solver._band_boxed(zt, gt, n, 1, 2, eps, lo, hi)
        t1, d1, _ = pair.pair_boxed(zt, gt, n, eps, lo, hi)
        q1 = (zt + d1.view(-1)[gt]).clamp(lo, hi)
        q2 = (zt + d2.view(-1)[gt]).clamp(lo, hi)
        torch.testing.assert_close(q1, q2, rtol=0, atol=1e-9)
        assert float(t1) == pytest.approx(min(float(q1[gt == s].mean()) for s in (0, 1)),
                                          abs=1e-12)
    else:
        mu = torch.bincount(gt, weights=zt, minlength=2).view(1, 2) / n
        t2, d2 = solver._band_unboxed(mu, n, eps)
        q2 = zt + d2.view(-1)[gt]
    means = [float(q2[gt == s].mean()) for s in (0, 1)]
    assert abs(means[0] - means[1]) <= eps + 1e-12
    assert float(t2[0]) - 1e-9 <= min(means) and max(means) <= float(t2[0]) + eps + 1e-9
    old = pair._NUMPY_ROWS
    for rows in (old, 0):  # NumPy, then torch for the O(N) work
        pair._NUMPY_ROWS = rows
        try:
            sol = pair.pair_host(batch.Cells(zt, gt, 1, 2), eps, bounds)
        finally:
            pair._NUMPY_ROWS = old
        torch.testing.assert_close(sol.q, q2, rtol=0, atol=1e-9)
        assert float(sol.band) == pytest.approx(min(means), abs=1e-9)
        if not (boxed and bool(sol.box_active)):
            torch.testing.assert_close(sol.shifts, d2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", [[0, 0, 1, 1], [1, 1, 0, 0]])
def test_two_groups_on_a_flat_gap_keep_the_smallest_multipliers(order):
    """eps = 1, box [-1, 1]: group a = (5, 5) stays on hi, group b = (-5, 0.5) has clipped
    mean -0.25, a gap of 1.25. Raising 0.5 to hi (shift 0.5, multiplier n * 0.5 = 1) meets
    eps; every larger multiplier up to 8 gives the same q. The smallest one is returned."""
    z = torch.tensor([5.0, 5.0, -5.0, 0.5], dtype=torch.float64)
    g = torch.tensor(order)
    proj = FairProjection(2, 1.0, bounds=(-1.0, 1.0), dtype=torch.float64)
    q, info = proj.project(z, g)
    torch.testing.assert_close(q, torch.tensor([1.0, 1.0, -1.0, 1.0], dtype=torch.float64))
    # (low, up) per group: a binds at the top of the band, b at its bottom.
    a, b = order[0], order[2]
    expected = torch.zeros(2, 2, dtype=torch.float64)
    expected[a, 1] = expected[b, 0] = 1.0
    torch.testing.assert_close(proj.duals, expected.view(-1))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bounds", [None, (-0.8, 0.9)])
def test_gradcheck_two_groups_every_path(monkeypatch, path, bounds):
    use_path(monkeypatch, path)
    gen = torch.Generator().manual_seed(4)
    z = (torch.randn(12, generator=gen, dtype=torch.float64) * 1.2).requires_grad_()
    g = torch.tensor([0, 1] * 6)
    z.data[g == 1] += 0.8
    proj = FairProjection(2, 0.05, bounds=bounds, dtype=torch.float64)
    assert bool(proj.project(z, g)[1].box_active) == (bounds is not None)
    assert torch.autograd.gradcheck(lambda v: proj.project(v, g)[0], (z,))
    one = torch.zeros(12, dtype=torch.long)  # one group: the derivative of clip (or identity)
    assert torch.autograd.gradcheck(lambda v: proj.project(v, one)[0], (z,))


def test_float32_gradients_agree_across_paths(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(300, generator=gen) * 1.5
    g = torch.randint(0, 2, (300,), generator=gen)
    w = torch.randn(300, generator=gen)
    proj = FairProjection(2, 0.02, bounds=(-1.0, 1.2))
    grads = []
    for path in PATHS:
        with monkeypatch.context() as m:
            use_path(m, path)
            zg = z.clone().requires_grad_()
            q, _ = proj.project(zg, g)
            (q * w).sum().backward()
            assert q.dtype == zg.grad.dtype == torch.float32
            grads.append((q.detach(), zg.grad))
    for q, grad in grads[1:]:
        torch.testing.assert_close(q, grads[0][0])
        torch.testing.assert_close(grad, grads[0][1])
