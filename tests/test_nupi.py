"""nuPI: hand-worked steps, reductions, the initial-state convention, KKT convergence against
scipy, bitwise checkpoint resume, errors that change nothing, and 2-process gloo identity."""

import io
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from distributed_support import gloo_worker
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from humancompatible_train.dual_optim import ALM, nuPI

C = [[0.5, -1.0], [0.25, 2.0], [-0.75, 0.5], [1.0, 1.0]]


def by_hand(cs, lr, kp, ki, nu, lam0=0.0, lo=-np.inf, init_xi="first"):
    """The update written out independently: xi_{-1} = c_0 (or 0), then EMA; clamp every
    step."""
    lam = np.full(len(cs[0]), lam0, dtype=np.float64)
    xi = np.array(cs[0], dtype=np.float64) if init_xi == "first" else np.zeros(len(cs[0]))
    out = []
    for c in np.asarray(cs, dtype=np.float64):
        new_xi = nu * xi + (1 - nu) * c
        lam = np.maximum(lam + lr * (ki * c + kp * (new_xi - xi)), lo)
        xi = new_xi
        out.append(lam.copy())
    return out


def test_three_steps_by_hand():
    # lr 0.5, kp 2, ki 1, nu 0.5; c0 = (0.5, -1): xi0 = c0, step 1 = lr*ki*c0.
    dual = nuPI(2, lr=0.5, kappa_p=2.0, kappa_i=1.0, nu=0.5, dtype=torch.float64)
    dual.step(torch.tensor(C[0], dtype=torch.float64))
    assert dual.duals.tolist() == [0.25, -0.5]
    # xi1 = 0.5*(0.5,-1) + 0.5*(0.25,2) = (0.375, 0.5); step = 0.5*[(0.25,2) + 2*(-0.125,1.5)]
    dual.step(torch.tensor(C[1], dtype=torch.float64))
    assert dual.duals.tolist() == [0.25, 2.0]
    # xi2 = 0.5*(0.375,0.5) + 0.5*(-0.75,0.5) = (-0.1875, 0.5);
    # step = 0.5*[(-0.75,0.5) + 2*(-0.5625, 0)] = (-0.9375, 0.25)
    dual.step(torch.tensor(C[2], dtype=torch.float64))
    assert dual.duals.tolist() == [-0.6875, 2.25]


def test_zero_initial_average_by_hand():
    # init_xi="zero": xi_{-1} = 0, so the first step has its proportional term.
    dual = nuPI(2, lr=0.5, kappa_p=2.0, kappa_i=1.0, nu=0.5, init_xi="zero",
                dtype=torch.float64)
    # xi0 = 0.5 * c0 = (0.25, -0.5); step = 0.5 * [c0 + 2 * xi0] = (0.5, -1)
    dual.step(torch.tensor(C[0], dtype=torch.float64))
    assert dual.duals.tolist() == [0.5, -1.0]
    # xi1 = 0.5 * (0.25, -0.5) + 0.5 * (0.25, 2) = (0.25, 0.75);
    # step = 0.5 * [(0.25, 2) + 2 * (0, 1.25)] = (0.125, 2.25)
    dual.step(torch.tensor(C[1], dtype=torch.float64))
    assert dual.duals.tolist() == [0.625, 1.25]


@pytest.mark.parametrize("init_xi", ["first", "zero"])
@pytest.mark.parametrize("kp,ki,nu", [(2.0, 1.0, 0.5), (10.0, 1.0, 0.9), (0.0, 0.3, 0.0)])
def test_matches_independent_sequence_with_clamp(kp, ki, nu, init_xi):
    dual = nuPI(2, lr=0.3, kappa_p=kp, kappa_i=ki, nu=nu, is_ineq=True, init_duals=0.2,
                init_xi=init_xi, dtype=torch.float64)
    expected = by_hand(C, 0.3, kp, ki, nu, lam0=0.2, lo=0.0, init_xi=init_xi)
    for c, lam in zip(C, expected):
        dual.step(torch.tensor(c, dtype=torch.float64))
        np.testing.assert_allclose(dual.duals.numpy(), lam, rtol=0, atol=1e-15)


