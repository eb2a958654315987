"""FairProjection as an optimizer among others (generic loops, schedulers, hooks, copies,
checkpoints) and on bad input (clear errors, nothing changed)."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from projection_reference import use_path

from humancompatible_train.dual_optim import ALM
from humancompatible_train.dual_optim.projection import FairProjection


def snapshot(proj: FairProjection) -> bytes:
    """The state dict, serialised: two snapshots are equal exactly when the states are equal
    bit for bit."""
    buf = io.BytesIO()
    torch.save(proj.state_dict(), buf)
    return buf.getvalue()


def batch(seed: int = 0, n: int = 40, S: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    g = torch.randint(0, S, (n,), generator=gen)
    g[:S] = torch.arange(S)
    return torch.randn(n, generator=gen) + 0.5 * g, g


# ----------------------------------------------------------------------- generic loops


def test_step_is_a_no_op_in_a_generic_loop_with_schedulers_and_hooks():
    """Code that steps every optimizer, and a scheduler on each, treats the projection like
    any optimizer: its step changes nothing (the multipliers are those of the last batch),
    hooks run, and no scheduler warns about the call order."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    adam = torch.optim.Adam(model.parameters(), lr=1e-2)
    proj = FairProjection(2, 0.05, bounds=(-3.0, 3.0))
    optimizers = [adam, proj]
    schedulers = [torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5) for o in optimizers]
    calls = []
    proj.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    proj.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    x, (_, g) = torch.randn(40, 3), batch()
    y = (torch.rand(40) < 0.5).float()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a scheduler warning would fail the test
        for _ in range(3):
            for opt in optimizers:
                opt.zero_grad()
            q, info = proj.project(model(x), g)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(q.squeeze(1), y)
            lagr = proj.forward_update(loss, torch.zeros(4))
            assert lagr is loss
            lagr.backward()
            before = proj.duals
            for opt in optimizers:
                opt.step()
            assert torch.equal(proj.duals, before)
            assert torch.equal(proj.duals, info.multipliers.to(proj.duals.dtype))
            for s in schedulers:
                s.step()
    assert calls == ["pre", "post"] * 6  # three steps and three forward_updates
    assert proj.param_groups[0]["lr"] == 0.0 and adam.param_groups[0]["lr"] == 1e-2 / 8
    proj.step(torch.zeros(4), torch.zeros(4))  # ALM's arguments are accepted and ignored


def test_forward_and_forward_update_refuse_a_bad_loss():
    proj = FairProjection(2)
    for bad in (torch.ones(3), 1.0):
        with pytest.raises(ValueError, match="loss"):
            proj.forward_update(bad)
        with pytest.raises(ValueError, match="loss"):
            proj.forward(bad)


# ------------------------------------------------------------------ copies and checkpoints


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_behave_like_the_original(how):
    proj = FairProjection(3, 0.1, bounds=(-1.0, 1.0), constraint="equalized_odds")
    z, g = batch(1, 60, 3)
    y = (torch.arange(60) % 2).float()
    proj.project(z, g, y)
    other = copy.deepcopy(proj) if how == "deepcopy" else pickle.loads(pickle.dumps(proj))
    assert torch.equal(other.duals, proj.duals)
    assert (other.num_groups, other.eps, other.bounds, other.constraint) == (3, 0.1,
                                                                               (-1.0, 1.0),
                                                                               "equalized_odds")
    z2, g2 = batch(2, 60, 3)
    q1, _ = proj.project(z2, g2, y)
    q2, _ = other.project(z2, g2, y)
    assert torch.equal(q1, q2) and torch.equal(other.duals, proj.duals)
    other.project(z, g, y)
    assert not torch.equal(other.duals, proj.duals)  # independent multipliers
    assert other.forward_update(torch.tensor(1.0)) == 1.0


