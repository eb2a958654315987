"""Shared checks for the dual optimizers of issue 16: KKT references, resume, no-change-on-error.

Every reference here is computed independently of the library (scipy's SLSQP, the KKT system).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from scipy.optimize import minimize

# The convex QP of test_dual_convergence: min 1/2 ||x - a||^2 s.t. A x <= b, two active rows.
A = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, -1.0]])
B = np.array([1.0, 0.5, 5.0])
TARGET = np.array([2.0, 2.0, 2.0])
# The equality-constrained instance (first two rows as equalities).
A_EQ, B_EQ, TARGET_EQ = A[:2], np.array([1.0, -0.5]), np.array([0.3, 2.0, -1.0])


def reference(A, b, a, kind):
    """x* = argmin 1/2||x - a||^2 s.t. A x <= b ('ineq') or A x = b ('eq'); lambda* by KKT."""
    cons = {
        "type": "ineq" if kind == "ineq" else "eq",
        "fun": (lambda x: b - A @ x) if kind == "ineq" else (lambda x: A @ x - b),
        "jac": (lambda x: -A) if kind == "ineq" else (lambda x: A),
    }
    res = minimize(lambda x: 0.5 * np.sum((x - a) ** 2), np.zeros(len(a)), jac=lambda x: x - a,
                   constraints=[cons], method="SLSQP", tol=1e-14)
    assert res.success
    x = res.x
    active = np.abs(A @ x - b) < 1e-8 if kind == "ineq" else np.ones(len(b), bool)
    lam = np.zeros(len(b))
    lam[active] = np.linalg.lstsq(A[active].T, a - x, rcond=None)[0]
    return x, lam


def gda(dual, A, b, a, steps, primal_lr=0.1, inner=5):
    """Full-batch descent-ascent: ``inner`` primal steps on the Lagrangian, then a dual step."""
    At, bt, at = (torch.tensor(v) for v in (A, b, a))
    x = torch.zeros(len(a), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=primal_lr)
    for _ in range(steps):
        for _ in range(inner):
            opt.zero_grad()
            dual.forward(0.5 * ((x - at) ** 2).sum(), At @ x - bt).backward()
            opt.step()
        dual.step(At @ x.detach() - bt)
    return x.detach().numpy(), dual.duals.numpy()


def state_equal(a, b) -> bool:
    """Bitwise equality of two state dicts (tensors compared with torch.equal)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(state_equal(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN == NaN for hyperparameters


def roundtrip(sd):
    """``sd`` through torch.save / torch.load(weights_only=True)."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def batch(step, n=32):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(n, 5, generator=g)
    s = (torch.rand(n, generator=g) < 0.4).float()
    y = ((x[:, 0] + s) > 0.5).float()
    return x, s, y


def small_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def constraints_of(model, step):
    """Loss and two inequality constraints (a group gap, a positive-rate cap) of a batch."""
    x, s, y = batch(step)
    p = torch.sigmoid(model(x).squeeze(1))
    loss = torch.nn.functional.binary_cross_entropy(p, y)
    gap = p[s == 1].mean() - p[s == 0].mean()
    return loss, torch.stack([gap - 0.02, p.mean() - 0.3])


def check_resume(make_dual, steps=40, scheduler=True):
    """N steps in one go equal N/2 steps, a weights_only checkpoint, and N/2 more, bit for bit.

    ``make_dual()`` builds the dual optimizer for a two-constraint group.
    """
    def make():
        model, opt = small_model()
        dual = make_dual()
        sched = torch.optim.lr_scheduler.ExponentialLR(dual, 0.99) if scheduler else None
        return model, opt, dual, sched

    def train(model, opt, dual, sched, rng):
        for step in rng:
            opt.zero_grad()
            loss, c = constraints_of(model, step)
            dual.forward_update(loss, c).backward()
            opt.step()
            if sched is not None:
                sched.step()

    model, opt, dual, sched = make()
    train(model, opt, dual, sched, range(steps // 2))
    ckpt = roundtrip({"model": model.state_dict(), "opt": opt.state_dict(),
                      "dual": dual.state_dict(),
                      "sched": sched.state_dict() if sched else {}})
    train(model, opt, dual, sched, range(steps // 2, steps))

    model2, opt2, dual2, sched2 = make()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    dual2.load_state_dict(ckpt["dual"])
    if sched2 is not None:
        sched2.load_state_dict(ckpt["sched"])
    train(model2, opt2, dual2, sched2, range(steps // 2, steps))
    assert state_equal(dual.state_dict(), dual2.state_dict())
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    return dual


BAD_KINDS = ("nan", "inf", "short", "dtype", "2d")


def bad_constraints(kind, m):
    """Invalid constraint input of the given kind for a dual with ``m`` float32 constraints."""
    if kind == "nan":
        return torch.full((m,), float("nan"))
    if kind == "inf":
        return torch.cat([torch.zeros(m - 1), torch.tensor([float("inf")])])
    if kind == "short":
        return torch.zeros(m + 1)
    if kind == "dtype":
        return torch.zeros(m, dtype=torch.float64)
    return torch.zeros(m, 1)


def drive(dual, m, calls):
    """Random valid and invalid calls; a raised error must leave state_dict() unchanged.

    ``calls``: list of (valid, values-or-kind, use forward_update).
    """
    for valid, payload, fused in calls:
        if valid:
            c = torch.tensor(payload, dtype=torch.float32)
            if fused:
                dual.forward_update(torch.tensor(0.5), c)
            else:
                dual.step(c)
            continue
        before = dual.state_dict()
        bad = bad_constraints(payload, m)
        try:
            if fused:
                dual.forward_update(torch.tensor(0.5), bad)
            else:
                dual.step(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(f"{payload} input was accepted")
        assert state_equal(before, dual.state_dict())


def call_strategy(m):
    """Hypothesis strategy of one call for :func:`drive`."""
    import hypothesis.strategies as st

    value = st.floats(-2.0, 2.0, allow_nan=False, width=32)
    valid = st.tuples(st.just(True), st.lists(value, min_size=m, max_size=m), st.booleans())
    invalid = st.tuples(st.just(False), st.sampled_from(BAD_KINDS), st.booleans())
    return st.one_of(valid, invalid)
