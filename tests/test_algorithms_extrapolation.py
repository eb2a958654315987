"""Extragradient, optimistic and alternating updates: hand-worked steps, phases, KKT, resume."""

import numpy as np
import pytest
import torch
from algorithm_support import TARGET, A, B, reference, roundtrip, state_equal

from humancompatible_train.dual_optim import ALM, Extragradient, Optimistic, PrimalDual

# min 1/2 (x - 2)^2 s.t. x - 1 = 0, x0 = 0, lambda0 = 0, primal and dual steps 0.5


def scalar_problem():
    x = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([x], lr=0.5)
    dual = ALM(1, lr=0.5)
    return x, opt, dual


def losses(x):
    return 0.5 * ((x - 2.0) ** 2).sum(), x[0] - 1.0


def test_extragradient_two_steps_by_hand():
    # Step 1: grad at (0, 0) = -2 -> x_half = 1; c(0) = -1 -> lambda_half = -0.5.
    #         grad at (1, -0.5) = -1.5 -> x1 = 0 + 0.75; c(1) = 0 -> lambda1 = 0.
    # Step 2: grad at (0.75, 0) = -1.25 -> x_half = 1.375; c = -0.25 -> lambda_half = -0.125.
    #         grad at the midpoint = -0.625 - 0.125 -> x2 = 1.125; c = 0.375 -> lambda2 = 0.1875.
    x, opt, dual = scalar_problem()
    eg = Extragradient(opt, dual)
    eg.extrapolation(*losses(x))
    assert x.item() == 1.0 and dual.duals.item() == -0.5
    eg.step(*losses(x))
    assert x.item() == 0.75 and dual.duals.item() == 0.0
    assert eg.roll(lambda: losses(x)).item() == pytest.approx(0.5 * 1.25**2 - 0.25 * 0.0)
    assert x.item() == 1.125 and dual.duals.item() == 0.1875
    assert dual.state_dict()["state"][0]["step"] == 2  # once per extragradient step


def test_phases_out_of_order_raise_and_change_nothing():
    x, opt, dual = scalar_problem()
    eg = Extragradient(opt, dual)
    with pytest.raises(ValueError, match=r"Extragradient.step: expected extrapolation\(\)"):
        eg.step(*losses(x))
    assert x.item() == 0.0 and dual.duals.item() == 0.0
    eg.extrapolation(*losses(x))
    before = (x.detach().clone(), dual.state_dict(), eg.state_dict())
    with pytest.raises(ValueError, match=r"expected step\(\) to follow"):
        eg.extrapolation(*losses(x))
    with pytest.raises(ValueError, match=r"non-finite"):
        eg.step(losses(x)[0], x[0] * float("nan"))
    assert torch.equal(x.detach(), before[0])
    assert state_equal(dual.state_dict(), before[1]) and state_equal(eg.state_dict(), before[2])


def test_checkpoint_between_the_phases_resumes_exactly():
    x, opt, dual = scalar_problem()
    eg = Extragradient(opt, dual)
    eg.roll(lambda: losses(x))
    eg.extrapolation(*losses(x))
    ckpt = roundtrip({"x": x.detach().clone(), "opt": opt.state_dict(),
                      "dual": dual.state_dict(), "eg": eg.state_dict()})
    eg.step(*losses(x))
    x2, opt2, dual2 = scalar_problem()
    eg2 = Extragradient(opt2, dual2)
    with torch.no_grad():
        x2.copy_(ckpt["x"])
    opt2.load_state_dict(ckpt["opt"])
    dual2.load_state_dict(ckpt["dual"])
    eg2.load_state_dict(ckpt["eg"])
    eg2.step(*losses(x2))
    assert torch.equal(x, x2) and torch.equal(dual.duals, dual2.duals)
    with pytest.raises(ValueError, match=r"state_dict\['phase'\]: expected 0 or 1"):
        eg2.load_state_dict(dict(ckpt["eg"], phase=2))


