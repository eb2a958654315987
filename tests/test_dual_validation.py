"""Arguments and hyperparameters are checked where they are used (construction, scheduler
writes, step time), errors name the argument and change nothing, and the torch.optim contract
(step hooks, masking hooks, devices) holds on every path."""

import math

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from humancompatible_train.dual_optim import ALM, DualOptimizer, PrimalDual

MOMENTUM = r"momentum \(group key 'dual_momentum'\): expected a finite number in \[0.0, 1.0\)"


def frozen(dual):
    """Everything a step may change, as plain copies."""
    sd = dual.state_dict()
    return [d.clone() for d in sd["duals"]], {
        i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in e.items()}
        for i, e in sd["state"].items()}


def assert_same(a, b):
    assert len(a[0]) == len(b[0]) and all(torch.equal(x, y) for x, y in zip(a[0], b[0]))
    assert a[1].keys() == b[1].keys()
    for i in a[1]:
        for k, v in a[1][i].items():
            w = b[1][i][k]
            assert (torch.equal(v, w) and v.dtype == w.dtype) if isinstance(v, torch.Tensor) \
                else v == w


# ----------------------------------------------------------------- hyperparameters (D7)
@pytest.mark.parametrize("make, match", [
    (lambda: ALM(2, lr=math.inf), r"lr: expected a finite number >= 0.0, got inf"),
    (lambda: ALM(2, lr=math.nan), r"lr: expected a finite number >= 0.0, got nan"),
    (lambda: ALM(2, lr="0.1"), r"lr: expected a finite number >= 0.0, got '0.1'"),
    (lambda: PrimalDual(1, eta_0=math.inf), r"lr: expected a finite number >= 0.0, got inf"),
    (lambda: ALM(1, penalty=math.inf), r"penalty: expected a finite number >= 0.0, got inf"),
    (lambda: ALM(1, momentum=math.nan), MOMENTUM),
    (lambda: ALM(1, dampening=2.0), r"dampening: expected a finite number in \[0.0, 1.0\]"),
    (lambda: ALM(1, is_ineq="False"), r"^is_ineq: expected True or False, got 'False'$"),
    (lambda: ALM(1, is_ineq=1), r"^is_ineq: expected True or False, got 1$"),
    (lambda: ALM(1, is_ineq=True, restart="yes"), r"restart: expected True or False"),
    (lambda: ALM(1, dual_range=(0.0, math.nan)), r"dual_range: expected None or a pair"),
    (lambda: ALM(1, dual_range=("a", "b")), r"dual_range: expected None or a pair"),
    (lambda: ALM(1, dual_range=(1.0,)), r"dual_range: expected None or a pair"),
    (lambda: ALM(1, check_finite="no"), r"^check_finite: expected True or False, got 'no'$"),
    (lambda: ALM(lr=-1.0), r"^ALM: lr: expected a finite number >= 0.0, got -1.0$"),
])
def test_invalid_hyperparameters_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_add_constraint_group_refuses_and_adds_nothing():
    dual = ALM(1, lr=0.5, is_ineq=True)
    for kwargs, match in [
        (dict(m=1, is_ineq="False"), r"constraint group 'g1': is_ineq: expected True or False"),
        (dict(m=1, lr=math.inf), r"constraint group 'g1': lr: expected a finite number"),
        (dict(m=0), r"^m: expected a positive int, got 0$"),
        (dict(m=2.0), r"^m: expected a positive int, got 2.0$"),
        (dict(m=1, name=3), r"^name: expected a string, got 3$"),
        (dict(m=1, gamma=1.0), r"unknown hyperparameter\(s\) \['gamma'\]"),
        (dict(m=1, momentum=0.5, dual_momentum=0.5), r"dual_momentum: expected once"),
    ]:
        with pytest.raises(ValueError, match=match):
            dual.add_constraint_group(**kwargs)
    assert dual.names == ["g0"] and len(dual.state) == 1
    dual.add_constraint_group(np.int64(2), name="b", momentum=0.5)  # numpy ints, the alias
    assert dual.m == 3 and dual.param_groups[1]["dual_momentum"] == 0.5


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "0.1", torch.tensor(0.1)])
def test_callable_decay_is_checked_before_any_group_changes(bad):
    decay = lambda t: 0.5 if t == 1 else bad  # noqa: E731
    dual = PrimalDual(1, decay=lambda t: 1.0, name="ok")
    dual.add_constraint_group(1, name="bad", decay=decay)
    dual.step(torch.tensor([1.0, 1.0]))
    before = frozen(dual)
    with pytest.raises(ValueError, match=r"'bad': the step size decay\(2\): expected a finite "
                                         r"number >= 0.0"):
        dual.step(torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match=r"decay\(2\)"):
        dual.forward_update(torch.tensor(0.0), torch.tensor([1.0, 1.0]))
    assert_same(before, frozen(dual))
    assert dual.duals.tolist() == [1.0, 0.5]


