"""Resuming from a checkpoint continues the same trajectory, bit for bit."""

import copy
import io
import pickle

import pytest
import torch

from humancompatible_train.dual_optim import ALM, FairProjection, PrimalDual

MOMENTUM = r"momentum \(group key 'dual_momentum'\): expected a finite number in \[0.0, 1.0\)"


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


# --------------------------------------------------------------- copies (deepcopy, pickle)
class WithExtra(ALM):
    """A subclass with an attribute of its own, which copies must keep."""

    def __init__(self, m, scale, **kw):
        self.scale = scale
        super().__init__(m, **kw)

    def _dual_step(self, group, state, c):
        super()._dual_step(group, state, c * self.scale)


COPYABLE = [
    lambda: ALM(2, lr=0.5, momentum=0.3, penalty=1.0, augmentation="hpr", is_ineq=True,
                check_finite=False),
    lambda: ALM(2, lr=0.5, restart=True, is_ineq=True, dual_range=(0.0, 0.8)),
    lambda: PrimalDual(2, eta_0=0.7, decay="constant", dtype=torch.float64),
    lambda: WithExtra(2, scale=3.0, lr=0.1),
]


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda d: pickle.loads(pickle.dumps(d))])
@pytest.mark.parametrize("make", COPYABLE)
def test_copies_behave_like_the_original(make, copier):
    original = make()
    dtype = original.duals.dtype
    original.forward_update(torch.tensor(0.0), torch.tensor([0.4, -0.2], dtype=dtype))
    clone = copier(original)
    assert vars(clone).keys() >= {"check_finite", "process_group", "_device", "_dtype"}
    for c in ([0.3, float("nan")], [-1.0, 2.0], [0.5, 0.5]):
        if c[1] != c[1] and original.check_finite:
            continue
        c = torch.tensor(c, dtype=dtype)
        a = original.forward_update(torch.tensor(1.0, dtype=dtype), c)
        b = clone.forward_update(torch.tensor(1.0, dtype=dtype), c)
        assert torch.equal(a, b) and torch.equal(original.duals, clone.duals)
    clone.step(torch.ones(2, dtype=dtype))  # independent: the original does not move
    assert not torch.equal(original.duals, clone.duals)
    assert clone.state_dict()["state"][0]["step"] == original.state_dict()["state"][0]["step"] + 1


def test_copies_of_fair_projection_keep_its_settings():
    proj = FairProjection(3, eps=0.1, bounds=(0.0, 1.0), constraint="equalized_odds")
    for clone in (copy.deepcopy(proj), pickle.loads(pickle.dumps(proj))):
        assert (clone.num_groups, clone.eps, clone.bounds, clone.constraint) == (
            3, 0.1, (0.0, 1.0), "equalized_odds")
        z, g, y = torch.rand(12), torch.arange(12) % 3, (torch.arange(12) % 2).float()
        q1, _ = proj.project(z, g, y)
        q2, _ = clone.project(z, g, y)
        assert torch.equal(q1, q2) and torch.equal(proj.duals, clone.duals)


def test_a_process_group_is_shared_by_deepcopy_and_refused_by_pickle():
    dual = ALM(1, lr=0.5)
    handle = object()  # stands for a ProcessGroup: only its identity matters here
    dual.process_group = handle
    assert copy.deepcopy(dual).process_group is handle
    with pytest.raises(pickle.PicklingError, match="process_group"):
        pickle.dumps(dual)
    dual.process_group = None
    assert pickle.loads(pickle.dumps(dual)).process_group is None


def test_hooks_are_not_copied_as_in_torch():
    dual = ALM(1, lr=0.5)
    calls = []
    dual.register_step_post_hook(lambda *a: calls.append(1))
    clone = copy.deepcopy(dual)
    clone.step(torch.tensor(1.0))
    assert calls == [] and clone.duals.item() == 0.5
    dual.step(torch.tensor(1.0))
    assert calls == [1]


# ------------------------------------------------------------ load_state_dict validation
def frozen(dual):
    sd = dual.state_dict()
    return sd["duals"], sd["state"], [dict(g) for g in sd["param_groups"]]


def assert_same(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0]))
    for i in a[1]:
        for k, v in a[1][i].items():
            w = b[1][i][k]
            assert (torch.equal(v, w) and v.dtype == w.dtype) if isinstance(v, torch.Tensor) \
                else v == w
    assert a[2] == b[2]


def trained():
    dual = ALM(2, lr=0.5, momentum=0.5, is_ineq=True, name="fair")
    dual.add_constraint_group(1, name="eq", is_ineq=False)
    dual.step([torch.tensor([0.3, -0.1]), torch.tensor(0.2)])
    return dual


def corrupt(edit):
    sd = trained().state_dict()
    edit(sd)
    return sd


def _set(mapping, key, value):
    mapping[key] = value