def test_unclamped_sum_is_the_pi_law():
    # lambda_{t+1} = lambda_0 + lr [ki sum c + kp (xi_t - c_0)] while no clamp acts.
    g = torch.Generator().manual_seed(0)
    cs = torch.randn(20, 3, generator=g, dtype=torch.float64)
    dual = nuPI(3, lr=0.2, kappa_p=4.0, kappa_i=0.5, nu=0.8, dtype=torch.float64)
    xi = cs[0].clone()
    for t, c in enumerate(cs):
        xi = 0.8 * xi + 0.2 * c
        dual.step(c)
        law = 0.2 * (0.5 * cs[: t + 1].sum(0) + 4.0 * (xi - cs[0]))
        torch.testing.assert_close(dual.duals, law, rtol=0, atol=1e-12)


def test_unclamped_sum_is_the_pi_law_from_zero():
    # init_xi="zero": lambda_{t+1} = lambda_0 + lr [ki sum c + kp xi_t].
    g = torch.Generator().manual_seed(2)
    cs = torch.randn(20, 3, generator=g, dtype=torch.float64)
    dual = nuPI(3, lr=0.2, kappa_p=4.0, kappa_i=0.5, nu=0.8, init_xi="zero",
                dtype=torch.float64)
    xi = torch.zeros(3, dtype=torch.float64)
    for t, c in enumerate(cs):
        xi = 0.8 * xi + 0.2 * c
        dual.step(c)
        law = 0.2 * (0.5 * cs[: t + 1].sum(0) + 4.0 * xi)
        torch.testing.assert_close(dual.duals, law, rtol=0, atol=1e-12)


def test_kappa_p_zero_is_dual_ascent_bitwise():
    nupi = nuPI(2, lr=0.7, kappa_p=0.0, kappa_i=1.0, nu=0.9, is_ineq=True)
    alm = ALM(2, lr=0.7, is_ineq=True)
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        c = torch.randn(2, generator=g)
        nupi.step(c)
        alm.step(c)
        assert torch.equal(nupi.duals, alm.duals)


def test_nu_zero_kp_equal_ki_is_optimistic_ascent():
    dual = nuPI(1, lr=0.1, kappa_p=1.0, kappa_i=1.0, nu=0.0, dtype=torch.float64)
    cs = [0.3, -0.2, 0.5, 0.1]
    lam, prev = 0.0, cs[0]
    for c in cs:
        lam += 0.1 * (2 * c - prev)
        prev = c
        dual.step(torch.tensor([c], dtype=torch.float64))
        assert dual.duals.item() == pytest.approx(lam, abs=1e-15)


def test_forward_before_update_keeps_the_graph():
    # The Lagrangian holds a snapshot of the multipliers: an in-place dual step between
    # forward and backward must neither raise nor change the gradient.
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    dual = nuPI(1, lr=1.0, init_duals=0.5, is_ineq=True)
    lagr = dual.forward(x.square().sum(), x.sum() - 1.0)
    dual.update((x.sum() - 1.0).detach())
    lagr.backward()
    torch.testing.assert_close(x.grad, 2 * x.detach() + 0.5)
    assert dual.duals.item() == pytest.approx(2.5)


def test_masked_entries_start_their_average_at_their_first_finite_value():
    dual = nuPI(2, lr=1.0, kappa_p=1.0, kappa_i=1.0, nu=0.5, check_finite=False,
                dtype=torch.float64)
    dual.step(torch.tensor([1.0, float("nan")], dtype=torch.float64))
    assert dual.duals.tolist() == [1.0, 0.0]
    dual.step(torch.tensor([1.0, 2.0], dtype=torch.float64))
    # Entry 1 starts now: its first step is plain ascent (xi_{-1} = 2).
    assert dual.duals.tolist() == [2.0, 2.0]