def test_callable_decay_is_called_once_per_step():
    calls = []
    dual = PrimalDual(1, decay=lambda t: calls.append(t) or 1.0 / t)
    for _ in range(3):
        dual.forward_update(torch.tensor(0.0), torch.tensor(1.0))
    assert calls == [1, 2, 3] and dual.duals.item() == pytest.approx(1 + 1 / 2 + 1 / 3)


def test_scheduler_written_lr_is_checked_at_step_time():
    dual = ALM(1, lr=0.1, is_ineq=True)
    dual.step(torch.tensor(1.0))
    before = frozen(dual)
    sched = torch.optim.lr_scheduler.LambdaLR(dual, lambda epoch: -1.0)  # writes lr = -0.1
    for call in (lambda: dual.step(torch.tensor(1.0)),
                 lambda: dual.forward_update(torch.tensor(0.0), torch.tensor(1.0)),
                 lambda: dual.forward(torch.tensor(0.0), torch.tensor(1.0))):
        with pytest.raises(ValueError, match=r"lr: expected a finite number >= 0.0, got -0.1 "
                                             r"\(a value written into the param group"):
            call()
    assert_same(before, frozen(dual))
    del sched
    dual.param_groups[0]["lr"] = 0.2  # fixed by hand: accepted again
    dual.step(torch.tensor(1.0))
    assert dual.duals.item() == pytest.approx(0.1 + 0.2)


@pytest.mark.parametrize("key, value, match", [
    ("penalty", math.inf, r"penalty: expected a finite number"),
    ("is_ineq", "no", r"is_ineq: expected True or False"),
    ("augmentation", "hpr", r"penalty: expected a number > 0 with augmentation='hpr'"),
    ("dual_momentum", 1.5, MOMENTUM),
    ("restart", True, r"restart: expected False for an equality group"),
])
def test_hand_written_hyperparameters_are_checked_at_use(key, value, match):
    dual = ALM(2, lr=0.5)
    dual.step(torch.tensor([1.0, -1.0]))
    before = frozen(dual)
    dual.param_groups[0][key] = value
    for call in (lambda: dual.step(torch.tensor([1.0, 1.0])),
                 lambda: dual.forward_update(torch.tensor(0.0), torch.tensor([1.0, 1.0])),
                 lambda: dual.forward(torch.tensor(0.0), torch.tensor([1.0, 1.0]))):
        with pytest.raises(ValueError, match=match):
            call()
    assert_same(before, frozen(dual))


def test_a_written_range_is_put_in_canonical_form():
    dual = ALM(1, lr=1.0, is_ineq=True)
    dual.param_groups[0]["dual_range"] = [-5, 0.25]
    dual.step(torch.tensor(-1.0))
    dual.step(torch.tensor(3.0))
    assert dual.param_groups[0]["dual_range"] == (0.0, 0.25) and dual.duals.item() == 0.25


def test_exponential_lr_still_drives_every_step():
    dual = ALM(1, lr=1.0)
    sched = torch.optim.lr_scheduler.ExponentialLR(dual, gamma=0.5)
    for _ in range(3):
        dual.forward_update(torch.tensor(0.0), torch.tensor(1.0))
        sched.step()
    assert dual.duals.item() == pytest.approx(1.0 + 0.5 + 0.25)


