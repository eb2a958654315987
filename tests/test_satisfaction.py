"""Meeting constraints where users look: BestIterate (TFCO's candidate rules, checked against
brute force and scipy's LP), HeldOutConstraints (validation-driven dual step) and
GroupThresholds (exact per-group thresholds, checked against brute force)."""

import io
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from humancompatible_train.dual_optim import (
    ALM,
    BestIterate,
    GroupThresholds,
    HeldOutConstraints,
)
from humancompatible_train.fairness import FairnessConstraint


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ------------------------------------------------------------------ BestIterate
def test_best_feasible_by_objective_else_least_violation():
    chooser = BestIterate()
    assert chooser.consider(0.50, torch.tensor([0.02, -0.1]), step=1)   # infeasible
    assert chooser.consider(0.60, torch.tensor([0.01, -0.1]), step=2)   # less violation
    assert chooser.consider(0.70, torch.tensor([-0.01, -0.2]), step=3)  # first feasible
    assert not chooser.consider(0.80, [torch.tensor([0.0]), torch.tensor([-1.0])], step=4)
    assert chooser.consider(0.65, {"a": torch.tensor([-0.001])}, step=5)
    assert not chooser.consider(0.10, 0.5, step=6)  # best objective, but infeasible
    best = chooser.best()
    assert (best.index, best.step, best.objective, best.feasible) == (4, 5, 0.65, True)


def test_tolerance_and_ties():
    chooser = BestIterate(tolerance=0.01)
    chooser.consider(0.3, 0.02)
    chooser.consider(0.2, 0.02)  # same violation, lower objective: wins the tie
    assert chooser.best_index() == 1
    chooser.consider(0.9, 0.01)  # feasible at the tolerance
    assert chooser.best_index() == 2


def _brute_force(objectives, violations, tol):
    feasible = [i for i, v in enumerate(violations) if v <= tol]
    if feasible:
        return min(feasible, key=lambda i: (objectives[i], violations[i], i))
    return min(range(len(violations)), key=lambda i: (violations[i], objectives[i], i))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-100, 100), st.integers(-100, 100)), min_size=1,
                max_size=12),
       st.sampled_from([0.0, 0.02]))
def test_best_matches_brute_force_and_lp(pairs, tol):
    # Values on a grid of 1e-3, so that scipy's feasibility tolerance (1e-9) cannot decide.
    f = [a / 100 for a, _ in pairs]
    v = [b / 1000 for _, b in pairs]
    chooser = BestIterate(tolerance=tol)
    for a, b in zip(f, v):
        chooser.consider(a, b)
    assert chooser.best_index() == _brute_force(f, v, tol)
    p = chooser.distribution().numpy()
    assert p.min() >= 0 and abs(p.sum() - 1) < 1e-12 and (p > 0).sum() <= 2
    if min(v) <= tol:
        # The same linear program, solved by scipy: min f.p  s.t.  v.p <= tol, sum p = 1.
        lp = linprog(f, A_ub=[v], b_ub=[tol], A_eq=[np.ones(len(f))], b_eq=[1],
                     bounds=(0, None), method="highs")
        assert lp.status == 0
        assert np.dot(f, p) == pytest.approx(lp.fun, abs=1e-9)
        assert np.dot(v, p) <= tol + 1e-12
    else:
        assert p[chooser.best_index()] == 1.0


def test_states_are_copies_and_checkpoint_roundtrips():
    model = torch.nn.Linear(2, 1)
    chooser = BestIterate(keep="all")
    for epoch in range(3):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        chooser.consider(1.0 - epoch / 10, -0.1 if epoch != 2 else 0.1,
                         {"model": model.state_dict()}, step=epoch)
    # The stored state is a copy, not the live parameters.
    assert chooser.best().state["model"]["weight"].eq(1.0).all()
    restored = BestIterate()
    restored.load_state_dict(_roundtrip(chooser))
    assert restored.best_index() == 1 and restored.keep == "all"
    assert restored.candidate(2).state["model"]["weight"].eq(2.0).all()
    sample = restored.sample(torch.Generator().manual_seed(0))
    assert sample.index in (1, 2)


def test_keep_best_stores_one_state():
    chooser = BestIterate()
    for i, v in enumerate([0.1, -0.1, 0.2]):
        chooser.consider(float(i), v, {"i": torch.tensor(i)})
    assert [c.state is not None for c in chooser.candidates] == [False, True, False]