def test_state_dict_round_trip_and_refusals():
    proj = FairProjection(2, 0.05, bounds=(-2.0, 2.0))
    proj.project(*batch(3))
    buf = io.BytesIO()
    torch.save(proj.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    other = FairProjection(2, 0.05, bounds=(-2.0, 2.0))
    other.load_state_dict(saved)
    assert torch.equal(other.duals, proj.duals)
    assert snapshot(other) == snapshot(proj)
    # Another size, or another algorithm's dict, is refused with nothing changed.
    before = snapshot(other)
    for bad in (FairProjection(3).state_dict(), ALM(4, lr=0.1, is_ineq=True).state_dict()):
        with pytest.raises(ValueError):
            other.load_state_dict(bad)
        assert snapshot(other) == before


# ------------------------------------------------------------------------ construction


@pytest.mark.parametrize("kwargs,match", [
    ({"bounds": (0,)}, r"bounds: expected a pair \(lo, hi\) of finite numbers with lo < hi, "
                       r"got \(0,\)"),
    ({"bounds": ("a", "b")}, r"bounds: expected a pair .* got \('a', 'b'\)"),
    ({"bounds": (1.0, 0.0)}, r"bounds: expected .* lo < hi, got \(1.0, 0.0\)"),
    ({"bounds": (0.0, float("inf"))}, r"bounds: expected a pair \(lo, hi\) of finite"),
    ({"bounds": (float("nan"), 1.0)}, r"bounds: expected"),
    ({"bounds": "ab"}, r"bounds: expected a pair"),
    ({"bounds": (True, 2.0)}, r"bounds: expected a pair"),
    ({"eps": -0.1}, r"eps: expected a finite number >= 0"),
    ({"eps": float("inf")}, r"eps: expected a finite number >= 0"),
    ({"eps": "0.1"}, r"eps: expected a finite number >= 0.*got '0.1'"),
    ({"constraint": "parity!"}, r"constraint: expected one of \('parity', 'equalized_odds', "
                                r"'mean_residual'\), got 'parity!'"),
    ({"check_finite": "yes"}, r"check_finite: expected True or False, got 'yes'"),
])
def test_constructor_names_the_bad_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FairProjection(2, **kwargs)


@pytest.mark.parametrize("num_groups", [0, -1, 2.5, True, "2", None])
def test_bad_num_groups(num_groups):
    with pytest.raises(ValueError, match=r"num_groups: expected a positive int"):
        FairProjection(num_groups)


def test_numpy_numbers_are_accepted():
    proj = FairProjection(np.int64(2), np.float64(0.1), bounds=(np.float32(-1), np.int64(1)))
    assert (proj.num_groups, proj.eps, proj.bounds) == (2, 0.1, (-1.0, 1.0))
    assert proj.m == 4


# -------------------------------------------------------------------------- projection


def bad_calls(S: int = 2):
    """(description, arguments, error pattern, also raised with check_finite=False)."""
    z = torch.tensor([0.1, 0.2, 0.3, 0.4])
    g = torch.tensor([0, 1, 0, 1])
    yield "nan", (torch.tensor([0.1, float("nan"), 0.3, 0.4]), g), \
        r"z: expected finite predictions, got NaN or Inf at rows \[1\]", False
    yield "inf", (torch.tensor([0.1, 0.2, float("-inf"), 0.4]), g), \
        r"z: expected finite predictions, got NaN or Inf at rows \[2\]", False
    yield "id too large", (z, torch.tensor([0, 1, 2, 1])), \
        r"groups: expected group ids in 0..1, got \[0, 1, 2\]", True
    yield "huge id", (z, torch.tensor([0, 1, 10**15, 1])), r"groups: expected group ids", True
    yield "negative id", (z, torch.tensor([0, -1, 0, 1])), \
        r"groups: expected group ids in 0..1, got \[-1, 0, 1\]", True
    yield "float id", (z, torch.tensor([0.0, 0.4, 1.0, 0.6])), \
        r"groups: expected integral group ids, got \[0.0, 0.4", False
    yield "bad one-hot", (z, torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])), \
        r"groups: expected one-hot rows", False
    yield "bool ids", (z, torch.tensor([True, False, True, False])), r"groups: expected a real", \
        True
    yield "short groups", (z, torch.tensor([0, 1])), r"groups: expected 4 integer ids", True
    yield "list groups", (z, [0, 1, 0, 1]), r"groups: expected a real tensor", True
    yield "int z", (torch.tensor([1, 2]), torch.tensor([0, 1])), r"z: expected a floating", True
    yield "empty z", (torch.zeros(0), torch.zeros(0, dtype=torch.long)), \
        r"z: expected shape \(N,\) or \(N, 1\) with N >= 1", True
    yield "2-d z", (torch.zeros(4, 2), g), r"z: expected shape", True


@pytest.mark.parametrize("path", ["host", "device"])
@pytest.mark.parametrize("check_finite", [True, False])
@pytest.mark.parametrize("name,args,match,always", list(bad_calls()),
                         ids=[c[0] for c in bad_calls()])
