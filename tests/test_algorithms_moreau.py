"""MoreauEnvelope: hand-worked steps, mu = 0 identity, .grad untouched, checkpoints, KKT."""

import copy
import pickle

import numpy as np
import pytest
import torch
from algorithm_support import TARGET, A, B, reference, roundtrip, state_equal

from humancompatible_train.dual_optim import ALM, MoreauEnvelope


def scalar_run(every, steps=3):
    # F(x) = x^2 (gradient 2x), x0 = 1, SGD lr 0.5, mu = 1, beta = 0.5
    x = torch.tensor([1.0], requires_grad=True)
    opt = MoreauEnvelope(torch.optim.SGD([x], lr=0.5), mu=1.0, beta=0.5, every=every)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        (x**2).sum().backward()
        opt.step()
        out += [x.item(), opt.anchors[0].item()]
    return out


def test_three_steps_by_hand():
    # g = 2x + (x - z); x <- x - 0.5 g; z <- z/2 + x_new/2
    # t0: g=2 -> x=0, z=0.5; t1: g=-0.5 -> x=0.25, z=0.375; t2: g=0.375 -> x=0.0625, z=0.21875
    assert scalar_run(1) == pytest.approx([0.0, 0.5, 0.25, 0.375, 0.0625, 0.21875])


def test_anchor_moves_every_n_steps():
    # every=2: t0: x=0, z=1; t1: g=-1 -> x=0.5, z=0.75; t2: g=1-0.25 -> x=0.125, z=0.75
    assert scalar_run(2) == pytest.approx([0.0, 1.0, 0.5, 0.75, 0.125, 0.75])


def make_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    frozen = torch.nn.Parameter(torch.ones(3))  # never gets a gradient
    return model, frozen


def train(opt, model, steps, start=0):
    for t in range(start, start + steps):
        g = torch.Generator().manual_seed(t)
        x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


@pytest.mark.parametrize("inner", [torch.optim.SGD, torch.optim.Adam])
def test_mu_zero_is_the_inner_optimizer_bit_for_bit(inner):
    m1, f1 = make_model()
    m2, f2 = make_model()
    plain = inner(list(m1.parameters()) + [f1], lr=0.05)
    wrapped = MoreauEnvelope(inner(list(m2.parameters()) + [f2], lr=0.05), mu=0.0, beta=0.3)
    train(plain, m1, 20)
    train(wrapped, m2, 20)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_grad_left_as_found_and_params_without_grad_skipped():
    model, frozen = make_model()
    opt = MoreauEnvelope(torch.optim.SGD(list(model.parameters()) + [frozen], lr=0.1), mu=3.0)
    train(opt, model, 2)
    before = {p: (p.grad, p.grad.clone()) for p in model.parameters()}
    opt.step()
    for p, (obj, values) in before.items():
        assert p.grad is obj and torch.equal(p.grad, values)
    assert frozen.grad is None and torch.equal(frozen, torch.ones(3))
    assert torch.equal(opt.anchors[-1], torch.ones(3))


def test_param_groups_are_the_inner_ones_and_schedulers_act_on_them():
    model, _ = make_model()
    inner = torch.optim.SGD(model.parameters(), lr=1.0)
    opt = MoreauEnvelope(inner, mu=1.0)
    assert opt.param_groups is inner.param_groups
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train(opt, model, 2)
    sched.step()
    assert inner.param_groups[0]["lr"] == 0.5


def test_resume_and_copies():
    model, frozen = make_model()

    def build(model, frozen):
        return MoreauEnvelope(torch.optim.Adam(list(model.parameters()) + [frozen], lr=0.01),
                              mu=2.0, beta=0.3, every=3)

    opt = build(model, frozen)
    train(opt, model, 7)
    ckpt = roundtrip({"model": model.state_dict(), "opt": opt.state_dict()})
    twin = copy.deepcopy((model, opt))
    pickled = pickle.loads(pickle.dumps((model, opt)))
    train(opt, model, 8, start=7)

    model2, frozen2 = make_model()
    opt2 = build(model2, frozen2)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    for m, o in ((model2, opt2), twin, pickled):
        train(o, m, 8, start=7)
        assert state_equal(o.state_dict(), opt.state_dict())
        for p, q in zip(model.parameters(), m.parameters()):
            assert torch.equal(p, q)


def test_bad_state_dict_changes_nothing():
    model, frozen = make_model()
    opt = MoreauEnvelope(torch.optim.Adam(model.parameters(), lr=0.01), mu=2.0)
    train(opt, model, 3)
    before = opt.state_dict()
    for broken, match in [
        (dict(before, anchors=before["anchors"][:-1]), r"anchors'\]: expected 4 tensors"),
        (dict(before, anchors=[torch.zeros(1)] + before["anchors"][1:]),
         r"anchors'\]\[0\]: expected a tensor of shape \(6, 4\)"),
        (dict(before, mu=-1.0), r"mu'\]: expected a finite number >= 0.0"),
        ({"inner": before["inner"]}, r"keys 'inner', 'anchors'"),
    ]:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(broken)
        assert state_equal(opt.state_dict(), before)


@pytest.mark.parametrize("kw, match", [
    (dict(mu=-0.1), r"mu: expected a finite number >= 0.0, got -0.1"),
    (dict(beta=1.5), r"beta: expected a finite number in \[0.0, 1.0\], got 1.5"),
    (dict(every=0), r"every: expected a positive int, got 0"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        MoreauEnvelope(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), **kw)
    with pytest.raises(ValueError, match="optimizer: expected a torch.optim.Optimizer"):
        MoreauEnvelope([torch.zeros(1)])


def test_smoothed_descent_ascent_reaches_the_kkt_point():
    # The proximal term vanishes at a fixed point (z = x), so the KKT point is unchanged;
    # tolerance 1e-3 on x* and lambda* from SLSQP + KKT.
    x_star, lam_star = reference(A, B, TARGET, "ineq")
    At, bt, at = (torch.tensor(v) for v in (A, B, TARGET))
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    primal = MoreauEnvelope(torch.optim.SGD([x], lr=0.1), mu=1.0, beta=0.5)
    dual = ALM(3, lr=0.2, is_ineq=True, dtype=torch.float64)
    for _ in range(3000):
        primal.zero_grad()
        dual.forward_update(0.5 * ((x - at) ** 2).sum(), At @ x - bt).backward()
        primal.step()
    np.testing.assert_allclose(x.detach().numpy(), x_star, atol=1e-3)
    np.testing.assert_allclose(dual.duals.numpy(), lam_star, atol=1e-3)