@pytest.mark.parametrize("objective,violation", [
    (float("nan"), 0.0), (0.0, float("nan")), (0.0, torch.tensor([0.0, float("inf")])),
    (torch.tensor([1.0, 2.0]), 0.0), (0.0, []), (0.0, torch.tensor([])), ("0.1", 0.0),
])
def test_bad_candidates_change_nothing(objective, violation):
    chooser = BestIterate()
    chooser.consider(0.5, -0.1, {"w": torch.ones(1)})
    before = _roundtrip(chooser)
    with pytest.raises(ValueError):
        chooser.consider(objective, violation, {"w": torch.zeros(1)})
    after = chooser.state_dict()
    assert len(chooser) == 1 and torch.equal(after["objectives"], before["objectives"])
    assert torch.equal(after["states"][0]["w"], before["states"][0]["w"])


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="keep: expected one of"):
        BestIterate(keep="last")
    with pytest.raises(ValueError, match="no candidate yet"):
        BestIterate().best()
    with pytest.raises(ValueError, match="state_dict"):
        BestIterate().load_state_dict({"keep": "best"})


# ------------------------------------------------------------------ HeldOutConstraints
def _val_batches():
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g))
            for _ in range(3)]


def test_cycles_the_loader_in_eval_mode_without_gradients():
    batches = _val_batches()
    model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Dropout(0.5))
    model.train()
    seen = []

    def rows(x, s):
        seen.append(model.training)
        out = model(x).reshape(-1)
        return torch.stack([out[s == 0].mean() - out[s == 1].mean()])

    held = HeldOutConstraints(batches, rows, model=model, margin=0.25)
    values = [held() for _ in range(7)]
    assert seen == [False] * 7 and model.training
    assert all(not v.requires_grad for v in values)
    # Batches 0, 1, 2, 0, 1, 2, 0: passes counted, same values on each pass, margin added.
    torch.testing.assert_close(values[3], values[0])
    assert (held.passes, held.batches) == (2, 1)
    x, s = batches[1]
    with torch.no_grad():
        out = model.eval()(x).reshape(-1)
    torch.testing.assert_close(values[1], torch.stack([out[s == 0].mean() -
                                                       out[s == 1].mean()]) + 0.25)


def test_resume_continues_the_sequence():
    batches = _val_batches()
    fc = lambda x, s: x.sum(0)  # noqa: E731
    held = HeldOutConstraints(batches, fc)
    for _ in range(4):
        held()
    state = _roundtrip(held)
    rest = [held() for _ in range(5)]
    again = HeldOutConstraints(batches, fc)
    again.load_state_dict(state)
    for a, b in zip(rest, [again() for _ in range(5)]):
        assert torch.equal(a, b)


def test_drives_the_dual_step_with_constraint_values_and_layouts():
    fc = FairnessConstraint("PositiveRate", 2, mode="pairwise", eps=0.05)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    s = torch.nn.functional.one_hot(torch.arange(64) % 2, 2).float()
    model = torch.nn.Linear(3, 1)
    held = HeldOutConstraints([(x, s)], lambda x, s: fc(model(x), s), model=model)
    dual = ALM(2, lr=1.0, is_ineq=True)
    train_rows = fc(model(x), s).values
    dual.forward_update(torch.tensor(0.0), train_rows, dual_constraints=held())
    expected = torch.clamp(fc(model(x), s).values.detach(), min=0)
    torch.testing.assert_close(dual.duals, expected)
    mapped = HeldOutConstraints([(x, s)], lambda x, s: {"g": fc(model(x), s).values},
                                margin=0.1)
    assert torch.allclose(mapped()["g"], fc(model(x), s).values.detach() + 0.1)


