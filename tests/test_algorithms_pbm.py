"""PBM: penalty-barrier functions, hand-worked steps of every penalty rule, annealing, KKT,
resume, errors."""

import math

import numpy as np
import pytest
import torch
from algorithm_support import TARGET, A, B, call_strategy, check_resume, drive, gda, reference
from hypothesis import given, settings
from hypothesis import strategies as st

from humancompatible_train.dual_optim import PBM
from humancompatible_train.dual_optim.pbm import (
    penalty_barrier,
    penalty_barrier_derivative,
)

ZERO = torch.tensor(0.0)


def test_penalty_barrier_functions_by_hand():
    t = torch.tensor([1.0, 0.0, -0.5, -1.0, -1 / 3, -2.0], dtype=torch.float64)
    log_phi = [1.5, 0.0, -0.375, -0.25 * math.log(2.0) - 0.375, -1 / 3 + 1 / 18,
               -0.25 * math.log(4.0) - 0.375]
    rec_phi = [1.5, 0.0, (32 / 27) / 1.5 - 7 / 6, (32 / 27) / 2 - 7 / 6, -5 / 18,
               (32 / 27) / 3 - 7 / 6]
    assert penalty_barrier(t, "quadratic_logarithmic").tolist() == pytest.approx(log_phi)
    assert penalty_barrier(t, "quadratic_reciprocal").tolist() == pytest.approx(rec_phi)
    assert penalty_barrier_derivative(t, "quadratic_logarithmic").tolist() == pytest.approx(
        [2.0, 1.0, 0.5, 0.25, 2 / 3, 0.125])
    assert penalty_barrier_derivative(t, "quadratic_reciprocal").tolist() == pytest.approx(
        [2.0, 1.0, (32 / 27) / 2.25, (32 / 27) / 4, 2 / 3, (32 / 27) / 9])


@pytest.mark.parametrize("kind", ["quadratic_logarithmic", "quadratic_reciprocal"])
def test_derivative_is_the_gradient_and_finite_everywhere(kind):
    t = torch.linspace(-50, 5, 401, dtype=torch.float64, requires_grad=True)
    penalty_barrier(t, kind).sum().backward()
    assert torch.isfinite(t.grad).all()
    torch.testing.assert_close(t.grad, penalty_barrier_derivative(t.detach(), kind))
    assert (t.grad > 0).all()


def fixed(rule, **kw):
    return PBM(2, lr=0.5, penalty_update=rule, penalty_mult=0.5, anneal_dual=False,
               anneal_penalty=False, init_duals=1.0, **kw)


def test_three_steps_by_hand():
    # gamma = 0.5, p = 1 halved per step ("dimin"), phi' of the log variant:
    # c=(1,-1): phi'=(2, 0.25): lambda=(1.5, 0.625), p=0.5
    # c=(0.5,0): c/p=(1,0), phi'=(2,1): lambda=(2.25, 0.625), p=0.25
    # c=(-0.5,0.05): c/p=(-2,0.2), phi'=(0.125,1.2): lambda=(1.265625, 0.6875), p=0.125
    dual = fixed("dimin")
    for c, lam, p in [([1.0, -1.0], [1.5, 0.625], 0.5), ([0.5, 0.0], [2.25, 0.625], 0.25),
                      ([-0.5, 0.05], [1.265625, 0.6875], 0.125)]:
        dual.step(torch.tensor(c))
        assert dual.duals.tolist() == pytest.approx(lam)
        assert dual.penalties.tolist() == pytest.approx([p, p])
    # L = sum lambda p phi(c/p), c/p = (0.2, -0.8)
    expected = 1.265625 * 0.125 * 0.22 + 0.6875 * 0.125 * (-0.25 * math.log(1.6) - 0.375)
    assert dual.forward(ZERO, torch.tensor([0.025, -0.1])).item() == pytest.approx(expected)


@pytest.mark.parametrize("rule, penalties", [
    ("const", [1.0, 1.0]),
    ("dimin", [0.5, 0.5]),
    ("dimin_dual", [0.75, 0.3125]),            # 0.5 * 1 * lambda_new
    ("dimin_adapt", [0.625, 2.5]),             # d = (delta*2, 0.25): 0.5 + 0.5 / d
    ("aimd", [0.5, 1.1]),                      # violated: *0.5; satisfied: +0.1
    ("alm", [3.0, 1.25]),                      # rho * lambda_new
])
def test_each_penalty_rule_by_hand(rule, penalties):
    dual = fixed(rule, delta=2.0, rho=2.0, aimd_increase=0.1, penalty_range=(0.1, 3.0),
                 init_penalty=1.0)
    dual.step(torch.tensor([1.0, -1.0]))
    assert dual.duals.tolist() == pytest.approx([1.5, 0.625])
    assert dual.penalties.tolist() == pytest.approx(penalties, rel=1e-6)


def test_penalties_are_clamped_to_their_range():
    dual = fixed("dimin", penalty_range=(0.3, 1.0))
    for _ in range(3):
        dual.step(torch.tensor([1.0, 1.0]))
    assert dual.penalties.tolist() == pytest.approx([0.3, 0.3])


