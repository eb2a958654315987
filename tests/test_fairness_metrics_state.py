"""GroupMetrics state: bad batches and bad checkpoints change nothing (bad-input D6), a random
mix of valid and invalid calls leaves the state as the valid ones alone make it, any batching
equals one shot, resume is exact, and NaN never reads as fair."""

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from humancompatible_train.fairness import GroupMetrics

NAN, INF = float("nan"), float("inf")


def snapshot(gm):
    state = gm.state_dict()
    return state["counts"].clone(), state["has_labels"]


def assert_same(gm, before):
    counts, has_labels = snapshot(gm)
    assert torch.equal(counts, before[0]) and has_labels == before[1]


def test_d6_reproducer_nan_logits_are_refused_and_the_stream_stays_clean():
    gm = GroupMetrics(2, scores="logits")
    gm.update(torch.tensor([2.0, -1.0]), torch.tensor([0, 1]))
    before = snapshot(gm)
    with pytest.raises(ValueError, match=r"pred: expected finite logits, got nan at row 0"):
        gm.update(torch.tensor([NAN, 0.3]), torch.tensor([0, 1]))
    assert_same(gm, before)
    gm.update(torch.tensor([1.0, 1.0]), torch.tensor([0, 1]))
    sig = torch.sigmoid(torch.tensor([2.0, 1.0, -1.0, 1.0], dtype=torch.float64)).tolist()
    assert gm.compute().by_group["mean_score"] == pytest.approx(
        [(sig[0] + sig[1]) / 2, (sig[2] + sig[3]) / 2])


BAD_UPDATES = [
    (dict(pred=torch.tensor([INF, 0.0])), r"pred: expected finite logits, got inf at row 0"),
    (dict(pred=torch.tensor([0.5, 0.2]), labels=torch.tensor([1.0, NAN])),
     r"labels: expected values in \{0, 1\}, got \[nan\]"),
    (dict(pred=torch.tensor([0.5, 0.2]), labels=torch.tensor([1, 2])),
     r"labels: expected values in \{0, 1\}, got \[2.0\]"),
    (dict(sens=torch.tensor([0, 5])), r"sens: expected group ids in 0..1"),
    (dict(sens=torch.tensor([0.0, 1.0])), r"sens: expected integer group ids"),
    (dict(sens=torch.tensor([[1.0, 0.0], [-1.0, 2.0]])), r"sens: expected memberships in \[0, 1\]"),
    (dict(sens=torch.tensor([[1.0, 0.0], [NAN, 1.0]])), r"sens: expected finite memberships"),
    (dict(pred=torch.tensor([1, 0])), r"pred: expected a floating tensor of logits"),
    (dict(pred=torch.zeros(3)), r"sens: expected 3 rows"),
    (dict(labels=torch.tensor([1.0])), r"labels: expected 2 values"),
    (dict(labels=[1, 0]), r"labels: expected a real tensor, got list"),
]


@pytest.mark.parametrize("bad,message", BAD_UPDATES)
def test_a_refused_batch_changes_nothing(bad, message):
    gm = GroupMetrics(2, scores="logits")
    gm.update(torch.tensor([0.3, -0.2]), torch.tensor([0, 1]), torch.tensor([1, 0]))
    before = snapshot(gm)
    call = dict(pred=torch.tensor([0.5, 0.2]), sens=torch.tensor([0, 1]),
                labels=torch.tensor([0, 1]))
    call.update(bad)
    with pytest.raises(ValueError, match=message):
        gm.update(call["pred"], call["sens"], call["labels"])
    assert_same(gm, before)


