"""Input layouts, proxies, errors that leave state untouched, checkpoints, schedulers."""

import io

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from humancompatible_train.dual_optim import ALM, PBM, SSG, PrimalDual, iALM, nuPI

MOMENTUM = r"momentum \(group key 'dual_momentum'\): expected a finite number in \[0.0, 1.0\)"


def snapshot(dual):
    sd = dual.state_dict()
    return sd, dual.duals


def assert_unchanged(dual, snap):
    sd, duals = snap
    assert torch.equal(dual.duals, duals)
    now = dual.state_dict()
    for i, entry in sd["state"].items():
        for k, v in entry.items():
            w = now["state"][i][k]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w


def two_groups(**kw):
    dual = ALM(1, lr=0.5, is_ineq=True, name="a", momentum=0.5, **kw)
    dual.add_constraint_group(2, name="b")
    return dual


def test_layouts_are_equivalent():
    values = torch.tensor([0.3, -0.2, 0.7])
    flat, seq, mapping = two_groups(), two_groups(), two_groups()
    flat.step(values)
    seq.step([values[0], values[1:]])
    mapping.step({"b": values[1:], "a": values[:1]})
    assert torch.equal(flat.duals, seq.duals) and torch.equal(flat.duals, mapping.duals)


def test_zero_dim_tensor_when_m_is_one():
    dual = ALM(m=1, lr=0.1, is_ineq=True)
    dual.step(torch.tensor(0.5))
    assert dual.duals.tolist() == pytest.approx([0.05])


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(2), r"expected 3 constraint values"),
        (torch.zeros(3, 1), r"flat tensor of shape \(3,\)"),
        ([torch.zeros(1)], r"sequence of 2 tensors"),
        ([torch.zeros(1), torch.zeros(3)], r"group 'b': expected shape \(2,\), got \(3,\)"),
        ({"a": torch.zeros(1)}, r"missing \['b'\]"),
        ({"a": torch.zeros(1), "b": torch.zeros(2), "c": torch.zeros(1)}, r"unexpected \['c'\]"),
        (3.0, r"got float"),
        (torch.zeros(3, dtype=torch.float64), r"expected dtype torch.float32 .*got torch.float64"),
        (torch.tensor([0.0, float("nan"), 1.0]), r"group 'b' at index \[0\]"),
        (torch.tensor([float("inf"), 0.0, 1.0]), r"group 'a' at index \[0\]"),
    ],
)
def test_bad_constraints_raise_and_change_nothing(bad, match):
    dual = two_groups()
    dual.step(torch.tensor([1.0, 2.0, 3.0]))
    snap = snapshot(dual)
    with pytest.raises(ValueError, match=match):
        dual.forward_update(torch.tensor(0.0), bad)
    with pytest.raises(ValueError, match=match):
        dual.update(bad)
    assert_unchanged(dual, snap)


def test_nan_in_proxy_or_lagrangian_values_changes_nothing():
    dual = two_groups()
    snap = snapshot(dual)
    good, bad = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, float("nan")])
    with pytest.raises(ValueError, match=r"group 'b' at index \[1\]"):
        dual.forward_update(torch.tensor(0.0), good, dual_constraints=bad)
    with pytest.raises(ValueError, match=r"group 'b' at index \[1\]"):
        dual.forward_update(torch.tensor(0.0), bad, dual_constraints=good)
    assert_unchanged(dual, snap)


def test_non_scalar_loss_raises_before_any_step():
    dual = two_groups()
    snap = snapshot(dual)
    with pytest.raises(ValueError,
                       match=r"loss: expected a scalar \(0-d\) tensor, got shape \(4,\)"):
        dual.forward_update(torch.zeros(4), torch.ones(3))
    assert_unchanged(dual, snap)


def test_unchecked_mode_masks_non_finite_entries():
    dual = two_groups(check_finite=False)
    dual.step(torch.tensor([1.0, 1.0, 1.0]))
    before = dual.state_dict()
    lagr = dual.forward_update(torch.tensor(0.0), torch.tensor([float("nan"), 1.0, float("inf")]))
    assert torch.isfinite(lagr)
    lam = dual.duals
    assert lam[0] == 0.5 and lam[2] == 0.5  # untouched
    assert lam[1] == pytest.approx(0.5 + 0.5 * (0.5 * 1.0 + 1.0))
    assert before["state"][0]["momentum_buffer"].tolist() == \
        dual.state_dict()["state"][0]["momentum_buffer"].tolist()


