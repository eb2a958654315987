"""FairProjection: exact against scipy, KKT with its multipliers, invariance, gradients."""

import io

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from scipy.optimize import minimize

from humancompatible_train.dual_optim import FairProjection


def scipy_projection(z, g, eps, bounds, S):
    present = [s for s in range(S) if (g == s).any()]
    cons = [{"type": "ineq", "fun": (lambda v, a=a, b=b: eps - (v[g == a].mean()
                                                               - v[g == b].mean()))}
            for a in present for b in present if a != b]
    x0 = np.clip(z, *bounds) if bounds else z.copy()
    res = minimize(lambda v: 0.5 * ((v - z) ** 2).sum(), x0, jac=lambda v: v - z,
                   constraints=cons, bounds=[bounds] * len(z) if bounds else None,
                   method="SLSQP", options={"ftol": 1e-15, "maxiter": 2000})
    return res


instances = st.tuples(
    st.integers(2, 4), st.integers(2, 24), st.integers(0, 10_000),
    st.floats(0.0, 0.3), st.booleans(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances)
def test_feasible_optimal_and_kkt(inst):
    S, N, seed, eps, boxed = inst
    rng = np.random.default_rng(seed)
    z = rng.normal(size=N) * 1.5 + rng.normal()
    g = rng.integers(0, S, size=N)
    bounds = (-float(rng.uniform(0.2, 1.5)), float(rng.uniform(0.2, 1.5))) if boxed else None
    proj = FairProjection(S, eps, bounds=bounds, dtype=torch.float64)
    q, info = proj.project(torch.tensor(z), torch.tensor(g))
    qn = q.numpy()
    present = [s for s in range(S) if (g == s).any()]
    means = np.array([qn[g == s].mean() for s in present])
    if len(present) >= 2:
        assert means.max() - means.min() <= eps + 1e-6
    if bounds and len(present) >= 2:  # one group: z comes back unchanged
        assert qn.min() >= bounds[0] - 1e-12 and qn.max() <= bounds[1] + 1e-12
    res = scipy_projection(z, g, eps, bounds, S)
    if res.success and len(present) >= 2:
        assert 0.5 * ((qn - z) ** 2).sum() <= res.fun + 1e-7
        np.testing.assert_allclose(qn, res.x, atol=1e-4)
    # KKT with the returned multipliers: stationarity for rows strictly inside the box,
    # sign and complementary slackness, and stationarity in the band position t.
    lam = proj.duals.view(-1, 2).numpy()  # (S, [low, up])
    counts = np.bincount(g, minlength=S)
    assert (lam >= 0).all()
    inside = (qn > (bounds[0] if bounds else -np.inf) + 1e-9) & \
        (qn < (bounds[1] if bounds else np.inf) - 1e-9)
    # A group whose rows are all on the box has a non-unique multiplier; otherwise the
    # multipliers balance (stationarity in the band position).
    if all(((g == s) & inside).any() for s in present):
        assert abs((lam[:, 0] - lam[:, 1]).sum()) <= 1e-7 * (1 + lam.sum())
    for s in present:
        rows = (g == s) & inside
        np.testing.assert_allclose(qn[rows] - z[rows], (lam[s, 0] - lam[s, 1]) / counts[s],
                                   atol=1e-7)
    if len(present) >= 2:
        t = means.min()
        for s, m in zip(present, means):
            if lam[s, 0] > 1e-7:
                assert m == pytest.approx(t, abs=1e-7)
            if lam[s, 1] > 1e-7:
                assert m == pytest.approx(means.max(), abs=1e-7)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 1000), st.booleans())
def test_permutation_invariance(seed, boxed):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(40, generator=gen, dtype=torch.float64)
    g = torch.randint(0, 3, (40,), generator=gen)
    perm = torch.randperm(40, generator=gen)
    proj = FairProjection(3, 0.05, bounds=(-1.0, 1.0) if boxed else None, dtype=torch.float64)
    q, _ = proj.project(z, g)
    qp, _ = proj.project(z[perm], g[perm])
    torch.testing.assert_close(qp, q[perm])


