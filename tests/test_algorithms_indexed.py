"""Partially observed constraints: only observed multipliers move and enter the Lagrangian."""

import numpy as np
import pytest
import torch
from algorithm_support import TARGET, A, B, reference, roundtrip, state_equal

from humancompatible_train.dual_optim import ALM, PBM, SSG, PrimalDual, iALM

ZERO = torch.tensor(0.0)
IDX = torch.tensor([3, 0])


def test_three_steps_by_hand_with_momentum():
    # b <- 0.5 b + c, lambda <- max(0, lambda + b), only at the observed entries.
    dual = ALM(4, lr=1.0, momentum=0.5, is_ineq=True)
    dual.step(torch.tensor([1.0, 2.0]), indices=torch.tensor([3, 1]))   # b=(0,2,0,1)
    dual.step(torch.tensor([-1.0]), indices=torch.tensor([3]))          # b3=-0.5
    dual.step(torch.tensor([4.0, 0.5]), indices=torch.tensor([0, 1]))   # b0=4, b1=1.5
    assert dual.duals.tolist() == [4.0, 3.5, 0.0, 0.5]
    assert dual.state_dict()["state"][0]["momentum_buffer"].tolist() == [4.0, 1.5, 0.0, -0.5]
    assert dual.state_dict()["state"][0]["step"] == 3


def test_lagrangian_holds_only_observed_terms():
    dual = ALM(4, lr=1.0, init_duals=[1.0, 2.0, 3.0, 4.0])
    values = torch.tensor([0.5, -1.0], requires_grad=True)
    lagr = dual.forward(torch.tensor(1.0), values, indices=IDX)
    assert lagr.item() == 1.0 + 4.0 * 0.5 + 1.0 * -1.0
    lagr.backward()
    assert values.grad.tolist() == [4.0, 1.0]
    lagr = dual.forward_update(ZERO, values.detach(), indices=IDX)  # lambda (0, 2, 3, 4.5)
    assert dual.duals.tolist() == [0.0, 2.0, 3.0, 4.5]
    assert lagr.item() == 4.5 * 0.5 + 0.0 * -1.0


def test_all_indices_in_any_order_equal_the_full_call():
    full, part = ALM(3, lr=0.5, momentum=0.3), ALM(3, lr=0.5, momentum=0.3)
    for c in ([1.0, -2.0, 0.5], [0.2, 0.1, -0.4]):
        full.step(torch.tensor(c))
        part.step(torch.tensor([c[2], c[0], c[1]]), indices=torch.tensor([2, 0, 1]))
    assert state_equal(full.state_dict(), part.state_dict())


SEPARABLE = {
    "alm": lambda: ALM(5, lr=0.5, momentum=0.5, is_ineq=True, init_duals=0.3),
    # Without momentum a zero step changes nothing: the step runs on the dense values as they
    # are (zeros where unobserved), not through the masked step.
    "alm_plain": lambda: ALM(5, lr=0.5, is_ineq=True, init_duals=0.3),
    "alm_unchecked": lambda: ALM(5, lr=0.5, is_ineq=True, init_duals=0.3, check_finite=False),
    "primal_dual": lambda: PrimalDual(5, eta_0=0.5, init_duals=0.3),
    "pbm": lambda: PBM(5, lr=0.5, penalty_update="dimin_adapt", epoch_length=2),
}


@pytest.mark.parametrize("name", sorted(SEPARABLE))
def test_observed_entries_step_as_in_a_full_step_and_the_others_stay(name):
    indexed, full = SEPARABLE[name](), SEPARABLE[name]()
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        idx = torch.randperm(5, generator=g)[:2]
        values = torch.randn(2, generator=g)
        before = indexed.state_dict()
        indexed.step(values, indices=idx)
        dense = torch.zeros(5).index_put((idx,), values)
        full.load_state_dict(before)
        full.step(dense)
        seen = torch.zeros(5, dtype=torch.bool).index_fill(0, idx, True)
        now, ref = indexed.state_dict(), full.state_dict()
        tensors = [(now["duals"][0], ref["duals"][0], before["duals"][0])] + [
            (v, ref["state"][0][k], before["state"][0][k])
            for k, v in now["state"][0].items() if isinstance(v, torch.Tensor) and v.dim()]
        for mine, theirs, old in tensors:
            assert torch.equal(mine[seen], theirs[seen])
            assert torch.equal(mine[~seen], old[~seen])


def test_norm_and_switch_over_the_observed_entries_only():
    ialm = iALM(4, lr=1.0, gamma=1.0)
    ialm.step(torch.tensor([3.0, 4.0]), indices=torch.tensor([2, 0]))  # w = 1/5
    assert ialm.duals.tolist() == pytest.approx([0.8, 0.0, 0.6, 0.0])
    ssg = SSG(3, tol=-1.0)  # an unobserved 0 would have excess 1
    ssg.step(torch.tensor([-2.0]), indices=torch.tensor([1]))
    assert not bool(ssg.on_constraints)