def test_proxy_values_drive_the_dual_and_constraints_the_lagrangian():
    dual = ALM(1, lr=1.0, is_ineq=True)
    smooth = torch.tensor(0.2, requires_grad=True)
    lagr = dual.forward_update(torch.tensor(0.0), smooth, dual_constraints=torch.tensor(0.5))
    assert dual.duals.tolist() == [0.5]
    lagr.backward()
    assert smooth.grad.item() == 0.5
    assert lagr.item() == pytest.approx(0.5 * 0.2)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ALM(2, init_duals=[1.0, 2.0, 3.0]),
         r"init_duals: expected a finite number or a tensor/sequence of m=2 .*got 3 values"),
        (lambda: ALM(1, is_ineq=True, init_duals=-1.0),
         r"init_duals: expected values in the dual range \[0.0, inf\], got \[-1.0\]"),
        (lambda: ALM(0), r"^m: expected a positive int, got 0$"),
        (lambda: ALM(1, lr=-1.0), r"'g0': lr: expected a finite number >= 0.0, got -1.0$"),
        (lambda: ALM(1, augmentation="cubic", penalty=1.0),
         r"augmentation: expected one of \(None, 'quadratic', 'hpr'\), got 'cubic'"),
        (lambda: ALM(1, augmentation="hpr"), r"penalty: expected a number > 0 with augmentation"),
        (lambda: ALM(1, restart=True), r"restart: expected False for an equality group"),
        (lambda: ALM(1, momentum=1.0), MOMENTUM),
        (lambda: ALM(1, dual_range=(1.0, 0.0)), r"dual_range: expected .* low <= high"),
        (lambda: PrimalDual(1, decay="cosine"),
         r"decay: expected one of \('sqrt', 'constant'\) or a callable"),
        (lambda: ALM(1, dtype=torch.int64), r"dtype: expected a floating-point torch.dtype"),
    ],
)
def test_construction_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_add_group_errors():
    dual = ALM(1, name="a")
    with pytest.raises(ValueError, match="got 'a', which exists already"):
        dual.add_constraint_group(1, name="a")
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['gamma'\]"):
        dual.add_constraint_group(1, gamma=1.0)
    with pytest.raises(TypeError, match="add_constraint_group"):
        dual.add_param_group({"params": [torch.zeros(1)]})
    with pytest.raises(ValueError, match="no constraint group"):
        ALM().step(torch.zeros(1))


def test_state_dict_is_a_copy_and_survives_weights_only_load():
    dual = two_groups()
    dual.step(torch.tensor([1.0, 2.0, 3.0]))
    sd = dual.state_dict()
    saved = sd["duals"][0].clone()
    dual.step(torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(sd["duals"][0], saved)
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    fresh = two_groups()
    fresh.load_state_dict(loaded)
    assert torch.equal(fresh.duals, torch.cat(sd["duals"]))
    assert fresh.state_dict()["state"][0]["step"] == 1


def test_state_dict_restores_hyperparameters_and_keeps_callables():
    decay = lambda t: 1.0 / t  # noqa: E731
    src = PrimalDual(1, decay=decay)
    src.param_groups[0]["lr"] = 0.123
    dst = PrimalDual(1, decay=decay)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst.load_state_dict(torch.load(buf, weights_only=True))
    assert dst.param_groups[0]["lr"] == 0.123 and dst.param_groups[0]["decay"] is decay


def test_load_state_dict_rejects_other_groups_and_changes_nothing():
    dual = two_groups()
    snap = snapshot(dual)
    other = ALM(1, name="a")
    other.add_constraint_group(3, name="b")
    with pytest.raises(ValueError, match=r"\('b', 3\).*\('b', 2\)"):
        dual.load_state_dict(other.state_dict())
    renamed = ALM(1, name="x")
    renamed.add_constraint_group(2, name="b")
    with pytest.raises(ValueError, match="cannot load"):
        dual.load_state_dict(renamed.state_dict())
    with pytest.raises(ValueError, match=r"with keys \['algorithm', 'state', 'param_groups', "
                       r"'duals'\], got keys \['state'\]"):
        dual.load_state_dict({"state": {}})
    assert_unchanged(dual, snap)


def test_lr_scheduler_acts_on_each_groups_dual_step():
    dual = ALM(1, lr=1.0, is_ineq=True, name="a")
    dual.add_constraint_group(1, name="b", lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(dual, step_size=1, gamma=0.5)
    for _ in range(2):
        dual.forward_update(torch.tensor(0.0), torch.tensor([1.0, 1.0]))
        sched.step()
    # steps of 1.0 then 0.5 (group a) and 0.1 then 0.05 (group b)
    assert dual.duals.tolist() == pytest.approx([1.5, 0.15])


def test_forward_changes_no_state():
    dual = two_groups()
    snap = snapshot(dual)
    dual.forward(torch.tensor(1.0), torch.tensor([1.0, 1.0, 1.0]))
    assert_unchanged(dual, snap)


@settings(max_examples=60, deadline=None)
@given(
    cs=st.lists(st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3), min_size=1, max_size=8),
    lr=st.floats(0.0, 10.0),
    hi=st.floats(0.0, 50.0),
    momentum=st.sampled_from([0.0, 0.5, 0.9]),
)
def test_multipliers_stay_in_their_range(cs, lr, hi, momentum):
    dual = ALM(3, lr=lr, momentum=momentum, is_ineq=True, dual_range=(None or -1.0, hi),
               dtype=torch.float64)
    pd = PrimalDual(3, eta_0=lr, is_ineq=True, dual_range=(0.0, hi), dtype=torch.float64)
    for c in cs:
        for d in (dual, pd):
            d.step(torch.tensor(c, dtype=torch.float64))
            assert bool((d.duals >= 0).all()) and bool((d.duals <= hi).all())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=3, max_size=3))