def test_schedules_anneal_per_epoch_and_independently():
    # Epoch 4, lr = 0.5: gamma_4 = 1 - 1/(sqrt 4 + 1/0.5) = 0.75; K_4 = 1 - 1/(2 + 2) = 0.75.
    both = PBM(1, lr=0.5, penalty_update="dimin", penalty_mult=0.5, init_duals=1.0)
    only_penalty = PBM(1, lr=0.5, penalty_update="dimin", penalty_mult=0.5, init_duals=1.0,
                       anneal_dual=False)
    for dual in (both, only_penalty):
        for _ in range(4):
            dual.end_epoch()
        dual.step(torch.tensor(1.0))  # phi'(1) = 2
    assert both.duals.tolist() == pytest.approx([0.75 + 0.25 * 2])
    assert only_penalty.duals.tolist() == pytest.approx([0.5 + 0.5 * 2])
    assert both.penalties.tolist() == pytest.approx([0.75])
    assert only_penalty.penalties.tolist() == pytest.approx([0.75])


def test_epoch_length_counts_steps():
    dual = PBM(1, lr=0.5, penalty_update="const", epoch_length=2)
    for _ in range(5):
        dual.step(torch.tensor(0.1))
    assert dual.state_dict()["state"][0]["epoch"] == 2
    with pytest.raises(ValueError, match=r"end_epoch: groups \['g0'\] count their epochs"):
        dual.end_epoch()


def test_forward_update_pairs_the_new_multipliers_and_penalties():
    dual = fixed("dimin")
    lagr = dual.forward_update(ZERO, torch.tensor([1.0, -1.0]))
    # lambda=(1.5, 0.625), p=0.5, c/p=(2,-2)
    expected = 1.5 * 0.5 * 4.0 + 0.625 * 0.5 * (-0.25 * math.log(4.0) - 0.375)
    assert lagr.item() == pytest.approx(expected)


def test_state_holds_no_callable_and_loads_weights_only():
    from algorithm_support import roundtrip, state_equal

    dual = PBM(2, penalty_update="aimd")
    dual.step(torch.tensor([0.3, -0.2]))
    dual.end_epoch()
    sd = roundtrip(dual.state_dict())
    fresh = PBM(2, penalty_update="aimd")
    fresh.load_state_dict(sd)
    assert state_equal(fresh.state_dict(), dual.state_dict())


@pytest.mark.parametrize("pbf", ["quadratic_logarithmic", "quadratic_reciprocal"])
def test_inequality_qp_reaches_kkt_point(pbf):
    # Tolerance 1e-3 on x* and lambda* from SLSQP + KKT; the inactive multiplier decays
    # geometrically towards 0.
    x_star, lam_star = reference(A, B, TARGET, "ineq")
    dual = PBM(3, lr=0.3, pbf=pbf, penalty_update="const", init_penalty=1.0,
               anneal_dual=False, anneal_penalty=False, dtype=torch.float64)
    x, lam = gda(dual, A, B, TARGET, steps=800)
    np.testing.assert_allclose(x, x_star, atol=1e-3)
    np.testing.assert_allclose(lam, lam_star, atol=1e-3)


def test_resume_is_bitwise_identical():
    dual = check_resume(lambda: PBM(2, lr=0.5, penalty_update="dimin_adapt",
                                    penalty_mult=0.7, epoch_length=7))
    assert dual.state_dict()["state"][0]["epoch"] == 5


@pytest.mark.parametrize("kw, match", [
    (dict(is_ineq=False), r"is_ineq: expected True"),
    (dict(pbf="exp"), r"pbf: expected one of"),
    (dict(penalty_update="cosine"), r"penalty_update: expected one of"),
    (dict(lr=1.5), r"lr: expected a finite number in \[0.0, 1.0\], got 1.5"),
    (dict(penalty_mult=0.0), r"penalty_mult: expected"),
    (dict(penalty_range=(0.0, 1.0)), r"penalty_range\[0\]: expected"),
    (dict(penalty_range=(1.0, 0.5)), r"penalty_range\[1\]: expected a finite number >= 1.0"),
    (dict(init_penalty=2.0), r"init_penalty: expected a finite number in \[0.1, 1.0\]"),
    (dict(epoch_length=0), r"epoch_length: expected a positive int"),
    (dict(anneal_dual="no"), r"anneal_dual: expected True or False"),
])
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        PBM(1, **kw)


@settings(max_examples=25, deadline=None)
@given(st.lists(call_strategy(2), min_size=1, max_size=8))
def test_errors_change_nothing(calls):
    drive(PBM(2, penalty_update="aimd", epoch_length=3), 2, calls)


def test_unchecked_mode_leaves_non_finite_entries_out():
    dual = fixed("dimin", check_finite=False)
    dual.step(torch.tensor([1.0, float("inf")]))
    assert dual.duals.tolist() == pytest.approx([1.5, 1.0])
    assert dual.penalties.tolist() == pytest.approx([0.5, 1.0])


def test_scheduler_written_lr_is_checked_before_the_next_step():
    from algorithm_support import state_equal

    dual = PBM(1, lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(dual, lambda e: 1.0 if e == 0 else 3.0)
    dual.step(torch.tensor(0.2))
    sched.step()
    before = dual.state_dict()
    with pytest.raises(ValueError, match=r"lr: expected a finite number in \[0.0, 1.0\]"):
        dual.step(torch.tensor(0.2))
    assert state_equal(before, dual.state_dict())