def test_masked_entries_from_zero_keep_a_zero_average():
    # init_xi="zero": an entry masked out at first still starts from xi_{-1} = 0.
    dual = nuPI(2, lr=1.0, kappa_p=1.0, kappa_i=1.0, nu=0.5, check_finite=False,
                init_xi="zero", dtype=torch.float64)
    dual.step(torch.tensor([1.0, float("nan")], dtype=torch.float64))
    assert dual.duals.tolist() == [1.5, 0.0]  # 1 + 1 * (0.5 - 0)
    dual.step(torch.tensor([1.0, 2.0], dtype=torch.float64))
    # Entry 0: xi 0.5 -> 0.75, step 1 + 0.25; entry 1: xi 0 -> 1, step 2 + 1.
    assert dual.duals.tolist() == [2.75, 3.0]


def test_init_xi_is_per_group_and_read_at_creation():
    dual = nuPI(lr=1.0, kappa_p=1.0, kappa_i=1.0, nu=0.5, dtype=torch.float64)
    dual.add_constraint_group(1, name="first")
    dual.add_constraint_group(1, name="zero", init_xi="zero")
    dual.step({"first": torch.tensor([1.0], dtype=torch.float64),
               "zero": torch.tensor([1.0], dtype=torch.float64)})
    assert dual.dual("first").item() == 1.0 and dual.dual("zero").item() == 1.5
    # Changing the key afterwards does not rewrite the state that exists.
    dual.param_groups[1]["init_xi"] = "first"
    dual.step({"first": torch.tensor([1.0], dtype=torch.float64),
               "zero": torch.tensor([1.0], dtype=torch.float64)})
    assert dual.dual("first").item() == 2.0 and dual.dual("zero").item() == 2.75


def test_adaptive_has_no_init_xi():
    from humancompatible_train.dual_optim import AdaptiveDual

    dual = AdaptiveDual(1)
    assert "init_xi" not in dual.param_groups[0]
    with pytest.raises(ValueError, match="init_xi"):
        dual.add_constraint_group(1, name="b", init_xi="zero")


def test_scheduler_scales_both_gains():
    dual = nuPI(1, lr=1.0, kappa_p=2.0, kappa_i=1.0, nu=0.0, dtype=torch.float64)
    sched = torch.optim.lr_scheduler.StepLR(dual, step_size=1, gamma=0.5)
    dual.step(torch.tensor([1.0], dtype=torch.float64))  # 1.0 * 1 * 1
    sched.step()
    dual.step(torch.tensor([3.0], dtype=torch.float64))  # 0.5 * (3 + 2 * 2)
    assert dual.duals.item() == pytest.approx(1.0 + 3.5)


# ------------------------------------------------------------------ convergence
A = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, -1.0]])
B = np.array([1.0, 0.5, 5.0])
TARGET = np.array([2.0, 2.0, 2.0])


def kkt_reference():
    res = minimize(lambda x: 0.5 * np.sum((x - TARGET) ** 2), np.zeros(3),
                   jac=lambda x: x - TARGET, method="SLSQP", tol=1e-14,
                   constraints=[{"type": "ineq", "fun": lambda x: B - A @ x,
                                 "jac": lambda x: -A}])
    assert res.success
    x = res.x
    active = np.abs(A @ x - B) < 1e-8
    lam = np.zeros(3)
    lam[active] = np.linalg.lstsq(A[active].T, TARGET - x, rcond=None)[0]
    return x, lam


@pytest.mark.parametrize("kp,nu", [(0.0, 0.0), (1.0, 0.0), (2.0, 0.5)])
def test_reaches_the_kkt_point_of_a_convex_qp(kp, nu):
    """min 1/2||x - a||^2 s.t. Ax <= b: within 1e-3 of scipy's x* and of lambda* (KKT)."""
    x_star, lam_star = kkt_reference()
    assert (lam_star > 0.1).sum() == 2
    At, bt, at = (torch.tensor(v) for v in (A, B, TARGET))
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=0.1)
    dual = nuPI(3, lr=0.2, kappa_p=kp, kappa_i=1.0, nu=nu, is_ineq=True, dtype=torch.float64)
    for _ in range(800):
        for _ in range(5):
            opt.zero_grad()
            dual.forward(0.5 * ((x - at) ** 2).sum(), At @ x - bt).backward()
            opt.step()
        dual.step(At @ x.detach() - bt)
    np.testing.assert_allclose(x.detach().numpy(), x_star, atol=1e-3)
    np.testing.assert_allclose(dual.duals.numpy(), lam_star, atol=1e-3)


