"""Hand-worked three-step update sequences; every expected number was computed by hand."""

import math

import pytest
import torch

from humancompatible_train.dual_optim import ALM, PrimalDual


def run(dual, cs):
    out = []
    for c in cs:
        dual.step(torch.tensor(c))
        out.append(dual.duals.tolist())
    return out


def approx(rows):
    return [pytest.approx(r, abs=1e-6) for r in rows]


def test_plain_dual_ascent_inequality_clamps_at_zero():
    # lambda <- max(0, lambda + 0.5 c)
    assert run(ALM(2, lr=0.5, is_ineq=True), [[1.0, -1.0], [-3.0, 2.0], [1.0, 0.0]]) == approx(
        [[0.5, 0.0], [0.0, 1.0], [0.5, 1.0]])


def test_momentum_without_dampening():
    # b: 1, 0.5*1 - 1 = -0.5, 0.5*-0.5 + 2 = 1.75 ; lambda: 0.1, 0.05, 0.225
    assert run(ALM(1, lr=0.1, momentum=0.5, is_ineq=True), [1.0, -1.0, 2.0]) == approx(
        [[0.1], [0.05], [0.225]])


def test_momentum_with_dampening():
    # b: 0.5*2 = 1, 0.5 + 1 = 1.5, 0.75 - 2 = -1.25 ; lambda: 1, 2.5, 1.25 (equality: no clamp)
    assert run(ALM(1, lr=1.0, momentum=0.5, dampening=0.5), [2.0, 2.0, -4.0]) == approx(
        [[1.0], [2.5], [1.25]])


def test_restart_zeroes_satisfied_constraints():
    assert run(ALM(2, lr=1.0, is_ineq=True, restart=True),
               [[1.0, 0.5], [2.0, -0.1], [-0.5, 0.3]]) == approx(
        [[1.0, 0.5], [3.0, 0.0], [0.0, 0.3]])


def test_dual_range_clamps_both_sides():
    assert run(ALM(1, lr=1.0, dual_range=(-1.0, 0.25)), [0.2, 0.2, -2.0]) == approx(
        [[0.2], [0.25], [-1.0]])
    # Inequality groups never go below zero, whatever the range says.
    dual = ALM(1, lr=1.0, is_ineq=True, dual_range=(-5.0, 1.0))
    assert dual.param_groups[0]["dual_range"] == (0.0, 1.0)
    assert run(dual, [-2.0, 3.0, 0.5]) == approx([[0.0], [1.0], [1.0]])


def test_hpr_lagrangian_sequence():
    # rho = 2, lr = 0.5, lambda_0 = (0.5, 0.2); term = (|[lambda + rho c]_+|^2 - |lambda|^2)/4
    dual = ALM(2, lr=0.5, penalty=2.0, augmentation="hpr", is_ineq=True, init_duals=[0.5, 0.2])
    zero = torch.tensor(0.0)
    assert dual.forward(zero, torch.tensor([0.1, -0.3])).item() == pytest.approx(0.05)
    expected = [([0.55, 0.05], 0.064375), ([0.65, 0.1], 0.19), ([0.45, 0.1], -0.050625)]
    for c, (lam, value) in zip([[0.1, -0.3], [0.2, 0.1], [-0.4, 0.0]], expected):
        lagr = dual.forward_update(zero, torch.tensor(c))
        assert dual.duals.tolist() == pytest.approx(lam)
        assert lagr.item() == pytest.approx(value)


def test_quadratic_augmentation_values():
    ineq = ALM(1, penalty=2.0, augmentation="quadratic", is_ineq=True, init_duals=0.5)
    eq = ALM(1, penalty=2.0, augmentation="quadratic", init_duals=0.5)
    zero = torch.tensor(0.0)
    assert ineq.forward(zero, torch.tensor(0.3)).item() == pytest.approx(0.15 + 0.09)
    assert ineq.forward(zero, torch.tensor(-0.3)).item() == pytest.approx(-0.15)
    assert eq.forward(zero, torch.tensor(-0.3)).item() == pytest.approx(-0.15 + 0.09)
    # penalty without an augmentation name means quadratic, read at use: a penalty set later
    # takes effect too
    implicit = ALM(1, penalty=2.0, is_ineq=True, init_duals=0.5)
    assert implicit.param_groups[0]["augmentation"] is None
    assert implicit.forward(zero, torch.tensor(0.3)).item() == pytest.approx(0.15 + 0.09)
    later = ALM(1, is_ineq=True, init_duals=0.5)
    assert later.forward(zero, torch.tensor(0.3)).item() == pytest.approx(0.15)
    later.param_groups[0]["penalty"] = 2.0
    assert later.forward(zero, torch.tensor(0.3)).item() == pytest.approx(0.15 + 0.09)


def test_primal_dual_sqrt_schedule():
    s2, s3 = 0.5 / math.sqrt(2), 0.5 / math.sqrt(3)
    assert run(PrimalDual(1, eta_0=0.5), [1.0, 1.0, -1.0]) == approx(
        [[0.5], [0.5 + s2], [0.5 + s2 - s3]])
    assert [PrimalDual(1).step_size(PrimalDual(1).param_groups[0], t) for t in (1, 4, 9)] == \
        approx([0.5, 0.25, 0.5 / 3])


def test_primal_dual_constant_and_callable_schedules():
    assert run(PrimalDual(1, eta_0=0.5, decay="constant"), [1.0, 1.0, 1.0]) == approx(
        [[0.5], [1.0], [1.5]])
    assert run(PrimalDual(1, decay=lambda t: 1.0 / t), [1.0, 1.0, 1.0]) == approx(
        [[1.0], [1.5], [1.5 + 1 / 3]])
    # inequality: projection onto lambda >= 0 after each step
    assert run(PrimalDual(1, eta_0=1.0, is_ineq=True), [-1.0, 4.0, -10.0]) == approx(
        [[0.0], [4 / math.sqrt(2)], [0.0]])


def test_groups_with_their_own_hyperparameters():
    dual = ALM(1, lr=0.1, is_ineq=True, name="fair")
    dual.add_constraint_group(2, name="budget", lr=1.0, is_ineq=False)
    dual.step({"fair": torch.tensor(1.0), "budget": torch.tensor([1.0, -2.0])})
    assert dual.duals.tolist() == pytest.approx([0.1, 1.0, -2.0])
    assert dual.names == ["fair", "budget"] and dual.m == 3
    assert dual.dual("budget").tolist() == pytest.approx([1.0, -2.0])
