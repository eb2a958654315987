"""SSG: the switch by hand, gradients of the switched objective, convergence, resume, errors."""

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
    reference,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from humancompatible_train.dual_optim import SSG


def test_switch_by_hand():
    dual = SSG(2, lr=2.0, tol=0.1)
    loss = torch.tensor(5.0, requires_grad=True)
    c = torch.tensor([0.05, 0.3], requires_grad=True)
    lagr = dual.forward_update(loss, c)  # excess (-0.05, 0.2): on c_2, weight 2
    assert bool(dual.on_constraints) and dual.duals.tolist() == [0.0, 2.0]
    assert lagr.item() == pytest.approx(0.6)
    lagr.backward()
    assert loss.grad.item() == 0.0 and c.grad.tolist() == [0.0, 2.0]
    lagr = dual.forward_update(torch.tensor(5.0), torch.tensor([0.05, 0.1]))  # max excess 0
    assert not bool(dual.on_constraints) and dual.duals.tolist() == [0.0, 0.0]
    assert lagr.item() == 5.0
    assert dual.state_dict()["state"][0]["on_constraints"].dtype == torch.bool


@pytest.mark.parametrize("is_ineq", [True, False])
@pytest.mark.parametrize("check_finite", [True, False])
def test_one_constraint_by_hand(is_ineq, check_finite):
    """A single constraint (its own shorter step): lambda = lr [e > 0] for an inequality,
    lr c [e > 0] for an equality, with e = c - tol (|c| - tol); 0-d and (1,) values alike;
    a NaN in unchecked mode is left out (lambda 0, the loss descended)."""
    lr, tol = 1.5, 0.2
    dual = SSG(1, lr=lr, tol=tol, is_ineq=is_ineq, check_finite=check_finite)
    cases = [0.5, 0.1, -0.7, 0.2] + ([float("nan")] if not check_finite else [])
    for value in cases:
        for shape in ((), (1,)):
            loss = torch.tensor(3.0, requires_grad=True)
            c = torch.full(shape, value, requires_grad=True)
            excess = (value if is_ineq else abs(value)) - tol
            on = excess > 0  # False for NaN
            lam = (lr if is_ineq else lr * value) if on else 0.0
            lagr = dual.forward_update(loss, c)
            assert bool(dual.on_constraints) == on
            assert dual.duals.tolist() == [pytest.approx(lam)]
            lagr.backward()
            assert loss.grad.item() == (0.0 if on else 1.0)
            assert c.grad.reshape(-1).tolist() == [pytest.approx(lam)]


def test_one_group_of_inequalities_first_worst_on_ties_by_hand():
    dual = SSG(4, lr=0.5, tol=0.1)
    loss = torch.tensor(2.0, requires_grad=True)
    c = torch.tensor([0.3, 0.7, 0.7, -1.0], requires_grad=True)
    dual.forward_update(loss, c).backward()  # excess (0.2, 0.6, 0.6, -1.1): the first 0.6
    assert dual.duals.tolist() == [0.0, 0.5, 0.0, 0.0] and bool(dual.on_constraints)
    assert loss.grad.item() == 0.0 and c.grad.tolist() == [0.0, 0.5, 0.0, 0.0]
    dual.step(torch.tensor([0.1, 0.05, -2.0, 0.1]))  # max excess 0: the loss
    assert dual.duals.tolist() == [0.0] * 4 and not bool(dual.on_constraints)
    masked = SSG(3, lr=0.5, tol=0.0, check_finite=False)
    masked.step(torch.tensor([float("nan"), 0.2, 0.4]))
    assert masked.duals.tolist() == [0.0, 0.0, 0.5]


