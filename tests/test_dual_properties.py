"""Random sequences of valid and invalid calls on the dual optimizers (hypothesis).

Every call that raises must leave ``state_dict()`` bit-identical (validate, then mutate); every
call that succeeds must match an independent re-implementation of the update rules in plain
Python floats (the maths of the ALM and PrimalDual docstrings).
"""

from __future__ import annotations

import copy
import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from humancompatible_train.dual_optim import ALM, PrimalDual

F64 = torch.float64
NAN, INF = float("nan"), float("inf")


class Decay:
    """A callable step size whose value a test can spoil for one call."""

    def __init__(self) -> None:
        self.value: float | None = None

    def __call__(self, t: int) -> float:
        return 1.0 / (t + 1) if self.value is None else self.value


CONFIGS = {
    "alm": lambda d: ALM(2, lr=0.5, is_ineq=True, dtype=F64),
    "alm-momentum-hpr": lambda d: ALM(2, lr=0.3, momentum=0.5, dampening=0.2, penalty=2.0,
                                      augmentation="hpr", is_ineq=True, dtype=F64),
    "alm-equality-range": lambda d: ALM(2, lr=0.4, penalty=1.0, dual_range=(-1.0, 0.5),
                                        dtype=F64),
    "alm-restart": lambda d: ALM(2, lr=0.6, momentum=0.3, restart=True, is_ineq=True,
                                 dtype=F64),
    "alm-unchecked": lambda d: ALM(2, lr=0.5, momentum=0.5, is_ineq=True, check_finite=False,
                                   dtype=F64),
    "pd-sqrt": lambda d: PrimalDual(2, eta_0=0.7, is_ineq=True, dtype=F64),
    "pd-constant-range": lambda d: PrimalDual(2, eta_0=0.4, decay="constant",
                                              dual_range=(-2.0, 2.0), dtype=F64),
    "pd-callable": lambda d: PrimalDual(2, decay=d, is_ineq=True, dtype=F64),
}


class Reference:
    """The update rules, written again from the docstrings, one float at a time."""

    def __init__(self, dual) -> None:
        self.alm = isinstance(dual, ALM)
        self.check = dual.check_finite
        self.groups = [self._group(g) for g in dual.param_groups]

    def _group(self, g):
        lo, hi = g["dual_range"]
        return dict(hp={k: v for k, v in g.items() if k not in ("params", "name", "m")},
                    lo=lo, hi=hi, lam=g["params"][0].tolist(), buf=[0.0] * g["m"], step=0,
                    m=g["m"])

    def eta(self, g, t):
        decay = g["hp"]["decay"]
        if callable(decay):
            return decay(t)
        return g["hp"]["lr"] / math.sqrt(t) if decay == "sqrt" else g["hp"]["lr"]

    def step(self, values):
        for g, c in zip(self.groups, values):
            hp, t = g["hp"], g["step"] + 1
            for i, ci in enumerate(c):
                if not math.isfinite(ci):
                    continue  # left out (check_finite=False)
                if self.alm:
                    damp = hp["dampening"] or 0.0
                    if hp["dual_momentum"]:
                        g["buf"][i] = hp["dual_momentum"] * g["buf"][i] + (1 - damp) * ci
                        move = hp["lr"] * g["buf"][i]
                    else:
                        move = hp["lr"] * (1 - damp) * ci
                else:
                    move = self.eta(g, t) * ci
                g["lam"][i] = min(max(g["lam"][i] + move, g["lo"]), g["hi"])
                if self.alm and hp["restart"] and ci < 0:
                    g["lam"][i] = 0.0
            g["step"] = t

    def lagrangian(self, loss, values):
        total = loss
        for g, c in zip(self.groups, values):
            c = [ci if math.isfinite(ci) else 0.0 for ci in c]
            lam, hp = g["lam"], g["hp"]
            rho, aug = hp.get("penalty", 0.0), hp.get("augmentation")
            if aug is None and rho > 0:
                aug = "quadratic"
            ineq = hp["is_ineq"]
            if aug == "hpr" and ineq:
                total += (sum(max(x + rho * y, 0.0) ** 2 for x, y in zip(lam, c))
                          - sum(x * x for x in lam)) / (2 * rho)
                continue
            total += sum(x * y for x, y in zip(lam, c))
            if aug is not None:
                total += 0.5 * rho * sum((max(y, 0.0) if ineq else y) ** 2 for y in c)
        return total