@pytest.mark.parametrize("make", [
    lambda d: torch.optim.lr_scheduler.OneCycleLR(d, max_lr=1.0, total_steps=10),
    lambda d: torch.optim.lr_scheduler.CyclicLR(d, base_lr=0.1, max_lr=1.0),
])
def test_cycling_schedulers_never_switch_the_dual_momentum_on(make):
    with pytest.raises(ValueError, match="cycle_momentum"):
        make(ALM(1, lr=0.1))  # the default cycle_momentum=True finds no momentum to cycle
    dual = ALM(1, lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(dual, max_lr=1.0, total_steps=10,
                                                cycle_momentum=False)
    expected = 0.0
    for _ in range(5):
        expected += dual.param_groups[0]["lr"] * 1.0  # plain dual ascent at the scheduled lr
        dual.step(torch.tensor(1.0))
        sched.step()
    assert dual.param_groups[0]["dual_momentum"] == 0.0
    assert dual.duals.item() == pytest.approx(expected)
    assert torch.equal(dual.state_dict()["state"][0]["momentum_buffer"], torch.zeros(1))


# ------------------------------------------------------------------- forward (D14)
def test_forward_checks_finiteness_like_the_step():
    dual = ALM(2, lr=0.5)
    with pytest.raises(ValueError, match=r"constraints: non-finite value\(s\) in constraint "
                                         r"group 'g0' at index \[0\]"):
        dual.forward(torch.tensor(1.0), torch.tensor([math.nan, 0.0]))
    masked = ALM(2, lr=0.5, check_finite=False, init_duals=[1.0, 2.0])
    assert masked.forward(torch.tensor(1.0), torch.tensor([math.nan, 0.5])).item() == 2.0


# --------------------------------------------------------------------- hooks (D14)
HOOK_CASES = [
    # one group given one tensor: the fast path when no hook is registered
    (lambda: ALM(2, lr=0.5), lambda d: d.forward_update(torch.tensor(0.0), torch.ones(2))),
    (lambda: ALM(2, lr=0.5), lambda d: d.forward_update(torch.tensor(0.0), [torch.ones(2)])),
    (lambda: PrimalDual(2), lambda d: d.forward_update(torch.tensor(0.0), torch.ones(2),
                                                       dual_constraints=torch.ones(2))),
    (lambda: ALM(2, lr=0.5), lambda d: d.step(torch.ones(2))),
]


@pytest.mark.parametrize("make, call", HOOK_CASES)
def test_step_hooks_fire_on_every_path(make, call):
    dual, seen = make(), []
    dual.register_step_pre_hook(lambda opt, args, kwargs: seen.append(("pre", opt.duals)))
    dual.register_step_post_hook(lambda opt, args, kwargs: seen.append(("post", opt.duals)))
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append(("global", None)))
    try:
        call(dual)
    finally:
        handle.remove()
    assert [s[0] for s in seen] == ["global", "pre", "post"]
    assert seen[1][1].sum() == 0 and seen[2][1].sum() > 0  # around the dual step


def test_a_pre_hook_may_replace_the_constraints():
    dual = ALM(1, lr=1.0)
    dual.register_step_pre_hook(lambda opt, args, kwargs: ((args[0], args[1] * 2.0), kwargs))
    lagr = dual.forward_update(torch.tensor(0.0), torch.tensor(0.5))
    assert dual.duals.item() == 1.0 and lagr.item() == 1.0


# -------------------------------------------------------------- devices and dtypes
def test_meta_device_needs_unchecked_mode():
    with pytest.raises(ValueError, match=r"^device: expected a device that holds values with "
                                         r"check_finite=True .*got 'meta'"):
        ALM(m=1, device="meta")
    dual = ALM(m=2, device="meta", check_finite=False, init_duals=[0.5, 1.0])
    lagr = dual.forward_update(torch.tensor(0.0, device="meta"), torch.ones(2, device="meta"))
    assert lagr.device.type == "meta" and dual.duals.shape == (2,)


def test_an_unavailable_device_is_named():
    if torch.cuda.is_available():
        assert ALM(m=1, device="cuda").duals.device.type == "cuda"
    else:
        with pytest.raises(ValueError, match=r"^device: device 'cuda' is not available here"):
            ALM(m=1, device="cuda")
    with pytest.raises(ValueError, match=r"^device: expected a torch.device"):
        ALM(m=1, device="gpu0")


