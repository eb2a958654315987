"""FairInference refuses bad input with a message naming the argument, and an error never
changes the state (validate, then mutate)."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from humancompatible_train.inference import FairInference


def snapshot(fi: FairInference) -> dict:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v)
            for k, v in fi.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            if x.dtype != y.dtype or not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def served(fi: FairInference) -> FairInference:
    fi.adjust(torch.tensor([0.0, 1.0, 0.4]), torch.tensor([0, 1, 0]),
              torch.tensor([0.0, 1.0, 1.0]) if fi._labelled else None)
    return fi


@pytest.mark.parametrize("kwargs, name", [
    ({"threshold": float("nan")}, "threshold"),
    ({"threshold": float("inf")}, "threshold"),
    ({"fairness_tolerance": "0.1"}, "fairness_tolerance"),
    ({"fairness_tolerance": -0.1}, "fairness_tolerance"),
    ({"fairness_tolerance": float("nan")}, "fairness_tolerance"),
    ({"num_groups": 1}, "num_groups"),
    ({"num_groups": 2.0}, "num_groups"),
    ({"b_tau": 0}, "b_tau"),
    ({"eta_0": -1.0}, "eta_0"),
    ({"eta_0": float("inf")}, "eta_0"),
    ({"metric": "accuracy"}, "metric"),
    ({"pooled": "soft"}, "pooled"),
    ({"per_batch": "yes"}, "per_batch"),
    ({"group_shares": [0.2, 0.3, 0.5]}, "group_shares"),
    ({"group_shares": [0.7, 0.7]}, "group_shares"),
    ({"group_shares": [float("nan"), 1.0]}, "group_shares"),
    ({"group_shares": "ab"}, "group_shares"),
    ({"prediction_bounds": (0,)}, "prediction_bounds"),
    ({"prediction_bounds": ("a", "b")}, "prediction_bounds"),
    ({"prediction_bounds": (1.0, 0.0)}, "prediction_bounds"),
    ({"prediction_bounds": (0.0, float("inf"))}, "prediction_bounds"),
    ({"metric": "positive_rate", "prediction_bounds": (0.6, 1.0)}, "prediction_bounds"),
    ({"protected_attr_idx": "0"}, "protected_attr_idx"),
    ({"model": 3}, "model"),
])
def test_constructor_refuses_bad_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FairInference(**kwargs)


def test_removed_options_are_refused():
    for kwargs in ({"dykstra_iters": 50}, {"dual": None}, {"dtype": torch.float16}):
        with pytest.raises(TypeError, match=next(iter(kwargs))):
            FairInference(**kwargs)


BAD_BATCHES = [
    ((torch.tensor([0.1, float("nan")]), torch.tensor([0, 1])), "scores: expected finite"),
    ((torch.tensor([0.1, float("inf")]), torch.tensor([0, 1])), "scores: expected finite"),
    # D13: finite scores whose sums overflow float64.
    ((torch.tensor([1e308, 1e308, -1e308], dtype=torch.float64), torch.tensor([0, 1, 0])),
     "sum to a finite"),
    ((torch.tensor([1e200], dtype=torch.float64), torch.tensor([0])), "sum to a finite"),
    ((torch.tensor([0.1, 0.2]), torch.tensor([0, 2])), r"groups: expected ids in 0..1"),
    ((torch.tensor([0.1, 0.2]), torch.tensor([0, -1])), r"groups: expected ids in 0..1"),
    ((torch.tensor([0.1, 0.2]), torch.tensor([0.0, 0.5])), "whole-number"),
    ((torch.zeros(2, 2), torch.tensor([0, 1])), r"shape \(N,\) or \(N, 1\)"),
    ((torch.zeros(3), torch.tensor([0, 1])), "3 group ids"),
    ((torch.tensor([1, 2]), torch.tensor([0, 1])), "floating tensor"),
    ((torch.zeros(0), torch.zeros(0, dtype=torch.long)), "non-empty"),
    ((torch.tensor([0.1, 0.2], dtype=torch.float16), torch.tensor([0, 1])), "float16"),
    ((torch.tensor([0.1, 0.2], dtype=torch.bfloat16), torch.tensor([0, 1])), "bfloat16"),
    ((torch.tensor([0.1, 0.2]), [0, 1]), "groups: expected a tensor"),
    ((torch.tensor([0.1, 0.2]), torch.tensor([0, 1]), torch.tensor([1.0, float("nan")])),
     "labels: expected finite"),
    ((torch.tensor([0.1, 0.2]), torch.tensor([0, 1]), torch.tensor([1.0, 0.0, 1.0])),
     "labels: expected a tensor of 2 values"),
]


@pytest.mark.parametrize("args, match", BAD_BATCHES)
@pytest.mark.parametrize("bounds", [None, (-2.0, 2.0)])
def test_bad_batch_raises_and_changes_nothing(args, match, bounds):
    fi = served(FairInference(prediction_bounds=bounds))
    before = snapshot(fi)
    with pytest.raises(ValueError, match=match):
        fi.adjust(*args)
    assert same(before, snapshot(fi))
    # The stream goes on as if nothing happened (D13: no poisoned sums).
    q = fi.adjust(torch.tensor([0.5, 0.4]), torch.tensor([0, 1]))
    assert torch.isfinite(q).all()
    assert fi.stats()["pooled_aggregate_gap"] <= 0.05


@pytest.mark.parametrize("metric, labels, match", [
    ("equalized_odds", None, "needs labels"),
    ("equalized_odds", torch.tensor([0.0, 2.0, 1.0]), r"values in \{0, 1\}"),
    ("mean_residual", None, "needs labels"),
    ("mean_residual", torch.tensor([0.0, float("nan"), 1.0]), "labels: expected finite"),
    ("positive_rate", torch.tensor([0.0, float("inf"), 1.0]), "labels: expected finite"),
])
def test_bad_labels_change_nothing(metric, labels, match):
    fi = served(FairInference(metric=metric))
    before = snapshot(fi)
    with pytest.raises(ValueError, match=match):
        fi.adjust(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 1, 1]), labels)
    assert same(before, snapshot(fi))


def test_labels_are_checked_and_ignored_by_mean_parity():
    fi = FairInference()
    q = fi.adjust(torch.tensor([0.1, 0.9]), torch.tensor([0, 1]), torch.tensor([1.0, 0.0]))
    ref = FairInference().adjust(torch.tensor([0.1, 0.9]), torch.tensor([0, 1]))
    assert torch.equal(q, ref)
    assert float(fi.label_sum.abs().sum()) == 0.0  # never accumulated (nor NaN)


def test_protected_attr_idx_out_of_range_changes_nothing():
    fi = FairInference(torch.nn.Linear(3, 1), protected_attr_idx=7)
    before = snapshot(fi)
    with pytest.raises(ValueError, match="protected_attr_idx"):
        fi(torch.randn(4, 3))
    assert same(before, snapshot(fi))


def test_half_precision_model_is_served_in_float32():
    model = torch.nn.Linear(3, 1).to(torch.bfloat16)
    fi = FairInference(model, protected_attr_idx=0)
    x = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.5, -1.0]], dtype=torch.bfloat16)
    q = fi(x)
    assert q.dtype == torch.float32 and q.shape == (2, 1)


def test_load_from_a_wrapper_of_another_size_changes_nothing():
    a2 = served(FairInference(num_groups=2))
    a3 = FairInference(num_groups=3)
    a3.adjust(torch.tensor([0.3, 0.2, 0.9]), torch.tensor([0, 1, 2]))
    before = snapshot(a3)
    with pytest.raises(ValueError, match="num_groups"):
        a3.load_state_dict(a2.state_dict())
    assert same(before, snapshot(a3))


def bad_states():
    src = served(FairInference(group_shares=[0.4, 0.6]))
    good = src.state_dict()

    def edit(key, value):
        sd = dict(good)
        sd[key] = value
        return sd

    settings_ = dict(good["_extra_state"]["settings"])
    yield edit("count", torch.tensor([[1.0, float("nan")]])), "count"
    yield edit("count", torch.tensor([[1.0, -2.0]])), "count"
    yield edit("count", torch.tensor([[1.5, 2.0]])), "count"
    yield edit("count", torch.zeros(1, 3)), "count"
    yield edit("multipliers", torch.tensor([-1.0, 0.0], dtype=torch.float64)), "multipliers"
    yield edit("multipliers", torch.tensor([float("inf"), 0.0])), "multipliers"
    yield edit("raw_sum", "abc"), "raw_sum"
    yield edit("group_shares", torch.tensor([[0.9, 0.9]], dtype=torch.float64)), "group_shares"
    yield edit("positive_sum", torch.tensor([[5.0, 0.0]], dtype=torch.float64)), "positive_sum"
    yield edit("fixed_shares", torch.tensor(1.0)), "fixed_shares"
    yield edit("dual_steps", torch.tensor(-1)), "dual_steps"
    for key, value in (("fairness_tolerance", 0.1), ("b_tau", 8), ("eta_0", 0.1),
                       ("per_batch", True), ("prediction_bounds", [0.0, 1.0]),
                       ("metric", "positive_rate")):
        extra = {"version": 2, "settings": dict(settings_, **{key: value})}
        yield edit("_extra_state", extra), key
    yield edit("_extra_state", None), "_extra_state"
    missing = dict(good)
    del missing["out_sum"]
    yield missing, "out_sum"
    yield {**good, "surprise": torch.zeros(1)}, "surprise"


@pytest.mark.parametrize("state, name", list(bad_states()))
def test_bad_state_dict_is_refused_and_changes_nothing(state, name):
    fi = served(served(FairInference(group_shares=[0.4, 0.6])))
    before = snapshot(fi)
    with pytest.raises(ValueError, match=name):
        fi.load_state_dict(state)
    assert same(before, snapshot(fi))


def test_model_mismatch_in_a_state_dict_changes_nothing():
    fi = FairInference(torch.nn.Linear(3, 1), protected_attr_idx=0)
    fi(torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]]))
    other = FairInference(torch.nn.Linear(4, 1), protected_attr_idx=0)
    before = snapshot(fi)
    with pytest.raises(ValueError, match="size mismatch"):
        fi.load_state_dict(other.state_dict())
    assert same(before, snapshot(fi))


# ------------------------------------------------------------- random call sequences
valid_batch = st.tuples(st.integers(1, 70), st.integers(0, 2 ** 16))
invalid_kind = st.sampled_from(["nan", "overflow", "group", "shape", "half", "labels_nan"])


@settings(max_examples=30, deadline=None)
@given(calls=st.lists(st.one_of(
    st.tuples(st.just("valid"), valid_batch),
    st.tuples(st.just("invalid"), st.tuples(invalid_kind, st.integers(0, 2 ** 16))),
    st.tuples(st.just("load_bad"), st.integers(0, 2)),
    st.tuples(st.just("load_good"), st.just(0)),
    st.tuples(st.just("reset"), st.just(0)),
), min_size=1, max_size=12),
    metric=st.sampled_from(["mean_pred", "positive_rate", "mean_residual", "equalized_odds"]),
    bounded=st.booleans())
def test_random_calls_never_leave_a_half_changed_state(calls, metric, bounded):
    bounds = (0.0, 1.0) if bounded else None
    fi = FairInference(metric=metric, prediction_bounds=bounds, b_tau=32)
    other = FairInference(metric=metric, prediction_bounds=bounds, b_tau=32)
    labelled = metric in ("equalized_odds", "mean_residual")
    for kind, arg in calls:
        if kind == "valid":
            n, seed = arg
            gen = torch.Generator().manual_seed(seed)
            z = torch.rand(n, generator=gen)
            g = (torch.rand(n, generator=gen) < 0.4).long()
            y = (torch.rand(n, generator=gen) < 0.5).float() if labelled else None
            q = fi.adjust(z, g, y)
            other.adjust(z, g, y)
            assert torch.isfinite(q).all()
            continue
        if kind == "reset":
            fi.reset()
            continue
        if kind == "load_good":
            fi.load_state_dict(other.state_dict())
            continue
        before = snapshot(fi)
        with pytest.raises(ValueError):
            if kind == "load_bad":
                wrong = [FairInference(num_groups=3, metric=metric),
                         FairInference(metric=metric, fairness_tolerance=0.2),
                         None][arg]
                sd = wrong.state_dict() if wrong is not None else dict(
                    other.state_dict(), count=torch.full_like(other.count, math.nan))
                fi.load_state_dict(sd)
            else:
                bad, seed = arg
                z = torch.rand(4, generator=torch.Generator().manual_seed(seed))
                g = torch.tensor([0, 1, 0, 1])
                y = torch.tensor([0.0, 1.0, 1.0, 0.0])
                if bad == "nan":
                    z[seed % 4] = math.nan
                elif bad == "overflow":
                    z = torch.tensor([1e308, -1e308, 1e308, 1.0], dtype=torch.float64)
                elif bad == "group":
                    g = torch.tensor([0, 1, 5, 1])
                elif bad == "shape":
                    z = z.view(2, 2)
                elif bad == "half":
                    z = z.half()
                else:
                    y = torch.tensor([0.0, math.nan, 1.0, 0.0])
                    if not labelled and metric != "positive_rate":
                        y = torch.tensor([0.0, math.inf, 1.0, 0.0])
                fi.adjust(z, g, y if (labelled or bad == "labels_nan") else None)
        assert same(before, snapshot(fi))