def state_of(dual):
    sd = dual.state_dict()
    return {"duals": [d.clone() for d in sd["duals"]], "algorithm": sd["algorithm"],
            "state": {i: {k: v.clone() if isinstance(v, torch.Tensor) else v
                          for k, v in e.items()} for i, e in sd["state"].items()},
            "param_groups": [{k: (v if k != "decay" or not callable(v) else id(v))
                              for k, v in g.items()} for g in sd["param_groups"]]}


def assert_identical(a, b):
    assert a["algorithm"] == b["algorithm"] and a["param_groups"] == b["param_groups"]
    assert len(a["duals"]) == len(b["duals"])
    for x, y in zip(a["duals"], b["duals"]):
        assert x.dtype == y.dtype and torch.equal(x, y)
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for k, v in a["state"][i].items():
            w = b["state"][i][k]
            assert (v.dtype == w.dtype and torch.equal(v, w)) if isinstance(v, torch.Tensor) \
                else (type(v) is type(w) and v == w)


def assert_matches(dual, ref):
    assert len(dual.param_groups) == len(ref.groups)
    for g, r in zip(dual.param_groups, ref.groups):
        state = dual.state[g["params"][0]]
        assert state["step"] == r["step"]
        assert g["params"][0].tolist() == pytest.approx(r["lam"], rel=1e-9, abs=1e-12)
        if ref.alm:
            assert state["momentum_buffer"].tolist() == pytest.approx(r["buf"], rel=1e-9,
                                                                      abs=1e-12)


def raises_and_changes_nothing(dual, call, *args, **kwargs):
    before = state_of(dual)
    with pytest.raises(ValueError):
        call(*args, **kwargs)
    assert_identical(before, state_of(dual))


values_st = st.floats(-2.0, 2.0, allow_nan=False)


def draw_values(data, ref, bad):
    values = [[data.draw(values_st) for _ in range(g["m"])] for g in ref.groups]
    if bad:
        g = data.draw(st.integers(0, len(values) - 1))
        i = data.draw(st.integers(0, len(values[g]) - 1))
        values[g][i] = data.draw(st.sampled_from([NAN, INF, -INF]))
    return values


def tensor(values):
    return torch.tensor([x for c in values for x in c], dtype=F64)


CORRUPTIONS = [
    lambda sd: sd.__setitem__("state", {}),
    lambda sd: sd["duals"].__setitem__(0, torch.full_like(sd["duals"][0], NAN)),
    lambda sd: sd["duals"].__setitem__(0, torch.full_like(sd["duals"][0], -5.0)),
    lambda sd: sd["param_groups"][0].__setitem__("lr", -3.0),
    lambda sd: sd.__setitem__("algorithm", "Other"),
    lambda sd: sd.__setitem__("duals", sd["duals"][:-1]),
    lambda sd: sd["state"][0].__setitem__("step", -1),
    lambda sd: sd["state"][0].__setitem__("extra", torch.zeros(1)),
]