# ------------------------------------------------------------------ checkpoints
def _train(model, opt, dual, steps):
    for step in steps:
        g = torch.Generator().manual_seed(100 + step)
        x = torch.randn(32, 4, generator=g)
        s = (torch.rand(32, generator=g) < 0.4).float()
        y = ((x[:, 0] + s) > 0.5).float()
        opt.zero_grad()
        p = torch.sigmoid(model(x).squeeze(1))
        gap = p[s == 1].mean() - p[s == 0].mean()
        rows = torch.stack([gap - 0.02, -gap - 0.02])
        dual.forward_update(torch.nn.functional.binary_cross_entropy(p, y), rows).backward()
        opt.step()


def _make():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2), nuPI(2, lr=0.5, is_ineq=True)


def _resume_matches(make, first, second):
    """Train ``first`` steps, checkpoint, train ``second``; a fresh copy loaded from the
    checkpoint and trained ``second`` holds the same multipliers bit for bit."""
    model, opt, dual = make()
    _train(model, opt, dual, first)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "dual": dual.state_dict()}, buf)
    _train(model, opt, dual, second)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2, opt2, dual2 = make()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    dual2.load_state_dict(ckpt["dual"])
    _train(model2, opt2, dual2, second)
    assert torch.equal(dual.duals, dual2.duals)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    return dual2


def test_resume_is_bitwise_identical():
    dual2 = _resume_matches(_make, range(40), range(40, 80))
    state = dual2.state[dual2.param_groups[0]["params"][0]]
    assert state["started"].dtype == torch.bool and state["xi"].dtype == torch.float32


def test_resume_from_zero_is_bitwise_identical():
    def make():
        model, opt, _ = _make()
        return model, opt, nuPI(2, lr=0.5, is_ineq=True, init_xi="zero")
    dual2 = _resume_matches(make, range(40), range(40, 80))
    assert dual2.param_groups[0]["init_xi"] == "zero"
    # Resuming at step 0 of a fresh group: the loaded state keeps xi_{-1} = 0.
    _resume_matches(make, range(0), range(0, 10))


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs", [{"kappa_p": -1.0}, {"kappa_i": float("nan")},
                                    {"nu": 1.0}, {"nu": -0.1}, {"lr": -1.0},
                                    {"kappa_p": True}, {"nu": "0.5"}, {"init_xi": "sgd"},
                                    {"init_xi": None}])
def test_bad_hyperparameters_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        nuPI(1, **kwargs)


def _snapshot(dual):
    buf = io.BytesIO()
    torch.save(dual.state_dict(), buf)
    return buf.getvalue()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(
    st.lists(st.floats(-2, 2), min_size=2, max_size=2),
    st.sampled_from([[float("nan"), 0.0], [0.0, float("inf")], [1.0], [1.0, 2.0, 3.0]]),
), min_size=1, max_size=8))
def test_errors_leave_the_state_unchanged(calls):
    dual = nuPI(2, lr=0.5, is_ineq=True, dtype=torch.float64)
    for values in calls:
        before = _snapshot(dual)
        try:
            dual.step(torch.tensor(values, dtype=torch.float64))
        except ValueError:
            assert _snapshot(dual) == before


# ------------------------------------------------------------------ distributed
LOCAL = {0: [[1.0, -2.0], [0.5, 0.5], [-1.0, 3.0]], 1: [[3.0, 0.0], [-0.5, 1.5], [2.0, -1.0]]}


def _duals(process_group=None):
    from humancompatible_train.dual_optim import AdaptiveDual

    return (nuPI(2, lr=0.5, kappa_p=2.0, nu=0.5, is_ineq=True, process_group=process_group),
            AdaptiveDual(2, lr=0.5, kappa_p=1.0, process_group=process_group))


