"""Full-batch gradient descent-ascent reaches the known optimum (x*, lambda*) of convex QPs.

The truth comes from scipy's SLSQP (x*) and the KKT stationarity system on its active set
(lambda*), both computed independently of the library.
"""

import numpy as np
import pytest
import torch
from algorithm_support import A_EQ, B_EQ, TARGET, TARGET_EQ, A, B, gda, reference

from humancompatible_train.dual_optim import ALM, PrimalDual

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
    A2, b2, a2 = A_EQ, B_EQ, TARGET_EQ
    x_star, lam_star = reference(A2, b2, a2, "eq")
    x, lam = gda(EQ[name](), A2, b2, a2, steps=800)
    np.testing.assert_allclose(x, x_star, atol=1e-3)
    np.testing.assert_allclose(lam, lam_star, atol=1e-3)