def test_bad_batches_raise_clearly_and_change_nothing(monkeypatch, name, args, match, always,
                                                      check_finite, path):
    """On the CPU group ids are always checked (from the counts' length); on an accelerator
    (``path="device"``) with ``check_finite=True`` (one read), without it not at all."""
    use_path(monkeypatch, path)
    if path == "device" and not check_finite:
        always = name in ("bool ids", "short groups", "list groups", "int z", "empty z", "2-d z")
    proj = FairProjection(2, 0.05, bounds=(-1.0, 1.0), check_finite=check_finite)
    proj.project(*batch(4))
    before = snapshot(proj)
    if check_finite or always:
        with pytest.raises(ValueError, match=match):
            proj.project(*args)
    else:  # the user skipped the value checks; no error is promised, but no crash either
        try:
            proj.project(*args)
        except ValueError:
            pass
        return
    assert snapshot(proj) == before


def test_labels_are_checked():
    eo = FairProjection(2, 0.05, constraint="equalized_odds")
    z, g = torch.tensor([0.2, 0.3, 0.4]), torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match=r"labels: expected 3 labels \(constraint "
                                         r"'equalized_odds' needs them\), got None"):
        eo.project(z, g)
    with pytest.raises(ValueError, match=r"labels: expected labels in \{0, 1\} \(equalized "
                                         r"odds\), got \[0.0, 2.0\]"):
        eo.project(z, g, torch.tensor([0, 2, 0]))
    with pytest.raises(ValueError, match=r"labels: expected a real tensor of 3 labels"):
        eo.project(z, g, torch.tensor([0, 1]))
    unchecked = FairProjection(2, 0.05, constraint="equalized_odds", check_finite=False)
    for y in (torch.tensor([0, 2, 0]), torch.tensor([0, -1, 0])):  # the cell ids catch these
        with pytest.raises(ValueError, match=r"labels: expected labels in \{0, 1\}"):
            unchecked.project(z, g, y)
    with pytest.raises(ValueError, match=r"groups: expected group ids in 0..1"):
        unchecked.project(z, torch.tensor([0, 2, 0]), torch.tensor([0, 0, 1]))
    mr = FairProjection(2, 0.05, constraint="mean_residual")
    with pytest.raises(ValueError, match=r"labels: expected finite labels"):
        mr.project(z, g, torch.tensor([0.0, float("nan"), 1.0]))


def test_infeasible_residual_bounds_name_the_group():
    mr = FairProjection(2, 0.05, bounds=(0.0, 1.0), constraint="mean_residual")
    with pytest.raises(ValueError, match=r"infeasible: group 1 needs a mean prediction in "
                                         r"\[1.95, 2.05\].*achievable range .*\[0.0, 1.0\]"):
        mr.project(torch.tensor([0.2, 0.4, 0.6]), torch.tensor([0, 1, 1]),
                   torch.tensor([0.0, 2.0, 2.0]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 12), st.integers(0, 2**31)),
                min_size=1, max_size=6),
       st.sampled_from(["parity", "equalized_odds", "mean_residual"]), st.booleans())
def test_random_calls_errors_leave_the_state_unchanged(calls, constraint, check_finite):
    """Random valid and invalid batches: a valid one sets the multipliers of its batch, an
    invalid one raises and leaves the state dict bit for bit as it was."""
    proj = FairProjection(3, 0.05, bounds=(-2.0, 2.0), constraint=constraint,
                          check_finite=check_finite)
    for kind, n, seed in calls:
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, generator=gen)
        g = torch.randint(0, 3, (n,), generator=gen)
        y = (torch.rand(n, generator=gen) < 0.5).float()
        if kind == 1:
            z[0] = float("nan")
        elif kind == 2:
            g[0] = 3
        elif kind == 3:
            g[0] = -2
        elif kind == 4:
            y[0] = 2.0 if constraint == "equalized_odds" else float("inf")
        valid = kind in (0, 5) or (kind == 4 and constraint == "parity")  # parity: no labels
        before = snapshot(proj)
        try:
            proj.project(z, g, y)
        except ValueError:
            assert not valid
            assert snapshot(proj) == before
        else:
            # With the checks off, NaN scores and labels are the caller's responsibility.
            assert valid or (not check_finite and kind in (1, 4))