def _body(rank, out_dir):
    duals = _duals(dist.group.WORLD)
    for c in LOCAL[rank]:
        for dual in duals:
            dual.forward_update(torch.tensor(0.0), torch.tensor(c))
    torch.save({"duals": [d.duals for d in duals]}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_two_processes_hold_identical_multipliers_equal_to_the_averaged_run():
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.start_processes(gloo_worker, args=(2, f"file://{init_file}", _body, tmp),
                           nprocs=2, join=True, start_method="spawn")
        r0 = torch.load(os.path.join(tmp, "rank0.pt"), weights_only=True)
        r1 = torch.load(os.path.join(tmp, "rank1.pt"), weights_only=True)
    singles = _duals()
    for c0, c1 in zip(LOCAL[0], LOCAL[1]):
        for single in singles:
            single.step((torch.tensor(c0) + torch.tensor(c1)) / 2)
    for a, b, single in zip(r0["duals"], r1["duals"], singles):
        assert torch.equal(a, b)
        assert torch.equal(a, single.duals)


# ------------------------------------------------------------------ AdaptiveDual
def adaptive_by_hand(cs, lr, beta, clip, offset, kappa_p=0.0, nu=0.9, lam0=0.0):
    """The standardised step written out independently (with the nuPI proportional term on
    the standardised values when kappa_p > 0; its average starts at the first value)."""
    lam = np.full(len(cs[0]), lam0)
    noise = np.zeros(len(cs[0]))
    weight = 0.0
    prev = xi = None
    out = []
    for c in np.asarray(cs, dtype=np.float64):
        d2 = c ** 2 if prev is None else 0.5 * (c - prev) ** 2
        noise = beta * noise + (1 - beta) * d2
        weight = beta * weight + (1 - beta)
        z = np.clip(c / np.sqrt(noise / weight), -clip, clip) + offset
        xi_prev = z if xi is None else xi
        xi = nu * xi_prev + (1 - nu) * z
        lam = lam + lr * (z + kappa_p * (xi - xi_prev))
        prev = c
        out.append(lam.copy())
    return out


def test_adaptive_defaults_by_hand():
    """The class defaults: lr 0.003, beta 0.99, clip 3, offset 0.15, kappa_p 10, nu 0.9; the
    offset shifts the target of inequality groups only (multipliers from 1, so that the
    clamp at 0 never acts on these steps)."""
    from humancompatible_train.dual_optim import AdaptiveDual

    ineq = AdaptiveDual(2, is_ineq=True, init_duals=1.0, dtype=torch.float64)
    eq = AdaptiveDual(2, init_duals=1.0, dtype=torch.float64)
    expected = adaptive_by_hand(C, 0.003, 0.99, 3.0, 0.15, kappa_p=10.0, nu=0.9, lam0=1.0)
    expected_eq = adaptive_by_hand(C, 0.003, 0.99, 3.0, 0.0, kappa_p=10.0, nu=0.9, lam0=1.0)
    for c, lam, lam_eq in zip(C, expected, expected_eq):
        ineq.step(torch.tensor(c, dtype=torch.float64))
        eq.step(torch.tensor(c, dtype=torch.float64))
        np.testing.assert_allclose(ineq.duals.numpy(), lam, rtol=0, atol=1e-15)
        np.testing.assert_allclose(eq.duals.numpy(), lam_eq, rtol=0, atol=1e-15)
    # The proportional term is there: without it the sequence differs.
    assert not np.allclose(expected[-1],
                           adaptive_by_hand(C, 0.003, 0.99, 3.0, 0.15, lam0=1.0)[-1])


def test_adaptive_equality_groups_aim_at_zero():
    """An offset would bias an equality: with noisy values around a fixed h, the multiplier of
    an equality group settles where the mean of h is 0 whatever the offset, while that of
    an inequality group keeps a margin below it."""
    from humancompatible_train.dual_optim import AdaptiveDual

    g = torch.Generator().manual_seed(3)
    noise = torch.randn(3000, generator=g, dtype=torch.float64) * 0.05
    plain = AdaptiveDual(1, offset=0.0, dtype=torch.float64)
    offset = AdaptiveDual(1, offset=0.5, dtype=torch.float64)
    # The same 2-group optimizer: the offset acts on the inequality group alone.
    mixed = AdaptiveDual(offset=0.5, dtype=torch.float64)
    mixed.add_constraint_group(1, name="eq")
    mixed.add_constraint_group(1, name="ineq", is_ineq=True, init_duals=5.0)
    for e in noise:
        plain.step(e.reshape(1))
        offset.step(e.reshape(1))
        mixed.step({"eq": e.reshape(1), "ineq": e.reshape(1)})
        assert torch.equal(offset.duals, plain.duals)
        assert torch.equal(mixed.dual("eq"), plain.duals)
    # Zero-mean values: the equality's multiplier wanders around where it started, the
    # inequality's climbs by about lr * offset a step.
    assert abs(plain.duals.item()) < 0.5
    assert mixed.dual("ineq").item() > 5.0 + 0.5 * 3000 * 0.003 * 0.5


def test_adaptive_first_step_and_sequence_by_hand():
    from humancompatible_train.dual_optim import AdaptiveDual

    dual = AdaptiveDual(2, lr=1.0, beta=0.5, clip=3.0, offset=0.0, kappa_p=0.0,
                        dtype=torch.float64)
    dual.step(torch.tensor(C[0], dtype=torch.float64))
    assert dual.duals.tolist() == [1.0, -1.0]  # z_0 = sign(c_0)
    # Step 2 by hand: v = 0.5*(0.125, 0.5) + 0.5*0.5*(0.0625, 9) = (0.078125, 2.5),
    # weight 0.75, z = c / sqrt(v / weight).
    dual.step(torch.tensor(C[1], dtype=torch.float64))
    z = np.array([0.25, 2.0]) / np.sqrt(np.array([0.078125, 2.5]) / 0.75)
    np.testing.assert_allclose(dual.duals.numpy(), [1.0, -1.0] + z, rtol=0, atol=1e-15)
    for c in C[2:]:
        dual.step(torch.tensor(c, dtype=torch.float64))
    np.testing.assert_allclose(dual.duals.numpy(),
                               adaptive_by_hand(C, 1.0, 0.5, 3.0, 0.0)[-1], atol=1e-14)


def test_adaptive_clip_offset_and_clamp():
    from humancompatible_train.dual_optim import AdaptiveDual

    cs = [[1.0], [1.2], [-5.0], [0.2], [-0.1]]
    dual = AdaptiveDual(1, lr=0.1, beta=0.9, clip=2.0, offset=0.5, kappa_p=0.0, is_ineq=True,
                        dtype=torch.float64)
    # The clamp does not feed back into z: the clamped sequence adds the same increments.
    unclamped = [0.0] + [v[0] for v in adaptive_by_hand(cs, 0.1, 0.9, 2.0, 0.5)]
    lam = 0.0
    for i, c in enumerate(cs):
        lam = max(0.0, lam + unclamped[i + 1] - unclamped[i])
        dual.step(torch.tensor(c, dtype=torch.float64))
        assert dual.duals.item() == pytest.approx(lam, abs=1e-14)
    # A constant value: its noise estimate decays to nothing, and the step is clipped at
    # lr * (clip + offset) = 0.25.
    const = AdaptiveDual(1, lr=0.1, beta=0.9, clip=2.0, offset=0.5, is_ineq=True,
                         dtype=torch.float64)
    for _ in range(200):
        before = const.duals.item()
        const.step(torch.tensor([1.0], dtype=torch.float64))
    assert const.duals.item() - before == pytest.approx(0.25)


def test_adaptive_is_nupi_on_standardised_values():
    from humancompatible_train.dual_optim import AdaptiveDual
    from humancompatible_train.dual_optim.adaptive import standardize

    g = torch.Generator().manual_seed(5)
    cs = torch.randn(30, 3, generator=g, dtype=torch.float64) * 0.05 + 0.01
    ada = AdaptiveDual(3, lr=0.2, kappa_p=3.0, nu=0.7, offset=0.1, is_ineq=True,
                       dtype=torch.float64)
    ref = nuPI(3, lr=0.2, kappa_p=3.0, nu=0.7, is_ineq=True, dtype=torch.float64)
    prev, noise, weight = (torch.zeros(3, dtype=torch.float64) for _ in range(3))
    started = torch.zeros(3, dtype=torch.bool)
    for c in cs:
        z = standardize(c, prev, noise, weight, started, beta=0.99, clip=3.0) + 0.1
        started.fill_(True)
        ada.step(c)
        ref.step(z)
        assert torch.equal(ada.duals, ref.duals)


def test_adaptive_step_scales_with_the_noise_not_the_batch():
    """Two streams with the same mean violation and 4x the noise: the multiplier of the
    noisier one moves about 4x less per step (the square-root batch-size scaling)."""
    from humancompatible_train.dual_optim import AdaptiveDual

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, generator=g, dtype=torch.float64)
    quiet = AdaptiveDual(1, offset=0.0, dtype=torch.float64)
    loud = AdaptiveDual(1, offset=0.0, dtype=torch.float64)
    for e in noise:
        quiet.step((0.01 + 0.01 * e).reshape(1))
        loud.step((0.01 + 0.04 * e).reshape(1))
    ratio = quiet.duals.item() / loud.duals.item()
    assert 3.0 < ratio < 5.0