BAD_DICTS = [
    (lambda sd: _set(sd, "state", {}), r"'fair': state: expected the group's entry"),
    (lambda sd: sd["state"][0].pop("momentum_buffer"), r"'fair': state: expected entries "
                                                       r"\['momentum_buffer', 'step'\]"),
    (lambda sd: _set(sd["state"][0], "extra", 1), r"unexpected \['extra'\]"),
    (lambda sd: _set(sd["state"][0], "momentum_buffer", torch.zeros(3)),
     r"state\['momentum_buffer'\]: expected shape \(2,\), got \(3,\)"),
    (lambda sd: _set(sd["state"][0], "momentum_buffer", torch.tensor([0.0, float("nan")])),
     r"state\['momentum_buffer'\]: expected finite values"),
    (lambda sd: _set(sd["state"][0], "momentum_buffer", torch.zeros(2, dtype=torch.bool)),
     r"expected a floating-point tensor of shape \(2,\), got a torch.bool tensor"),
    (lambda sd: _set(sd["state"][0], "step", -1), r"state\['step'\]: expected an int >= 0"),
    (lambda sd: _set(sd["state"][0], "step", 1.5), r"state\['step'\]: expected an int >= 0"),
    (lambda sd: _set(sd, "duals", sd["duals"][:1]),
     r"state_dict\['duals'\]: expected a list of 2 multiplier tensors .*got 1"),
    (lambda sd: _set(sd["duals"], 0, torch.tensor([float("nan"), 0.0])),
     r"'fair': duals: expected a float tensor .* finite multipliers, got \[nan, 0.0\]"),
    (lambda sd: _set(sd["duals"], 0, torch.tensor([1.0, -5.0])),
     r"'fair': duals: expected multipliers in the group's range \[0.0, inf\] \(an inequality"),
    (lambda sd: _set(sd["duals"], 0, torch.zeros(3)), r"duals: expected shape \(2,\), got \(3,"),
    (lambda sd: _set(sd["duals"], 0, torch.zeros(2, dtype=torch.bool)), r"duals: expected"),
    (lambda sd: _set(sd["duals"], 0, "abc"), r"duals: expected a float tensor"),
    (lambda sd: _set(sd["param_groups"][0], "lr", -3.0),
     r"'fair': lr: expected a finite number >= 0.0, got -3.0"),
    (lambda sd: _set(sd["param_groups"][1], "dual_momentum", "x"),
     r"'eq': " + MOMENTUM + ", got 'x'"),
    (lambda sd: _set(sd["param_groups"][0], "is_ineq", "yes"), r"is_ineq: expected True or"),
    (lambda sd: sd["param_groups"][0].pop("penalty"), r"\(missing \['penalty'\]\)"),
    (lambda sd: _set(sd, "algorithm", "PrimalDual"),
     r"expected the state of a ALM, got one saved by 'PrimalDual'"),
    (lambda sd: sd.pop("algorithm"), r"\(missing \['algorithm'\]\)"),
    (lambda sd: _set(sd, "param_groups", sd["param_groups"][:1]), r"cannot load a state dict"),
]


@pytest.mark.parametrize("edit, match", BAD_DICTS)
def test_load_state_dict_checks_everything_before_changing_anything(edit, match):
    dual = trained()
    dual.step([torch.tensor([1.0, 1.0]), torch.tensor(-1.0)])
    before = frozen(dual)
    with pytest.raises(ValueError, match=match):
        dual.load_state_dict(corrupt(edit))
    assert_same(before, frozen(dual))


def test_another_algorithms_dict_is_refused_by_name():
    with pytest.raises(ValueError, match=r"expected the state of a PrimalDual, got one saved "
                                         r"by 'ALM'"):
        PrimalDual(2).load_state_dict(ALM(2).state_dict())
    with pytest.raises(ValueError, match=r"expected a dict from ALM.state_dict\(\), got list"):
        ALM(2).load_state_dict([])


def test_saved_multipliers_may_be_lists():
    dual = trained()
    sd = dual.state_dict()
    sd["duals"] = [[0.25, 0.5], [-1.0]]
    dual.load_state_dict(sd)
    assert dual.duals.tolist() == [0.25, 0.5, -1.0]


def test_a_saved_callable_needs_a_callable_here():
    src = PrimalDual(1, decay=lambda t: 1.0)
    with pytest.raises(ValueError, match=r"decay: expected a callable in this optimizer"):
        PrimalDual(1).load_state_dict(src.state_dict())
    dst = PrimalDual(1, decay=lambda t: 2.0)
    src.step(torch.tensor(1.0))
    dst.load_state_dict(src.state_dict())
    dst.step(torch.tensor(1.0))  # dst's own callable
    assert dst.duals.item() == 3.0


def test_scheduler_keys_travel_with_the_groups():
    src = ALM(1, lr=1.0)
    torch.optim.lr_scheduler.ExponentialLR(src, gamma=0.5)
    dst = ALM(1, lr=1.0)
    dst.load_state_dict(src.state_dict())
    assert dst.param_groups[0]["initial_lr"] == 1.0


def test_fair_projection_round_trips():
    src, dst = FairProjection(2), FairProjection(2)
    src.project(torch.tensor([0.9, 0.8, 0.1, 0.2]), torch.tensor([0, 0, 1, 1]))
    dst.load_state_dict(src.state_dict())
    assert torch.equal(src.duals, dst.duals) and dst.duals.sum() > 0
    with pytest.raises(ValueError, match="expected the state of a FairProjection"):
        dst.load_state_dict(ALM(4, is_ineq=True, name="projection").state_dict())