@pytest.mark.parametrize("kwargs,match", [
    ({"loader": iter([1]), "constraints": abs}, "loader"),
    ({"loader": [1], "constraints": 3}, "constraints"),
    ({"loader": [1], "constraints": abs, "margin": -0.1}, "margin"),
    ({"loader": [1], "constraints": abs, "model": "m"}, "model"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HeldOutConstraints(**kwargs)


def test_empty_loader_and_bad_values_raise():
    with pytest.raises(ValueError, match="empty loader"):
        HeldOutConstraints([], abs)()
    with pytest.raises(ValueError, match="constraints"):
        HeldOutConstraints([(1,)], lambda a: "x")()


# ------------------------------------------------------------------ GroupThresholds
def _brute(scores, groups, labels, eps):
    cands = sorted(set(scores.tolist())) + [np.inf]
    best = -1
    for t0, t1 in itertools.product(cands, cands):
        d = np.where(groups == 0, scores >= t0, scores >= t1)
        if abs(d[groups == 0].mean() - d[groups == 1].mean()) <= eps + 1e-12:
            best = max(best, int((d == labels).sum()))
    return best


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(4, 11), st.floats(0.0, 0.6))
def test_thresholds_are_the_most_accurate_fair_ones(seed, n, eps):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, generator=g).round(decimals=1)  # ties included
    groups = torch.randint(0, 2, (n,), generator=g)
    groups[:2] = torch.tensor([0, 1])
    labels = torch.randint(0, 2, (n,), generator=g)
    fitted = GroupThresholds(eps).fit(scores, groups, labels)
    d = fitted.decide(scores, groups)
    rates = [d[groups == k].double().mean() for k in (0, 1)]
    assert abs(rates[0] - rates[1]) <= eps + 1e-9
    assert int((d.long() == labels).sum()) == _brute(scores.numpy(), groups.numpy(),
                                                     labels.numpy(), eps)


def test_margin_unlabelled_three_groups_and_checkpoint():
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(300, generator=g)
    groups = torch.arange(300) % 3
    scores = scores + 0.2 * (groups == 0)  # group 0 favoured
    fitted = GroupThresholds(0.1, margin=0.04).fit(scores, groups)
    d = fitted.decide(scores, groups)
    rates = torch.stack([d[groups == k].double().mean() for k in range(3)])
    assert float(rates.max() - rates.min()) <= 0.06 + 1e-12
    # Without labels: as few decisions as possible differ from p >= 0.5.
    changed = int((d != (scores >= 0.5)).sum())
    base = (scores >= 0.5).double()
    base_rates = torch.stack([base[groups == k].mean() for k in range(3)])
    assert changed <= round(float(base_rates.max() - base_rates.min() - 0.06) * 100) + 2
    again = GroupThresholds()
    again.load_state_dict(_roundtrip(fitted))
    assert torch.equal(again.decide(scores, groups), d)


@pytest.mark.parametrize("scores,groups,match", [
    (torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]), "scores"),
    (torch.tensor([0.1, 0.2]), torch.tensor([0.0, 1.0]), "groups"),
    (torch.tensor([0.1, 0.2]), torch.tensor([0, 0]), "at least two groups"),
    (torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 2, 2]), "present"),
])
def test_threshold_errors(scores, groups, match):
    with pytest.raises(ValueError, match=match):
        GroupThresholds().fit(scores, groups)
    with pytest.raises(ValueError, match="fit"):
        GroupThresholds().decide(torch.tensor([0.5]), torch.tensor([0]))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(
    st.one_of(st.floats(-1, 1), st.just(float("nan")), st.just("x")),
    st.one_of(st.floats(-0.1, 0.1), st.just(float("inf")), st.just([])),
), min_size=1, max_size=10))
def test_random_calls_either_record_or_change_nothing(calls):
    chooser = BestIterate(keep="all")
    for f, v in calls:
        before = _roundtrip(chooser)
        try:
            chooser.consider(f, v, {"f": torch.tensor([0.0])})
        except ValueError:
            after = chooser.state_dict()
            assert torch.equal(after["objectives"], before["objectives"])
            assert torch.equal(after["violations"], before["violations"])
            assert sorted(after["states"]) == sorted(before["states"])


def test_a_failed_fit_keeps_the_previous_thresholds():
    scores = torch.tensor([0.9, 0.2, 0.8, 0.4])
    groups = torch.tensor([0, 0, 1, 1])
    fitted = GroupThresholds(0.0).fit(scores, groups, torch.tensor([1, 0, 1, 0]))
    before = fitted.thresholds.clone()
    with pytest.raises(ValueError, match="labels"):
        fitted.fit(scores, groups, torch.tensor([1, 0, 2, 0]))
    assert torch.equal(fitted.thresholds, before)


# ------------------------------------------------------------------ the benchmark's cache
def test_readme_table_is_reproducible_from_the_committed_cache():
    """``fairness_tradeoff.py --summary-only --markdown`` on the committed (gzip) cache prints
    the README's table, row for row."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "fairness_tradeoff.py"),
                           "--summary-only", "--markdown"], capture_output=True, text=True,
                          cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 2 * 7  # header, then 7 rows per data set
    readme = (root / "README.md").read_text(encoding="utf-8").splitlines()
    assert all(row in readme for row in rows)
    assert "default: train gap <= eps in" in done.stdout


def test_benchmark_cache_round_trips_through_gzip(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fairness_tradeoff.py"
    spec = importlib.util.spec_from_file_location("fairness_tradeoff", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    traced = next(iter(bench.TRACED))
    results = {traced: {"test acc": 0.8, "lambda trace": [0.1, 0.2]},
               "dutch|0|0.05|256|default|1ep": {"test acc": 0.7, "lambda trace": [0.3]}}
    for name in ("cache.json.gz", "cache.json"):
        bench.save({k: dict(v) for k, v in results.items()}, tmp_path / name)
        back = bench.load(tmp_path / name)
        assert back[traced] == results[traced]  # the plotted trace is kept
        assert back["dutch|0|0.05|256|default|1ep"] == {"test acc": 0.7}  # others dropped
    raw = (tmp_path / "cache.json.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b"  # gzip
    bench.save(back, tmp_path / "again.json.gz")
    bench.save(back, tmp_path / "twice.json.gz")
    assert (tmp_path / "again.json.gz").read_bytes() == (tmp_path / "twice.json.gz").read_bytes()
    assert bench.load(tmp_path / "absent.json.gz") == {}
