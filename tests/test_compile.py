"""torch.compile: a training step with ``forward_update`` compiles and matches eager; with
``check_finite=False`` the whole step is one graph (no graph break).

With ``check_finite=True`` (the default) the one host read of the finiteness check splits the
step: the check runs eagerly between two graphs, and a NaN still raises before any change.
"""

import pytest
import torch
import torch._dynamo

from humancompatible_train.dual_optim import ALM, PrimalDual

pytestmark = pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(),
                                reason="torch.compile (dynamo) does not support this Python "
                                       "version or platform")


def _cpp_compiler_missing() -> str:
    """Why inductor (torch.compile's default backend) cannot build CPU code here, or ''."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as exc:  # any failure to find a compiler means: cannot build CPU code
        return f"torch.compile's default backend needs a C++ compiler, none found ({exc})"
    return ""


def data(step):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(32, 5, generator=g)
    s = (torch.rand(32, generator=g) < 0.4).float()
    return x, s, (x[:, 0] > 0).float()


def training_step(model, dual, x, s, y, proxies=False):
    p = torch.sigmoid(model(x).squeeze(1))
    loss = torch.nn.functional.binary_cross_entropy(p, y)
    gap = (p * s).sum() / s.sum() - (p * (1 - s)).sum() / (1 - s).sum()
    c = torch.stack([gap - 0.02, p.mean() - 0.5])[: dual.m]
    if proxies:
        return dual.forward_update(loss, c, dual_constraints=c.detach().round())
    return dual.forward_update(loss, c)


def model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.5)


def two_groups(check):
    dual = ALM(1, lr=0.5, momentum=0.3, is_ineq=True, check_finite=check)
    dual.add_constraint_group(1, name="eq", lr=0.2, penalty=1.0, augmentation="hpr")
    return dual


UNCHECKED = {
    "alm-one-group": (lambda: ALM(1, lr=0.5, momentum=0.3, is_ineq=True, check_finite=False),
                      False),
    "alm-two-groups": (lambda: two_groups(False), False),
    "alm-proxies": (lambda: ALM(2, lr=0.5, is_ineq=True, restart=True, check_finite=False),
                    True),
    "primal-dual": (lambda: PrimalDual(2, eta_0=0.5, check_finite=False), False),
}


@pytest.mark.parametrize("name", sorted(UNCHECKED))
def test_unchecked_step_is_one_graph(name):
    make, proxies = UNCHECKED[name]
    torch._dynamo.reset()
    model, _ = model_and_optimizer()
    explained = torch._dynamo.explain(training_step)(model, make(), *data(0), proxies)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_checked_step_breaks_only_at_the_host_read():
    torch._dynamo.reset()
    model, _ = model_and_optimizer()
    explained = torch._dynamo.explain(training_step)(model, two_groups(True), *data(0))
    assert explained.graph_break_count >= 1
    assert all("item()" in b.reason for b in explained.break_reasons), \
        [b.reason for b in explained.break_reasons]


def run(make_dual, compile_with, steps=3):
    torch._dynamo.reset()
    model, opt = model_and_optimizer()
    dual = make_dual()
    step = training_step if compile_with is None else torch.compile(training_step,
                                                                     backend=compile_with)
    lagrangians = []
    for t in range(steps):
        opt.zero_grad()
        lagr = step(model, dual, *data(t))
        lagr.backward()
        opt.step()
        lagrangians.append(lagr.detach())
    return dual, model, torch.stack(lagrangians)


def assert_close_runs(a, b):
    assert torch.allclose(a[0].duals, b[0].duals, rtol=1e-5, atol=1e-7)
    assert a[0].state_dict()["state"][0]["step"] == b[0].state_dict()["state"][0]["step"]
    for p, q in zip(a[1].parameters(), b[1].parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)
    assert torch.allclose(a[2], b[2], rtol=1e-5, atol=1e-7)


def test_compiled_unchecked_step_matches_eager():
    # torch.compile's default backend (inductor), one small model, three steps.
    reason = _cpp_compiler_missing()
    if reason:
        pytest.skip(reason)
    make = UNCHECKED["alm-two-groups"][0]
    compiled = run(make, "inductor")
    assert_close_runs(run(make, None), compiled)
    assert compiled[0].duals.abs().sum() > 0


def test_compiled_checked_step_matches_eager_and_still_raises():
    # aot_eager traces exactly what inductor would compile, without building C++ code.
    make = lambda: two_groups(True)  # noqa: E731
    compiled = run(make, "aot_eager")
    assert_close_runs(run(make, None), compiled)
    dual = compiled[0]
    before = dual.state_dict()
    step = torch.compile(training_step, backend="aot_eager")
    x, s, y = data(0)
    s[0] = float("nan")  # the group weights: the gap (a constraint) is NaN, the loss is not
    with pytest.raises(ValueError, match="non-finite value"):
        step(compiled[1], dual, x, s, y)
    assert torch.equal(dual.duals, torch.cat(before["duals"]))
    assert dual.state_dict()["state"][0]["step"] == before["state"][0]["step"]