def test_probabilities_are_checked_for_range_and_finiteness():
    gm = GroupMetrics(2)
    with pytest.raises(ValueError, match=r"pred: expected finite probabilities, got nan"):
        gm.update(torch.tensor([NAN, 0.5]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"pred: expected probabilities in \[0, 1\] \(pass "
                                         r"scores='logits' for logits\), got values in \[0.5, 1.5"):
        gm.update(torch.tensor([1.5, 0.5]), torch.tensor([0, 1]))
    assert gm.has_labels is None and not gm.counts.any()


def good_state():
    gm = GroupMetrics(["a", "b"])
    gm.update(torch.tensor([0.9, 0.2, 0.7]), torch.tensor([0, 1, 1]), torch.tensor([1, 0, 1]))
    return gm.state_dict()


def corrupt(key, value):
    state = good_state()
    if key == "counts_entry":
        state["counts"][value[0], value[1]] = value[2]
    elif value is KeyError:
        del state[key]
    else:
        state[key] = value
    return state


BAD_STATES = [
    (corrupt("counts_entry", (1, 0, NAN)), r"state\['counts'\]: expected finite sums"),
    (corrupt("counts_entry", (3, 0, -1.0)), r"state\['counts'\]: expected non-negative sums"),
    (corrupt("counts_entry", (2, 0, 9.0)), r"state\['counts'\]: expected sums with pos <= n"),
    (corrupt("counts", torch.zeros(8, 4, dtype=torch.float64)),
     r"state\['counts'\]: expected shape \(8, 3\)"),
    (corrupt("counts", [[0.0] * 3] * 8), r"state\['counts'\]: expected a real tensor"),
    (corrupt("has_labels", "yes"), r"state\['has_labels'\]: expected True or False, got 'yes'"),
    (corrupt("has_labels", None),
     r"state\['has_labels'\]: expected True or False with non-zero counts"),
    (corrupt("has_labels", KeyError), r"state: expected the keys \['counts', 'has_labels'\]"),
    (corrupt("extra", 1), r"state: expected the keys"),
    ({}, r"state: expected the keys"),
    ("counts", r"state: expected a dict from GroupMetrics.state_dict\(\), got str"),
]


@pytest.mark.parametrize("state,message", BAD_STATES)
def test_load_state_dict_checks_everything_before_changing_anything(state, message):
    gm = GroupMetrics(["a", "b"])
    gm.update(torch.tensor([0.4, 0.6]), torch.tensor([0, 1]), torch.tensor([0, 1]))
    before = snapshot(gm)
    with pytest.raises(ValueError, match=message):
        gm.load_state_dict(state)
    assert_same(gm, before)


def test_checkpoint_survives_weights_only_loading_and_resumes_exactly(tmp_path):
    gen = torch.Generator().manual_seed(0)
    p, g, y = torch.rand(90, generator=gen), torch.randint(0, 3, (90,), generator=gen), \
        torch.randint(0, 2, (90,), generator=gen)
    whole = GroupMetrics(3)
    for i in range(0, 90, 10):
        whole.update(p[i:i + 10], g[i:i + 10], y[i:i + 10])
    first = GroupMetrics(3)
    for i in range(0, 40, 10):
        first.update(p[i:i + 10], g[i:i + 10], y[i:i + 10])
    torch.save(first.state_dict(), tmp_path / "gm.pt")
    resumed = GroupMetrics(3)
    resumed.load_state_dict(torch.load(tmp_path / "gm.pt", weights_only=True))
    for i in range(40, 90, 10):
        resumed.update(p[i:i + 10], g[i:i + 10], y[i:i + 10])
    assert torch.equal(resumed.counts, whole.counts)
    assert resumed.compute().by_group == whole.compute().by_group


def test_compute_before_update_warns_and_gives_the_empty_report():
    gm = GroupMetrics(["a", "b"])
    with pytest.warns(UserWarning, match=r"compute\(\) called before any update\(\)"):
        report = gm.compute()
    assert report.by_group["count"] == [0.0, 0.0]
    assert all(math.isnan(v) for v in report.by_group["positive_rate"])
    assert math.isnan(report.p_rule) and math.isnan(report.difference("positive_rate"))


def test_to_moves_the_counts_and_later_batches_follow():
    gm = GroupMetrics(2, device="cpu")
    assert gm.to("cpu") is gm and gm.counts.device.type == "cpu"
    gm.update(torch.tensor([0.9, 0.1]), torch.tensor([0, 1]))
    moved = gm.to(torch.device("cpu"))
    assert moved.counts.dtype == torch.float64 and moved.counts[0].tolist() == [1, 1, 2]
    with pytest.raises(ValueError, match=r"device: expected a device with float64"):
        gm.to("mps")
    with pytest.raises(ValueError, match=r"device: expected a torch.device"):
        GroupMetrics(2, device=3.5)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match=r"validate: expected True or False, got 'no'"):
        GroupMetrics(2, validate="no")
    with pytest.raises(ValueError, match=r"threshold: expected a finite number in \[0.0, 1.0\]"):
        GroupMetrics(2, threshold=NAN)
    with pytest.raises(ValueError, match=r"scores: expected one of"):
        GroupMetrics(2, scores="margins")
    with pytest.raises(ValueError, match=r"process_group: expected 'auto', None"):
        GroupMetrics(2, process_group="world")


def test_automatic_validation_checks_counts_on_the_cpu():
    """``validate=None`` (FairnessConstraint's automatic choice) checks like ``True`` when the
    counts live on the CPU: a NaN logit is refused and nothing changes."""
    gm = GroupMetrics(["a", "b"], scores="logits", validate=None)
    gm.update(torch.tensor([2.0, -2.0, 1.0, -1.0]), torch.tensor([0, 0, 1, 1]),
              torch.tensor([1, 0, 1, 0]))
    before = gm.state_dict()
    with pytest.raises(ValueError, match="pred"):
        gm.update(torch.tensor([NAN, 0.0]), torch.tensor([0, 1]), torch.tensor([1, 0]))
    after = gm.state_dict()
    assert torch.equal(before["counts"], after["counts"])
    assert gm.compute().p_rule == 1.0


