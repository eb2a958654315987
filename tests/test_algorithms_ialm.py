"""iALM: hand-worked steps, the explicit penalty schedule, KKT convergence, resume, errors."""

import math

import numpy as np
import pytest
import torch
from algorithm_support import (
    A_EQ,
    B_EQ,
    TARGET,
    TARGET_EQ,
    A,
    B,
    call_strategy,
    check_resume,
    drive,
    gda,
    reference,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from humancompatible_train.dual_optim import ALM, iALM

ZERO = torch.tensor(0.0)


def test_three_steps_by_hand():
    # beta_k = 1 * 2^k, gamma = 1:
    # c=(3,4), |c|=5: w=min(1, 1/5)=0.2 -> lambda=(0.6, 0.8); beta -> 2
    # c=(0.3,0.4), |c|=0.5: w=min(2, 2)=2 -> lambda=(1.2, 1.6); beta -> 4
    # c=(-0.03,0.04), |c|=0.05: w=min(4, 20)=4 -> lambda=(1.08, 1.76); beta -> 8
    dual = iALM(2, lr=1.0, sigma=2.0, gamma=1.0)
    expected = [[0.6, 0.8], [1.2, 1.6], [1.08, 1.76]]
    for k, (c, lam) in enumerate(zip([[3.0, 4.0], [0.3, 0.4], [-0.03, 0.04]], expected)):
        dual.step(torch.tensor(c))
        assert dual.duals.tolist() == pytest.approx(lam, abs=1e-6)
        assert dual.beta(dual.param_groups[0]) == 2.0 ** (k + 1)
    # The Lagrangian pairs lambda_3 with beta_3 = 8: 1.08 * 1 + 8/2 * 1^2
    assert dual.forward(ZERO, torch.tensor([1.0, 0.0])).item() == pytest.approx(5.08)


def test_forward_update_uses_the_new_multipliers_and_penalty():
    dual = iALM(1, lr=0.5, sigma=3.0, gamma=math.inf, is_ineq=True)
    # w = beta_0 = 0.5: lambda = 0.5 * 2 = 1; then beta = 1.5: 1 * 2 + 1.5/2 * 4 = 5
    assert dual.forward_update(ZERO, torch.tensor(2.0)).item() == pytest.approx(5.0)


def test_outer_iterations_of_several_calls():
    # inner_steps=3: calls 1, 2 change nothing; call 3 steps with its own values.
    dual = iALM(1, lr=1.0, sigma=2.0, gamma=math.inf, inner_steps=3)
    for c in (5.0, -7.0):
        dual.step(torch.tensor(c))
        assert dual.duals.tolist() == [0.0] and dual.beta(dual.param_groups[0]) == 1.0
    dual.step(torch.tensor(0.25))
    assert dual.duals.tolist() == [0.25] and dual.beta(dual.param_groups[0]) == 2.0
    for c in (1.0, 1.0, 0.5):
        dual.step(torch.tensor(c))
    assert dual.duals.tolist() == [1.25]  # 0.25 + beta_1 * 0.5
    assert dual.state_dict()["state"][0] == {"step": 6, "outer": 2}


def test_inequality_projection_and_cap():
    dual = iALM(2, lr=10.0, gamma=0.5, is_ineq=True, beta_max=4.0, sigma=10.0)
    dual.step(torch.tensor([-3.0, 4.0]))  # w = min(10, 0.5/5) = 0.1 -> (0, 0.4)
    assert dual.duals.tolist() == pytest.approx([0.0, 0.4])
    assert dual.beta(dual.param_groups[0]) == 4.0  # min(100, 4)
    dual.param_groups[0]["sigma"] = 1e300
    for _ in range(3):
        dual.step(torch.tensor([0.0, 0.0]))  # |c| = 0: w = beta, lambda unchanged
    assert dual.beta(dual.param_groups[0]) == 4.0  # no overflow
    assert dual.duals.tolist() == pytest.approx([0.0, 0.4])


def test_reduces_to_alm_without_growth_or_cap():
    ialm = iALM(2, lr=0.7, sigma=1.0, gamma=math.inf, is_ineq=True)
    alm = ALM(2, lr=0.7, penalty=0.7, augmentation="quadratic", is_ineq=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        c = torch.randn(2, generator=g)
        a = ialm.forward_update(ZERO, c)
        b = alm.forward_update(ZERO, c)
        assert torch.equal(ialm.duals, alm.duals) and torch.equal(a, b)


def test_zero_dual_step_is_the_plain_lagrangian():
    for is_ineq in (False, True):
        dual = iALM(1, lr=0.0, init_duals=0.5, augmentation="hpr", is_ineq=is_ineq)
        assert dual.forward_update(ZERO, torch.tensor(3.0)).item() == pytest.approx(1.5)
        assert dual.duals.tolist() == [0.5]


@pytest.mark.parametrize("aug", ["quadratic", "hpr"])
def test_inequality_qp_reaches_kkt_point(aug):
    # Tolerance 1e-3 on x* and lambda* from SLSQP + KKT.
    x_star, lam_star = reference(A, B, TARGET, "ineq")
    dual = iALM(3, lr=0.5, sigma=1.002, beta_max=2.0, gamma=5.0, augmentation=aug,
                is_ineq=True, dtype=torch.float64)
    x, lam = gda(dual, A, B, TARGET, steps=800)
    np.testing.assert_allclose(x, x_star, atol=1e-3)
    np.testing.assert_allclose(lam, lam_star, atol=1e-3)


def test_equality_qp_reaches_kkt_point():
    x_star, lam_star = reference(A_EQ, B_EQ, TARGET_EQ, "eq")
    dual = iALM(2, lr=0.5, sigma=1.002, beta_max=2.0, gamma=5.0, dtype=torch.float64)
    x, lam = gda(dual, A_EQ, B_EQ, TARGET_EQ, steps=800)
    np.testing.assert_allclose(x, x_star, atol=1e-3)
    np.testing.assert_allclose(lam, lam_star, atol=1e-3)


def test_resume_is_bitwise_identical():
    dual = check_resume(lambda: iALM(2, lr=0.5, sigma=1.1, gamma=0.3, inner_steps=3,
                                     is_ineq=True))
    assert dual.state_dict()["state"][0]["outer"] == 13 and dual.duals.abs().sum() > 0


@pytest.mark.parametrize("kw, match", [
    (dict(sigma=0.5), r"sigma: expected a finite number >= 1.0, got 0.5"),
    (dict(gamma=0.0), r"gamma: expected a number \(not NaN\) > 0.0, got 0.0"),
    (dict(inner_steps=0), r"inner_steps: expected a positive int, got 0"),
    (dict(augmentation=None), r"augmentation: expected one of \('quadratic', 'hpr'\)"),
    (dict(lr=math.inf), r"lr: expected a finite number >= 0.0"),
    (dict(beta_max=-1.0), r"beta_max: expected"),
])
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        iALM(1, **kw)


@settings(max_examples=25, deadline=None)
@given(st.lists(call_strategy(2), min_size=1, max_size=8))
def test_errors_change_nothing(calls):
    drive(iALM(2, lr=0.5, sigma=1.5, gamma=0.7, inner_steps=2, is_ineq=True), 2, calls)


def test_unchecked_mode_leaves_non_finite_entries_out():
    # NaN entry: lambda kept, and the norm is over the finite entries: w = min(1, 1/5)
    dual = iALM(3, lr=1.0, gamma=1.0, init_duals=0.5, check_finite=False)
    dual.step(torch.tensor([float("nan"), 3.0, 4.0]))
    assert dual.duals.tolist() == pytest.approx([0.5, 1.1, 1.3])


def test_scheduler_written_values_are_checked_before_the_next_step():
    from algorithm_support import state_equal

    dual = iALM(1, lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(dual, lambda e: 1.0 if e == 0 else -1.0)
    dual.step(torch.tensor(0.2))
    sched.step()
    before = dual.state_dict()
    with pytest.raises(ValueError, match=r"lr: expected a finite number >= 0.0"):
        dual.forward_update(ZERO, torch.tensor(0.2))
    assert state_equal(before, dual.state_dict())