@settings(max_examples=80, deadline=None)
@given(config=st.sampled_from(sorted(CONFIGS)), data=st.data())
def test_random_calls(config, data):
    decay = Decay()
    dual = CONFIGS[config](decay)
    ref = Reference(dual)
    saved = []
    zero = torch.tensor(0.0, dtype=F64)
    for _ in range(data.draw(st.integers(1, 14))):
        op = data.draw(st.sampled_from(["step", "forward_update", "forward", "proxy", "save",
                                        "load", "add", "write", "bad_layout"]))
        bad = data.draw(st.booleans())
        if op in ("step", "forward_update", "forward", "proxy"):
            values = draw_values(data, ref, bad)
            c = tensor(values)
            masked = bad and not dual.check_finite
            if bad and not masked:
                calls = {"step": (dual.step, c), "forward_update": (dual.forward_update, zero, c),
                         "forward": (dual.forward, zero, c),
                         "proxy": (dual.forward_update, zero, c.abs(), c)}
                raises_and_changes_nothing(dual, *calls[op])
                continue
            if op == "forward":
                before = state_of(dual)
                assert dual.forward(zero, c).item() == pytest.approx(
                    ref.lagrangian(0.0, values), rel=1e-9, abs=1e-12)
                assert_identical(before, state_of(dual))
            elif op == "step":
                dual.step(c)
                ref.step(values)
            elif op == "forward_update":
                got = dual.forward_update(zero, c)
                ref.step(values)
                assert got.item() == pytest.approx(ref.lagrangian(0.0, values), rel=1e-9,
                                                   abs=1e-12)
            else:
                smooth = [[abs(x) for x in v] for v in values]
                got = dual.forward_update(zero, tensor(smooth), dual_constraints=c)
                ref.step(values)
                assert got.item() == pytest.approx(ref.lagrangian(0.0, smooth), rel=1e-9,
                                                   abs=1e-12)
        elif op == "bad_layout":
            wrong = data.draw(st.sampled_from([
                torch.zeros(dual.m + 1, dtype=F64), torch.zeros(dual.m, dtype=torch.int64),
                [0.5] * dual.m, torch.zeros(dual.m, 1, dtype=F64)]))
            raises_and_changes_nothing(dual, dual.forward_update, zero, wrong)
        elif op == "save":
            saved.append((dual.state_dict(), copy.deepcopy(ref.groups)))
        elif op == "load":
            if bad or not saved:
                sd = dual.state_dict()
                data.draw(st.sampled_from(CORRUPTIONS))(sd)
                raises_and_changes_nothing(dual, dual.load_state_dict, sd)
            else:
                sd, groups = data.draw(st.sampled_from(saved))
                if len(sd["duals"]) != len(ref.groups):
                    raises_and_changes_nothing(dual, dual.load_state_dict, sd)
                else:
                    dual.load_state_dict(sd)
                    ref.groups = copy.deepcopy(groups)
        elif op == "add":
            m = data.draw(st.integers(1, 3))
            if bad:
                kwargs = data.draw(st.sampled_from([
                    dict(lr=-1.0), dict(lr=INF), dict(is_ineq="False"), dict(gamma=1.0),
                    dict(name=dual.names[0]), dict(init_duals=[NAN] * m), dict(m=0)]))
                kwargs = dict(dict(m=m), **kwargs)
                raises_and_changes_nothing(dual, dual.add_constraint_group, **kwargs)
                continue
            kwargs = dict(lr=data.draw(st.floats(0.0, 1.0)))
            if ref.alm and dual.defaults["restart"]:
                kwargs["is_ineq"] = True
            else:
                kwargs["is_ineq"] = data.draw(st.booleans())
            dual.add_constraint_group(m, **kwargs)
            ref.groups.append(ref._group(dual.param_groups[-1]))
        else:  # a scheduler (or a hand) writes into a param group
            g = data.draw(st.integers(0, len(ref.groups) - 1))
            group = dual.param_groups[g]
            if not bad:
                group["lr"] = ref.groups[g]["hp"]["lr"] = data.draw(st.floats(0.0, 1.0))
                continue
            key, value = data.draw(st.sampled_from(
                [("lr", -0.5), ("lr", INF), ("lr", NAN), ("is_ineq", "no")]
                + ([("decay", -1.0), ("decay", NAN)] if config == "pd-callable" else [])
                + ([("penalty", -1.0), ("dual_momentum", 1.0)] if ref.alm else [])))
            if key == "decay":
                decay.value = value
            else:
                old, group[key] = group[key], value
            c = tensor(draw_values(data, ref, False))
            raises_and_changes_nothing(dual, dual.forward_update, zero, c)
            raises_and_changes_nothing(dual, dual.step, c)
            if key == "decay":
                decay.value = None
            else:
                group[key] = old
        assert_matches(dual, ref)
        for g in dual.param_groups:
            lo, hi = g["dual_range"]
            assert bool(((g["params"][0] >= lo) & (g["params"][0] <= hi)).all())