def test_groups_mix_indexed_and_full_values():
    dual = ALM(1, lr=1.0, name="budget")
    dual.add_constraint_group(4, name="per_class")
    dual.step({"budget": torch.tensor(0.5), "per_class": torch.tensor([1.0, 2.0])},
              indices={"per_class": torch.tensor([1, 2])})
    assert dual.duals.tolist() == [0.5, 0.0, 1.0, 2.0, 0.0]
    dual.step([torch.tensor(0.5), torch.tensor([-1.0])], indices=[None, torch.tensor([2])])
    assert dual.duals.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("values, indices, match", [
    (torch.ones(2), torch.tensor([0.0, 1.0]), r"indices: expected a 1-D torch.long tensor"),
    (torch.ones(2), torch.tensor([True, False, True, False]), r"torch.long tensor"),
    (torch.ones(2), torch.tensor([0, 4]), r"distinct indices in \[0, 4\), got 'out of range \[4\]"),
    (torch.ones(2), torch.tensor([-1, 2]), r"out of range \[-1\]"),
    (torch.ones(2), torch.tensor([1, 1]), r"repeated \[1\]"),
    (torch.ones(3), torch.tensor([0, 1]), r"values: expected shape \(2,\), one value per index"),
    (torch.ones(2, dtype=torch.float64), IDX, r"values: expected dtype torch.float32"),
    (torch.tensor([1.0, float("nan")]), IDX, r"non-finite value\(s\) in constraint group 'g0'"),
])
def test_bad_indices_raise_and_change_nothing(values, indices, match):
    dual = ALM(4, lr=1.0, momentum=0.5)
    dual.step(torch.tensor([1.0, 2.0]), indices=IDX)
    before = dual.state_dict()
    for call in (lambda: dual.step(values, indices=indices),
                 lambda: dual.forward_update(ZERO, values, indices=indices)):
        with pytest.raises(ValueError, match=match):
            call()
        assert state_equal(before, dual.state_dict())


def test_a_non_finite_value_is_reported_at_its_constraint_index_and_changes_nothing():
    dual = ALM(2, lr=1.0, name="budget")
    dual.add_constraint_group(5, name="per_class")
    dual.step([torch.tensor([0.1, 0.2]), torch.tensor([1.0])], indices=[None, torch.tensor([4])])
    before = dual.state_dict()
    values = [torch.tensor([0.1, 0.2]), torch.tensor([1.0, float("inf")])]
    idx = [None, torch.tensor([1, 3])]
    calls = {
        "step": lambda: dual.step(values, indices=idx),
        "forward_update": lambda: dual.forward_update(ZERO, values, indices=idx),
        "forward": lambda: dual.forward(ZERO, values, indices=idx),
        # As proxies the same values are refused as the dual step's; as the Lagrangian's
        # values beside finite proxies, as the constraints.
        "proxy": lambda: dual.forward_update(ZERO, [v.nan_to_num() for v in values], values,
                                             indices=idx),
        "lagrangian": lambda: dual.forward_update(ZERO, values,
                                                  [v.nan_to_num() for v in values],
                                                  indices=idx),
    }
    for name, call in calls.items():
        what = "constraints" if name in ("forward", "lagrangian") else (
            "constraint values for the dual step")
        with pytest.raises(ValueError, match=rf"^{what}: non-finite value\(s\) in constraint "
                           r"group 'per_class' at index \[3\] \(values \[inf\]\)"):
            call()
        assert state_equal(before, dual.state_dict()), name


def test_bad_indices_are_reported_before_non_finite_values():
    dual = ALM(4, lr=1.0)
    with pytest.raises(ValueError, match=r"repeated \[2\]"):
        dual.step(torch.tensor([float("nan"), 1.0]), indices=torch.tensor([2, 2]))
    assert dual.duals.tolist() == [0.0] * 4


def test_resume_with_indices_is_bitwise_identical():
    def run(dual, steps):
        for t in steps:
            g = torch.Generator().manual_seed(t)
            idx = torch.randperm(6, generator=g)[:3]
            dual.forward_update(ZERO, torch.randn(3, generator=g), indices=idx)

    dual = PBM(6, penalty_update="aimd", epoch_length=3)
    run(dual, range(5))
    saved = roundtrip(dual.state_dict())
    run(dual, range(5, 10))
    other = PBM(6, penalty_update="aimd", epoch_length=3)
    other.load_state_dict(saved)
    run(other, range(5, 10))
    assert state_equal(dual.state_dict(), other.state_dict())


def test_random_subsets_of_constraints_reach_the_kkt_point():
    # Each dual step observes 2 of the 3 constraints of the QP (randomised coordinate ascent
    # on the dual; the primal steps see them all); tolerance 1e-3 on x* and lambda* from
    # SLSQP + KKT.
    x_star, lam_star = reference(A, B, TARGET, "ineq")
    At, bt, at = (torch.tensor(v) for v in (A, B, TARGET))
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=0.1)
    dual = ALM(3, lr=0.3, is_ineq=True, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for _ in range(1500):
        idx = torch.randperm(3, generator=g)[:2]
        for _ in range(3):
            opt.zero_grad()
            dual.forward(0.5 * ((x - at) ** 2).sum(), At @ x - bt).backward()
            opt.step()
        dual.step((At @ x.detach() - bt)[idx], indices=idx)
    np.testing.assert_allclose(x.detach().numpy(), x_star, atol=1e-3)
    np.testing.assert_allclose(dual.duals.numpy(), lam_star, atol=1e-3)