def test_worst_excess_over_groups_with_equalities_and_own_tolerances():
    dual = SSG(1, tol=0.0, name="a")
    dual.add_constraint_group(2, name="b", is_ineq=False, tol=0.5, lr=3.0)
    dual.step({"a": torch.tensor(0.2), "b": torch.tensor([-1.0, 0.3])})
    # excess a: 0.2; b: |c| - 0.5 = (0.5, -0.2): b[0] wins, sign -1, weight 3
    assert dual.duals.tolist() == [0.0, -3.0, 0.0]
    assert dual.forward(torch.tensor(7.0), torch.tensor([0.2, -1.0, 0.3])).item() == 3.0
    dual.step(torch.tensor([0.6, -1.0, 0.3]))  # a: 0.6 > 0.5: a wins
    assert dual.duals.tolist() == [1.0, 0.0, 0.0]


def test_equality_descends_half_the_square():
    dual = SSG(2, lr=2.0, tol=0.1, is_ineq=False)
    c = torch.tensor([0.05, -0.5], requires_grad=True)
    dual.forward_update(torch.tensor(1.0), c).backward()
    # |c| - tol = (-0.05, 0.4): the second; gradient of 2 * 1/2 c^2 is 2c = -1
    assert dual.duals.tolist() == [0.0, -1.0] and c.grad.tolist() == [0.0, -1.0]


def test_unchecked_mode_leaves_non_finite_entries_out_of_the_switch():
    dual = SSG(2, tol=-1.0, check_finite=False)  # a zeroed NaN would have excess 1 > 0
    dual.step(torch.tensor([float("nan"), -2.0]))
    assert not bool(dual.on_constraints)
    dual.step(torch.tensor([float("nan"), 0.5]))
    assert dual.duals.tolist() == [0.0, 1.0]


def test_inequality_qp_reaches_the_optimum():
    # Constraint steps when infeasible, loss steps otherwise, primal step 0.3 * 0.996^t:
    # x within 1e-3 of SLSQP's x*, violation below 1e-4. SSG has no multipliers to compare.
    x_star, _ = reference(A, B, TARGET, "ineq")
    At, bt, at = (torch.tensor(v) for v in (A, B, TARGET))
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=0.3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.996)
    dual = SSG(3, tol=0.0, dtype=torch.float64)
    for _ in range(3000):
        opt.zero_grad()
        dual.forward_update(0.5 * ((x - at) ** 2).sum(), At @ x - bt).backward()
        opt.step()
        sched.step()
    np.testing.assert_allclose(x.detach().numpy(), x_star, atol=1e-3)
    assert (At @ x.detach() - bt).max() < 1e-4


def test_equality_qp_reaches_the_optimal_value():
    # Loss steps only within tol = 5e-5 of the constraints, primal step 0.3 * 0.998^t:
    # objective within 1e-3 of SLSQP's, |A x - b| below 1e-4.
    x_star, _ = reference(A_EQ, B_EQ, TARGET_EQ, "eq")
    At, bt, at = (torch.tensor(v) for v in (A_EQ, B_EQ, TARGET_EQ))
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=0.3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.998)
    dual = SSG(2, tol=5e-5, is_ineq=False, dtype=torch.float64)
    for _ in range(3000):
        opt.zero_grad()
        dual.forward_update(0.5 * ((x - at) ** 2).sum(), At @ x - bt).backward()
        opt.step()
        sched.step()
    f = 0.5 * ((x.detach() - at) ** 2).sum()
    assert abs(f - 0.5 * ((torch.tensor(x_star) - at) ** 2).sum()) < 1e-3
    assert (At @ x.detach() - bt).abs().max() < 1e-4


def test_resume_is_bitwise_identical():
    check_resume(lambda: SSG(2, lr=0.5, tol=0.01))


@pytest.mark.parametrize("kw, match", [
    (dict(lr=-1.0), r"lr.* got -1.0"),
    (dict(tol=float("nan")), r"tol: expected a finite number, got nan"),
])
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        SSG(1, **kw)


@settings(max_examples=25, deadline=None)
@given(st.lists(call_strategy(2), min_size=1, max_size=8))
def test_errors_change_nothing(calls):
    drive(SSG(2, tol=0.1), 2, calls)
