"""Full-batch gradient descent-ascent reaches the known optimum (x*, lambda*) of convex QPs.

The truth comes from scipy's SLSQP (x*) and the KKT stationarity system on its active set
(lambda*), both computed independently of the library.
"""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from humancompatible_train.dual_optim import ALM, PrimalDual

A = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, -1.0]])
B = np.array([1.0, 0.5, 5.0])
TARGET = np.array([2.0, 2.0, 2.0])


def reference(A, b, a, kind):
    """x* = argmin 1/2||x - a||^2 s.t. A x <= b (kind 'ineq') or A x = b ('eq'); lambda* by KKT."""
    cons = {
        "type": "ineq" if kind == "ineq" else "eq",
        "fun": (lambda x: b - A @ x) if kind == "ineq" else (lambda x: A @ x - b),
        "jac": (lambda x: -A) if kind == "ineq" else (lambda x: A),
    }
    res = minimize(lambda x: 0.5 * np.sum((x - a) ** 2), np.zeros(len(a)), jac=lambda x: x - a,
                   constraints=[cons], method="SLSQP", tol=1e-14)
    assert res.success
    x = res.x
    active = np.abs(A @ x - b) < 1e-8 if kind == "ineq" else np.ones(len(b), bool)
    lam = np.zeros(len(b))
    # Stationarity: x - a + A^T lambda = 0.
    lam[active] = np.linalg.lstsq(A[active].T, a - x, rcond=None)[0]
    return x, lam


def gda(dual, A, b, a, steps, primal_lr=0.1, inner=5):
    At, bt, at = (torch.tensor(v) for v in (A, b, a))
    x = torch.zeros(len(a), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=primal_lr)
    for _ in range(steps):
        for _ in range(inner):
            opt.zero_grad()
            dual.forward(0.5 * ((x - at) ** 2).sum(), At @ x - bt).backward()
            opt.step()
        dual.step(At @ x.detach() - bt)
    return x.detach().numpy(), dual.duals.numpy()


INEQ = {
    "alm-plain": lambda: ALM(3, lr=0.2, is_ineq=True, dtype=torch.float64),
    "alm-quadratic": lambda: ALM(3, lr=0.5, penalty=1.0, augmentation="quadratic", is_ineq=True,
                                 dtype=torch.float64),
    "alm-hpr": lambda: ALM(3, lr=1.0, penalty=1.0, augmentation="hpr", is_ineq=True,
                           dtype=torch.float64),
    "alm-momentum": lambda: ALM(3, lr=0.1, momentum=0.5, is_ineq=True, dtype=torch.float64),
    "primal-dual": lambda: PrimalDual(3, eta_0=1.0, is_ineq=True, dtype=torch.float64),
}


@pytest.mark.parametrize("name", sorted(INEQ))
def test_inequality_qp_reaches_kkt_point(name):
    x_star, lam_star = reference(A, B, TARGET, "ineq")
    assert (lam_star > 0.1).sum() == 2, "the instance should have two strictly active constraints"
    x, lam = gda(INEQ[name](), A, B, TARGET, steps=800)
    np.testing.assert_allclose(x, x_star, atol=1e-3)
    np.testing.assert_allclose(lam, lam_star, atol=1e-3)


EQ = {
    "alm-plain": lambda: ALM(2, lr=0.2, dtype=torch.float64),
    "alm-quadratic": lambda: ALM(2, lr=0.5, penalty=1.0, augmentation="quadratic",
                                 dtype=torch.float64),
    "alm-hpr": lambda: ALM(2, lr=0.5, penalty=1.0, augmentation="hpr", dtype=torch.float64),
    "primal-dual": lambda: PrimalDual(2, eta_0=1.0, dtype=torch.float64),
}


@pytest.mark.parametrize("name", sorted(EQ))
def test_equality_qp_reaches_kkt_point(name):
    A2, b2, a2 = A[:2], np.array([1.0, -0.5]), np.array([0.3, 2.0, -1.0])
    x_star, lam_star = reference(A2, b2, a2, "eq")
    x, lam = gda(EQ[name](), A2, b2, a2, steps=800)
    np.testing.assert_allclose(x, x_star, atol=1e-3)
    np.testing.assert_allclose(lam, lam_star, atol=1e-3)
