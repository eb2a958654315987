"""Resuming from a checkpoint continues the same trajectory, bit for bit."""

import io

import pytest
import torch

from humancompatible_train.dual_optim import ALM, PrimalDual


def batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(32, 5, generator=g)
    s = (torch.rand(32, generator=g) < 0.4).float()
    y = ((x[:, 0] + s) > 0.5).float()
    return x, s, y


def make(kind):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    if kind == "alm":
        dual = ALM(1, lr=0.5, momentum=0.3, penalty=1.0, augmentation="hpr", is_ineq=True)
    else:
        dual = PrimalDual(1, eta_0=0.5, is_ineq=True)
    dual.add_constraint_group(1, name="eq")
    sched = torch.optim.lr_scheduler.ExponentialLR(dual, gamma=0.99)
    return model, opt, dual, sched


def train(model, opt, dual, sched, steps):
    for step in steps:
        x, s, y = batch(step)
        opt.zero_grad()
        p = torch.sigmoid(model(x).squeeze(1))
        loss = torch.nn.functional.binary_cross_entropy(p, y)
        gap = p[s == 1].mean() - p[s == 0].mean()
        lagr = dual.forward_update(loss, [gap - 0.02, p.mean() - 0.5])
        lagr.backward()
        opt.step()
        sched.step()


@pytest.mark.parametrize("kind", ["alm", "primal_dual"])
def test_resume_is_bitwise_identical(kind):
    model, opt, dual, sched = make(kind)
    train(model, opt, dual, sched, range(50))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "dual": dual.state_dict(), "sched": sched.state_dict()}, buf)
    train(model, opt, dual, sched, range(50, 100))

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2, opt2, dual2, sched2 = make(kind)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    dual2.load_state_dict(ckpt["dual"])
    sched2.load_state_dict(ckpt["sched"])
    train(model2, opt2, dual2, sched2, range(50, 100))

    assert torch.equal(dual.duals, dual2.duals)
    assert dual.duals.abs().sum() > 0
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