def test_lagrangian_gradient_is_the_multipliers(c):
    dual = two_groups()
    dual.step(torch.tensor([1.0, 2.0, 3.0]))
    x = torch.tensor(c, requires_grad=True)
    dual.forward(torch.tensor(0.0), x).backward()
    assert torch.equal(x.grad, dual.duals)


def test_overflowing_but_finite_values_pass_the_check():
    dual = ALM(2, lr=1e-38, is_ineq=True)
    dual.step(torch.tensor([3e38, 3e38]))  # the sum overflows, every entry is finite
    assert torch.isfinite(dual.duals).all()


def test_the_base_class_needs_an_update_rule():
    from humancompatible_train.dual_optim import DualOptimizer

    with pytest.raises(TypeError, match="abstract"):
        DualOptimizer(1, {"lr": 0.1})


def test_gradient_accumulation_keeps_each_steps_multipliers():
    # Two forward_updates before one backward: each Lagrangian keeps the multipliers of its
    # own step, although the live multipliers change in place in between.
    dual = ALM(2, lr=0.5, is_ineq=True)
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    first = dual.forward_update(torch.tensor(0.0), w * 1.0)   # lambda = [0.5, 1.0]
    second = dual.forward_update(torch.tensor(0.0), w * 3.0)  # lambda = [2.0, 4.0]
    (first + second).backward()
    assert w.grad.tolist() == [0.5 * 1.0 + 2.0 * 3.0, 1.0 * 1.0 + 4.0 * 3.0]


@pytest.mark.parametrize("check_finite", [True, False])
def test_scalar_constraint_enters_the_lagrangian_with_its_multiplier(check_finite):
    dual = PrimalDual(1, eta_0=0.5, decay="constant", is_ineq=True, check_finite=check_finite)
    x = torch.tensor(0.8, requires_grad=True)
    lagr = dual.forward_update(torch.tensor(1.0), x * 2.0)  # lambda = 0.5 * 1.6
    lagr.backward()
    assert lagr.item() == pytest.approx(1.0 + 0.8 * 1.6)
    assert x.grad.item() == pytest.approx(0.8 * 2.0)
    assert dual.forward(torch.tensor(0.0), x * 2.0).grad_fn is not None


@pytest.mark.parametrize("make", [
    lambda: PrimalDual(3, eta_0=0.5, decay="constant", is_ineq=True, check_finite=False),
    lambda: ALM(3, lr=0.5, is_ineq=True, check_finite=False),
    lambda: ALM(3, lr=0.5, is_ineq=True, momentum=0.5, check_finite=False),
])
def test_unchecked_mode_leaves_non_finite_entries_out(make):
    dual = make()
    dual.step(torch.tensor([1.0, 1.0, 1.0]))
    before = dual.duals
    x = torch.tensor([float("nan"), 1.0, float("-inf")], requires_grad=True)
    lagr = dual.forward_update(torch.tensor(0.0), x * 1.0)
    lagr.backward()
    after = dual.duals
    assert after[0] == before[0] and after[2] == before[2]
    assert after[1] > before[1]
    assert torch.isfinite(lagr) and x.grad.tolist() == [0.0, after[1].item(), 0.0]