def test_optimistic_three_steps_by_hand():
    # g_-1 = g_0, c_-1 = c_0; x <- x - 0.5 (2g - g_prev), lambda <- lambda + 0.5 (2c - c_prev)
    # t0 at (0, 0): g=-2, c=-1 -> x=1, lambda=-0.5
    # t1 at (1, -0.5): g=-1.5, c=0 -> 2g-g_prev=-1: x=1.5; 2c-c_prev=1: lambda=0
    # t2 at (1.5, 0): g=-0.5, c=0.5 -> 2g-g_prev=0.5: x=1.25; 2c-c_prev=1: lambda=0.5
    x, opt, dual = scalar_problem()
    og = Optimistic(opt, dual)
    seen = []
    for _ in range(3):
        og.zero_grad()
        lagr = og.forward_update(*losses(x))
        lagr.backward()
        grad = x.grad.clone()
        og.step()
        assert torch.equal(x.grad, grad)  # .grad left as found
        seen += [x.item(), dual.duals.item()]
    assert seen == pytest.approx([1.0, -0.5, 1.5, 0.0, 1.25, 0.5])


def test_forward_update_is_alternating_dual_then_primal():
    # Cooper's AlternatingDualPrimal: lambda_{t+1} = lambda_t + 0.5 c(x_t), then
    # x_{t+1} = x_t - 0.5 grad L(x_t, lambda_{t+1}).
    # t0: c=-1 -> lambda=-0.5; grad = -2 - 0.5 -> x = 1.25
    # t1: c=0.25 -> lambda=-0.375; grad = -0.75 - 0.375 -> x = 1.8125
    x, opt, dual = scalar_problem()
    seen = []
    for _ in range(2):
        opt.zero_grad()
        dual.forward_update(*losses(x)).backward()
        opt.step()
        seen += [x.item(), dual.duals.item()]
    assert seen == pytest.approx([1.25, -0.5, 1.8125, -0.375])


def qp_run(method, steps):
    At, bt, at = (torch.tensor(v) for v in (A, B, TARGET))
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=0.2)
    dual = ALM(3, lr=0.2, is_ineq=True, dtype=torch.float64)
    coord = method(opt, dual)

    def closure():
        return 0.5 * ((x - at) ** 2).sum(), At @ x - bt

    for _ in range(steps):
        if isinstance(coord, Extragradient):
            coord.roll(closure)
        else:
            coord.zero_grad()
            coord.forward_update(*closure()).backward()
            coord.step()
    return x.detach().numpy(), dual.duals.numpy()


@pytest.mark.parametrize("method", [Extragradient, Optimistic])
def test_inequality_qp_reaches_kkt_point(method):
    # Tolerance 1e-3 on x* and lambda* from SLSQP + KKT.
    x_star, lam_star = reference(A, B, TARGET, "ineq")
    x, lam = qp_run(method, 1500)
    np.testing.assert_allclose(x, x_star, atol=1e-3)
    np.testing.assert_allclose(lam, lam_star, atol=1e-3)


def test_optimistic_resume_is_bitwise_identical():
    def build():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        return model, Optimistic(opt, PrimalDual(2, eta_0=0.3, is_ineq=True))

    def run(model, og, steps):
        for t in steps:
            x = torch.randn(16, 4, generator=torch.Generator().manual_seed(t))
            out = torch.sigmoid(model(x)).squeeze(1)
            og.zero_grad()
            og.forward_update(out.var(), torch.stack([out.mean() - 0.3, 0.6 - out.max()])
                              ).backward()
            og.step()

    model, og = build()
    run(model, og, range(10))
    ckpt = roundtrip({"m": model.state_dict(), "o": og.optimizer.state_dict(),
                      "d": og.dual.state_dict(), "og": og.state_dict()})
    run(model, og, range(10, 20))
    model2, og2 = build()
    model2.load_state_dict(ckpt["m"])
    og2.optimizer.load_state_dict(ckpt["o"])
    og2.dual.load_state_dict(ckpt["d"])
    og2.load_state_dict(ckpt["og"])
    run(model2, og2, range(10, 20))
    assert state_equal(og.state_dict(), og2.state_dict())
    assert torch.equal(og.dual.duals, og2.dual.duals)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_bad_pairs_and_state():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="dual: expected a DualOptimizer"):
        Extragradient(opt, opt)
    with pytest.raises(ValueError, match="optimizer: expected a torch.optim.Optimizer"):
        Optimistic(ALM(1), ALM(1))
    og = Optimistic(opt, ALM(2))
    with pytest.raises(ValueError, match=r"state_dict\['constraints'\]: expected one tensor"):
        og.load_state_dict({"grads": [None], "constraints": [torch.zeros(3)]})
