"""Independent references for the projection tests: the same problem solved by SciPy's SLSQP,
the KKT conditions checked with the returned multipliers, and a switch between the solver's
paths. Imported by the test modules; holds no tests."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from humancompatible_train._projection import batch, pair, solver
from humancompatible_train.dual_optim import projection


def scipy_projection(z, cells, eps, bounds, residual_targets=None):
    """min 1/2 |q - z|^2 over the same constraints, by SLSQP (tests only).

    ``cells``: list of index arrays that must share a band (one list per class), or, with
    ``residual_targets``, one index array per group with its own target mean."""
    cons = []
    if residual_targets is None:
        for cls in cells:
            for a in cls:
                for b in cls:
                    if a is not b:
                        cons.append({"type": "ineq",
                                     "fun": lambda v, a=a, b=b: eps - (v[a].mean() - v[b].mean())})
    else:
        for idx, yb in zip(cells, residual_targets):
            cons.append({"type": "ineq", "fun": lambda v, i=idx, y=yb: eps - (v[i].mean() - y)})
            cons.append({"type": "ineq", "fun": lambda v, i=idx, y=yb: eps + (v[i].mean() - y)})
    starts = [np.clip(z, *bounds) if bounds else z.copy(),
              np.full_like(z, 0.5 * sum(bounds) if bounds else z.mean())]
    for x0 in starts:  # SLSQP occasionally stalls at a start on a kink; then try another
        res = minimize(lambda v: 0.5 * ((v - z) ** 2).sum(), x0, jac=lambda v: v - z,
                       constraints=cons, bounds=[bounds] * len(z) if bounds else None,
                       method="SLSQP", options={"ftol": 1e-16, "maxiter": 3000})
        if res.success:
            break
    return res


def assert_matches_scipy(q, z, res):
    """q is at least as good as scipy's point and within 1e-6 of it, up to scipy's own
    suboptimality: for this 1-strongly convex objective a feasible x has
    |x - q*|^2 <= 2 (f(x) - f*), so SLSQP stopping early (it does at eps = 0) is allowed for."""
    f_q = 0.5 * ((q - z) ** 2).sum()
    assert f_q <= res.fun + 1e-9
    slack = np.sqrt(2 * max(0.0, res.fun - f_q))
    assert np.abs(q - res.x).max() <= 1e-6 + slack


def instance(seed, S, N, boxed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=N) * 1.5 + rng.normal()
    g = rng.integers(0, S, size=N)
    bounds = (-float(rng.uniform(0.2, 1.5)), float(rng.uniform(0.2, 1.5))) if boxed else None
    return rng, z, g, bounds


def check_kkt(q, z, g, lam, eps, bounds, present, tol=1e-7):
    """KKT of the band problem with the returned multipliers (one label class)."""
    lam = lam.reshape(-1, 2)
    lo, hi = bounds if bounds else (-np.inf, np.inf)
    assert (lam >= 0).all()
    counts = np.bincount(g, minlength=lam.shape[0])
    # Stationarity in q: rows strictly inside the box move by (low - up) / n_g; rows on a
    # bound have the gradient pointing out of the box.
    inside = (q > lo + 1e-9) & (q < hi - 1e-9)
    for s in present:
        shift = (lam[s, 0] - lam[s, 1]) / counts[s]
        rows = (g == s) & inside
        np.testing.assert_allclose(q[rows] - z[rows], shift, atol=tol)
        assert (z[(g == s) & (q <= lo + 1e-9)] + shift <= lo + tol).all()
        assert (z[(g == s) & (q >= hi - 1e-9)] + shift >= hi - tol).all()
    # Stationarity in the band position and complementary slackness.
    assert abs((lam[:, 0] - lam[:, 1]).sum()) <= tol * (1 + lam.sum())
    means = {s: q[g == s].mean() for s in present}
    t = min(means.values())
    for s in present:
        if lam[s, 0] > tol:
            assert means[s] == pytest.approx(t, abs=tol)
        if lam[s, 1] > tol:
            assert means[s] == pytest.approx(t + eps, abs=tol)
    for s in set(range(lam.shape[0])) - set(present):
        assert (lam[s] == 0).all()


def use_path(monkeypatch, path):
    """Run the solver on one of its paths: ``"host"`` (CPU: the two-group case on the host,
    NumPy below a size), ``"host-torch"`` (the same with its O(N) work in torch) or
    ``"device"`` (tensor operations only, as on an accelerator)."""
    if path == "device":
        for module in (batch, solver, projection):
            monkeypatch.setattr(module, "host_branch", lambda device: False)
    elif path == "host-torch":
        monkeypatch.setattr(pair, "_NUMPY_ROWS", 0)