# One group given one tensor, with the default checks, takes a shorter path through
# forward_update; these tests hold it to the general path's results and errors.
ONE_GROUP = [
    lambda: ALM(3, lr=0.3, is_ineq=True, momentum=0.5, restart=True),
    lambda: ALM(3, lr=0.3, penalty=2.0, augmentation="hpr", is_ineq=True),
    lambda: ALM(3, lr=0.3, penalty=1.0, dual_range=(-1.0, 0.4)),
    lambda: PrimalDual(3, eta_0=0.7, is_ineq=True),
    # SSG weighs the loss by its switch; PBM has its own Lagrangian term and state.
    lambda: SSG(3, lr=0.5, tol=0.1),
    lambda: SSG(3, lr=0.5, tol=0.2, is_ineq=False),
    lambda: PBM(3, lr=0.8, penalty_update="aimd"),
    lambda: PBM(3, lr=0.8, pbf="quadratic_reciprocal"),
    lambda: iALM(3, lr=0.4, is_ineq=True),
    lambda: nuPI(3, lr=0.4, kappa_p=0.5, is_ineq=True),
]


@pytest.mark.parametrize("checked", [True, False], ids=["checked", "unchecked"])
@pytest.mark.parametrize("make", ONE_GROUP)
def test_one_tensor_and_the_general_path_give_the_same_trajectory(make, checked):
    """Same multipliers, Lagrangian and gradients on both routes; with ``check_finite=False``
    non-finite entries are masked alike (zero gradient, multipliers untouched there)."""
    fast, general = make(), make()
    for dual in (fast, general):
        dual.check_finite = checked
    gen = torch.Generator().manual_seed(0)
    for i in range(8):
        c = torch.randn(3, generator=gen)
        if not checked and i % 2:
            c[i % 3] = (float("nan"), float("inf"), -float("inf"))[i % 3]
        loss = torch.randn((), generator=gen)
        grads = []
        for dual, layout in ((fast, lambda v: v), (general, lambda v: [v])):
            w, f = c.clone().requires_grad_(), loss.clone().requires_grad_()
            lagr = dual.forward_update(f * 1.0, layout(w * 1.0))
            lagr.backward()
            grads.append((lagr.detach(), w.grad, f.grad))
        for a, b in zip(*grads):
            assert torch.equal(a, b)
        assert torch.isfinite(grads[0][0])
        assert torch.equal(fast.duals, general.duals)
        assert torch.isfinite(fast.duals).all()
    assert fast.state_dict()["state"][0]["step"] == 8


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.tensor([0.0, float("nan"), 1.0]), r"group 'g0' at index \[1\]"),
        (torch.tensor([float("-inf"), 0.0, float("inf")]), r"group 'g0' at index \[0, 2\]"),
        (torch.zeros(3, dtype=torch.float64), r"got torch.float64"),
        (torch.zeros(2), r"expected 3 constraint values"),
        (torch.zeros(3, 1), r"flat tensor of shape \(3,\)"),
    ],
)
def test_one_group_errors_change_nothing(bad, match):
    dual = ONE_GROUP[0]()
    dual.forward_update(torch.tensor(0.0), torch.tensor([1.0, -2.0, 3.0]))
    snap = snapshot(dual)
    with pytest.raises(ValueError, match=match):
        dual.forward_update(torch.tensor(0.0), bad)
    with pytest.raises(ValueError, match=r"loss: expected a scalar"):
        dual.forward_update(torch.zeros(2), torch.ones(3))
    assert_unchanged(dual, snap)


def test_one_group_overflowing_sum_passes_the_check():
    dual = ALM(2, lr=1e-38, is_ineq=True)
    lagr = dual.forward_update(torch.tensor(0.0), torch.tensor([3e38, 3e38]))
    assert torch.isfinite(dual.duals).all() and dual.duals.tolist() == pytest.approx([3.0, 3.0])
    assert lagr.item() == float("inf")  # 3 * 3e38 * 2 overflows float32 in the Lagrangian