def test_adaptive_reaches_the_kkt_point_within_its_dither():
    """Deterministic constraints: the clipped step dithers within lr * clip of lambda*."""
    from humancompatible_train.dual_optim import AdaptiveDual

    x_star, lam_star = kkt_reference()
    At, bt, at = (torch.tensor(v) for v in (A, B, TARGET))
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=0.1)
    dual = AdaptiveDual(3, lr=0.003, offset=0.0, is_ineq=True, dtype=torch.float64)
    lams = []
    for step in range(2000):
        for _ in range(5):
            opt.zero_grad()
            dual.forward(0.5 * ((x - at) ** 2).sum(), At @ x - bt).backward()
            opt.step()
        dual.step(At @ x.detach() - bt)
        if step >= 1500:
            lams.append(dual.duals.numpy())
    tol = 3 * 0.003 * 3.0  # a few clipped steps
    np.testing.assert_allclose(np.mean(lams, axis=0), lam_star, atol=tol)
    np.testing.assert_allclose(x.detach().numpy(), x_star, atol=tol)


def test_adaptive_resume_is_bitwise_identical():
    from humancompatible_train.dual_optim import AdaptiveDual

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                    torch.nn.Linear(8, 1))
        return (model, torch.optim.Adam(model.parameters(), lr=1e-2),
                AdaptiveDual(2, lr=0.05, kappa_p=1.0, is_ineq=True))

    _resume_matches(make, range(30), range(30, 60))