# ------------------------------------------------------------------- messages (D15)
@pytest.mark.parametrize("make, match", [
    (lambda: ALM(m=2, init_duals="abc"),
     r"^constraint group 'g0': init_duals: expected a finite number or a tensor/sequence of "
     r"m=2 finite numbers, got 'abc'$"),
    (lambda: ALM(m=2, init_duals=[0.1, math.nan]), r"init_duals: .*got \[0.1, nan\]$"),
    (lambda: ALM(m=2, init_duals=[True, False]), r"init_duals: expected a finite number"),
    (lambda: ALM(m=2, dtype="int64"), r"^dtype: expected a floating-point torch.dtype"),
    (lambda: ALM(m=2, dtype="float3"), r"^dtype: expected a floating-point torch.dtype"),
    (lambda: ALM(m=2.5), r"^m: expected a positive int, got 2.5$"),
    (lambda: ALM(m=True), r"^m: expected a positive int, got True$"),
    (lambda: ALM(name="a"), r"^name: expected m as well"),
])
def test_argument_errors_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_numpy_sizes_and_dtype_strings_are_accepted():
    dual = ALM(m=np.int64(2), dtype="float64", init_duals=np.array([0.5, 1.0]))
    assert dual.m == 2 and dual.duals.dtype == torch.float64
    assert dual.duals.tolist() == [0.5, 1.0]


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([1, 2]), r"expected dtype torch.float32 \(the multipliers' dtype\), got "
                           r"torch.int64; constraint values must be floating point: cast with "
                           r"\.to\(torch.float32\)$"),
    ([0.1, 0.2], r"^constraints: expected a tensor \(e.g. torch.tensor\(\[0.1, 0.2\]\) .*got a "
                 r"list of numbers \[0.1, 0.2\]$"),
    (0.3, r"^constraints: expected a tensor, a sequence of tensors or a mapping name -> "
          r"tensor, got float$"),
])
def test_constraint_messages_say_what_to_pass(bad, match):
    dual = ALM(m=2, lr=0.5)
    before = frozen(dual)
    with pytest.raises(ValueError, match=match):
        dual.forward_update(torch.tensor(0.0), bad)
    with pytest.raises(ValueError, match=match):
        dual.step(bad)
    assert_same(before, frozen(dual))
    assert "torch.int64 or cast" not in str(pytest.raises(ValueError, dual.step,
                                                          torch.tensor([1, 2])).value)


# ----------------------------------------------------------- subclass contract
class Normed(DualOptimizer):
    """Dual ascent scaled by a running norm: state that is not one entry per constraint."""

    def __init__(self, m, lr=1.0, **kw):
        super().__init__(m, {"lr": lr}, **kw)

    def _init_state(self, group):
        return {"step": 0, "norm": torch.zeros((), dtype=self._dtype),
                "seen": torch.zeros(group["m"], dtype=torch.bool)}

    def _dual_step(self, group, state, c):
        state["norm"].add_(c.square().sum())
        state["seen"] |= c != 0
        group["params"][0].add_(c, alpha=group["lr"])

    def _masked_dual_step(self, group, state, c):
        valid = torch.isfinite(c)
        self._dual_step(group, state, torch.where(valid, c, torch.zeros_like(c)))


def test_masking_is_a_hook_for_state_that_is_not_per_constraint():
    dual = Normed(3, check_finite=False)
    dual.step(torch.tensor([1.0, math.nan, 2.0]))
    sd = dual.state_dict()
    assert dual.duals.tolist() == [1.0, 0.0, 2.0]
    assert sd["state"][0]["norm"].item() == 5.0
    assert sd["state"][0]["seen"].tolist() == [True, False, True]


def test_bool_state_stays_bool_through_a_checkpoint():
    src, dst = Normed(3), Normed(3)
    src.step(torch.tensor([1.0, 0.0, 2.0]))
    dst.load_state_dict(src.state_dict())
    state = dst.state_dict()["state"][0]
    assert state["seen"].dtype == torch.bool and state["seen"].tolist() == [True, False, True]
    assert state["norm"].dtype == torch.float32 and state["step"] == 1


class Counting(ALM):
    """Overrides a method of the general path: forward_update must go through it."""

    calls = 0

    def _apply_dual_step(self, parts, lagrangian=None):
        Counting.calls += 1
        super()._apply_dual_step(parts, lagrangian)


def test_the_fast_path_respects_overrides_of_the_general_path():
    assert ALM._fast_path and not Counting._fast_path
    dual = Counting(2, lr=0.5)
    dual.forward_update(torch.tensor(0.0), torch.ones(2))
    assert Counting.calls == 1 and dual.duals.tolist() == [0.5, 0.5]


class Picky(ALM):
    def _prepare_step(self, group, state):
        if group["name"] == "late" and state["step"] >= 1:
            raise ValueError("late: refused")


def test_prepare_step_runs_for_every_group_before_any_changes():
    dual = Picky(1, lr=0.5, name="early")
    dual.add_constraint_group(1, name="late")
    dual.step(torch.tensor([1.0, 1.0]))
    before = frozen(dual)
    with pytest.raises(ValueError, match="late: refused"):
        dual.step(torch.tensor([1.0, 1.0]))
    assert_same(before, frozen(dual))