def test_unvalidated_non_finite_input_makes_every_later_metric_missing():
    gm = GroupMetrics(["a", "b"], scores="logits", validate=False)
    gm.update(torch.tensor([2.0, -2.0, 1.0, -1.0]), torch.tensor([0, 0, 1, 1]),
              torch.tensor([1, 0, 1, 0]))
    assert gm.compute().p_rule == 1.0
    gm.update(torch.tensor([INF, 0.0]), torch.tensor([0, 1]), torch.tensor([1, 0]))
    report = gm.compute()
    assert math.isnan(report.p_rule)
    for metric in ("positive_rate", "tpr", "accuracy", "mean_score"):
        assert all(math.isnan(v) for v in report.by_group[metric])
        assert math.isnan(report.difference(metric)) and math.isnan(report.ratio(metric))
        assert math.isnan(report.group_min(metric)) and math.isnan(report.overall[metric])


def test_an_empty_group_is_left_out_but_a_nan_group_is_not():
    gm = GroupMetrics(["a", "b", "c"], validate=False)
    gm.update(torch.tensor([0.9, 0.2, 0.7, 0.6]), torch.tensor([0, 0, 1, 1]))
    report = gm.compute()
    assert report.empty["positive_rate"] == [False, False, True]
    assert report.difference("positive_rate") == 0.5 and report.p_rule == 0.5
    report.by_group["positive_rate"][1] = NAN  # as an unvalidated NaN input would leave it
    report.empty["positive_rate"][1] = False
    assert math.isnan(report.difference("positive_rate")) and math.isnan(report.p_rule)


# ------------------------------------------------------------------ property-based
VALID = st.tuples(st.integers(0, 6), st.integers(0, 10_000))
INVALID = st.sampled_from(["nan_pred", "label_2", "bad_id", "bad_state", "short_sens",
                           "labels_switch"])
CALLS = st.lists(st.one_of(VALID.map(lambda v: ("update", v)),
                           INVALID.map(lambda v: ("invalid", v)),
                           st.just(("reset", None)), st.just(("load", None))),
                 max_size=12)


def batch(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=gen), torch.randint(0, 3, (n,), generator=gen),
            torch.randint(0, 2, (n,), generator=gen))


def invalid_call(gm, kind):
    """A call that must fail, or None when it does not apply to this state."""
    p, g, y = batch(4, 7)
    if kind == "nan_pred":
        return lambda: gm.update(torch.tensor([0.1, NAN, 0.2, 0.3]), g, y)
    if kind == "label_2":
        return lambda: gm.update(p, g, y + 1)
    if kind == "bad_id":
        return lambda: gm.update(p, g + 3, y)
    if kind == "short_sens":
        return lambda: gm.update(p, g[:3], y)
    if kind == "labels_switch":  # every valid batch here has labels
        return None if gm.has_labels is None else (lambda: gm.update(p, g))
    state = gm.state_dict()
    state["counts"] = state["counts"] * -1 - 1
    return lambda: gm.load_state_dict(state)


@settings(max_examples=40, deadline=None)
@given(calls=CALLS)
def test_random_valid_and_invalid_calls(calls):
    """Every raised error leaves state_dict() bit-identical; the state after the calls equals
    one update with every valid batch since the last reset or load (any batching)."""
    gm = GroupMetrics(3)
    kept: list[tuple[torch.Tensor, ...]] = []
    for kind, arg in calls:
        before = snapshot(gm)
        if kind == "update":
            b = batch(*arg)
            gm.update(*b)
            kept.append(b)
        elif kind == "reset":
            gm.reset()
            kept = []
        elif kind == "load":  # a valid state: that of a metric over two fixed batches
            kept = [batch(3, 1), batch(4, 2)]
            other = GroupMetrics(3)
            for b in kept:
                other.update(*b)
            gm.load_state_dict(other.state_dict())
        else:
            bad = invalid_call(gm, arg)
            if bad is None:
                continue
            with pytest.raises(ValueError):
                bad()
            assert_same(gm, before)
    once = GroupMetrics(3)
    if kept:
        once.update(*(torch.cat([b[i] for b in kept]) for i in range(3)))
    assert torch.equal(gm.counts, once.counts)
    assert gm.has_labels == (True if kept or gm.has_labels else None)