@pytest.mark.parametrize("kwargs", [{"beta": 1.0}, {"clip": 0.0}, {"offset": float("inf")},
                                    {"beta": -0.5}])
def test_adaptive_bad_hyperparameters_raise(kwargs):
    from humancompatible_train.dual_optim import AdaptiveDual

    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AdaptiveDual(1, **kwargs)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(
    st.lists(st.floats(-2, 2), min_size=2, max_size=2),
    st.sampled_from([[float("nan"), 0.0], [1.0], [1.0, 2.0, 3.0]]),
), min_size=1, max_size=8))
def test_adaptive_errors_leave_the_state_unchanged(calls):
    from humancompatible_train.dual_optim import AdaptiveDual

    dual = AdaptiveDual(2, is_ineq=True, dtype=torch.float64)
    for values in calls:
        before = _snapshot(dual)
        try:
            dual.step(torch.tensor(values, dtype=torch.float64))
        except ValueError:
            assert _snapshot(dual) == before


def test_adaptive_masked_entries_keep_their_noise_estimate():
    from humancompatible_train.dual_optim import AdaptiveDual

    dual = AdaptiveDual(2, lr=1.0, beta=0.5, offset=0.0, check_finite=False,
                        dtype=torch.float64)
    dual.step(torch.tensor([0.5, float("nan")], dtype=torch.float64))
    dual.step(torch.tensor([0.25, 2.0], dtype=torch.float64))
    # Entry 1's first finite value is its first step: z = sign(2) = 1.
    assert dual.duals[1].item() == 1.0
    ref = AdaptiveDual(1, lr=1.0, beta=0.5, offset=0.0, dtype=torch.float64)
    for c in (0.5, 0.25):
        ref.step(torch.tensor([c], dtype=torch.float64))
    assert dual.duals[0].item() == ref.duals.item()