@pytest.mark.parametrize("bounds", [None, (-0.8, 0.9)])
def test_gradcheck(bounds):
    gen = torch.Generator().manual_seed(3)
    z = (torch.randn(12, generator=gen, dtype=torch.float64) * 1.2).requires_grad_()
    g = torch.tensor([0, 1, 2] * 4)
    proj = FairProjection(3, 0.05, bounds=bounds, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: proj.project(v, g)[0], (z,))


def test_equalized_odds_and_mean_residual():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(300, generator=gen, dtype=torch.float64)
    g = torch.randint(0, 3, (300,), generator=gen)
    y = (torch.rand(300, generator=gen) < 0.5).long()
    z = z + g + y
    eo = FairProjection(3, 0.05, bounds=(-2.0, 3.0), constraint="equalized_odds",
                        dtype=torch.float64)
    q, info = eo.project(z, g, y)
    for k in (0, 1):
        means = [q[(y == k) & (g == s)].mean() for s in range(3)]
        assert float(max(means) - min(means)) <= 0.05 + 1e-9
    assert eo.m == 2 * 2 * 3 and info.shifts.shape == (2, 3)
    mr = FairProjection(3, 0.05, bounds=(0.0, 1.0), constraint="mean_residual",
                        dtype=torch.float64)
    p = torch.rand(300, generator=gen, dtype=torch.float64)
    labels = (torch.rand(300, generator=gen) < 0.2 + 0.2 * g).double()
    q, _ = mr.project(p, g, labels)
    for s in range(3):
        assert abs(float(q[g == s].mean() - labels[g == s].mean())) <= 0.05 + 1e-9


def test_one_group_infeasible_nan_and_bad_eps():
    proj = FairProjection(2, 0.05)
    z = torch.tensor([0.3, 2.0, -1.0])
    q, info = proj.project(z, torch.tensor([1, 1, 1]))
    assert torch.equal(q, z) and info.unchanged and "fewer than two groups" in info.reason
    with pytest.raises(ValueError, match="NaN or Inf"):
        proj.project(torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"ids must lie in 0..1"):
        proj.project(torch.tensor([0.1, 0.2]), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="eps must be a number >= 0"):
        FairProjection(2, -0.1)
    mr = FairProjection(2, 0.05, bounds=(0.0, 1.0), constraint="mean_residual")
    with pytest.raises(ValueError, match=r"infeasible: group 1 needs a mean prediction in "
                                         r"\[1.95, 2.05\].*allow only \[0.0, 1.0\]"):
        mr.project(torch.tensor([0.2, 0.4, 0.6]), torch.tensor([0, 1, 1]),
                   torch.tensor([0.0, 2.0, 2.0]))
    with pytest.raises(ValueError, match="needs labels"):
        mr.project(torch.tensor([0.2]), torch.tensor([0]))
    with pytest.raises(TypeError, match="no dual step"):
        proj.step(torch.zeros(4))


def test_state_dict_and_training_through_the_layer():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    n = 2000
    s = (torch.rand(n, generator=gen) < 0.3).long()
    x = torch.randn(n, 5, generator=gen)
    x[:, 0] += s
    y = ((x[:, 0] + x[:, 1] + 0.3 * torch.randn(n, generator=gen)) > 0.5).float()
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    proj = FairProjection(2, 0.05, bounds=(-6.0, 6.0))
    bce = torch.nn.BCEWithLogitsLoss()
    for _ in range(5):
        for idx in torch.randperm(n, generator=gen).split(250):
            logit, _ = proj.project(model(x[idx]).squeeze(1), s[idx])
            means = [logit.detach()[s[idx] == k].mean() for k in (0, 1)]
            assert float((means[0] - means[1]).abs()) <= 0.05 + 1e-5
            opt.zero_grad()
            proj.forward_update(bce(logit, y[idx])).backward()
            opt.step()
    assert proj.duals.abs().sum() > 0
    buf = io.BytesIO()
    torch.save(proj.state_dict(), buf)
    buf.seek(0)
    other = FairProjection(2, 0.05, bounds=(-6.0, 6.0))
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(other.duals, proj.duals)
