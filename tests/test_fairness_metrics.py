"""GroupMetrics: exact accumulation, hand-checked values, p%-rule, distributed sums."""

import math
import os
import tempfile
import time

import hypothesis.strategies as st
import pytest
import torch
import torch.multiprocessing as mp
from distributed_support import gloo_worker
from hypothesis import given, settings

from humancompatible_train.fairness import GroupMetrics


def data(n=1000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randint(0, 3, (n,), generator=gen)
    y = (torch.rand(n, generator=gen) < 0.4).long()
    p = torch.rand(n, generator=gen)
    return p, g, y


def test_hand_computed_values():
    gm = GroupMetrics(["a", "b"])
    gm.update(torch.tensor([0.9, 0.2, 0.7, 0.6]), torch.tensor([0, 0, 1, 1]),
              torch.tensor([1, 0, 0, 1]))
    r = gm.compute()
    assert r.by_group["count"] == [2, 2]
    assert r.by_group["positive_rate"] == [0.5, 1.0]
    assert r.by_group["mean_score"] == pytest.approx([0.55, 0.65])
    assert r.by_group["tpr"] == [1.0, 1.0] and r.by_group["fpr"] == [0.0, 1.0]
    assert r.by_group["ppv"] == [1.0, 0.5] and r.by_group["accuracy"] == [1.0, 0.5]
    assert r.by_group["for"][0] == 0.0 and math.isnan(r.by_group["for"][1])
    assert r.overall["positive_rate"] == 0.75
    assert r.p_rule == 0.5
    assert r.difference("positive_rate") == 0.5
    assert r.difference("positive_rate", method="to_overall") == 0.25
    assert r.ratio("positive_rate", method="to_overall") == pytest.approx(0.5 / 0.75)
    assert "p%-rule" in str(r) and r.to_dict()["p_rule"] == 0.5
    assert list(r.to_pandas().index) == ["a", "b", "overall"]


def test_batchwise_equals_one_shot_exactly():
    p, g, y = data()
    once, batched = GroupMetrics(3), GroupMetrics(3)
    once.update(p, g, y)
    for i in range(0, 1000, 37):
        batched.update(p[i:i + 37], g[i:i + 37], y[i:i + 37])
    a, b = once.compute(), batched.compute()
    assert a.by_group == b.by_group and a.overall == b.overall
    # and equal to direct formulas
    sel = g == 2
    assert a.by_group["positive_rate"][2] == pytest.approx(float((p[sel] >= 0.5).double().mean()))
    tpr = float(((p >= 0.5) & (y == 1) & sel).sum() / ((y == 1) & sel).sum())
    assert a.by_group["tpr"][2] == pytest.approx(tpr)


def test_logits_onehot_and_reset():
    gm = GroupMetrics(2, scores="logits", threshold=0.5)
    gm.update(torch.tensor([2.0, -2.0]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert gm.compute().by_group["positive_rate"] == [1.0, 0.0]
    assert "tpr" not in gm.compute().by_group  # no labels, no label metrics
    gm.reset()
    with pytest.warns(UserWarning, match="before any update"):
        assert gm.compute().by_group["count"] == [0, 0]


def test_errors():
    gm = GroupMetrics(["a", "b"])
    with pytest.raises(ValueError, match=r"sens: expected group ids in 0..1"):
        gm.update(torch.tensor([0.1]), torch.tensor([2]))
    with pytest.raises(ValueError, match="sens: expected 2 rows"):
        gm.update(torch.tensor([0.1, 0.2]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"labels: expected values in \{0, 1\}, got \[2.0\]"):
        gm.update(torch.tensor([0.1]), torch.tensor([0]), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"pred: expected probabilities in \[0, 1\]"):
        gm.update(torch.tensor([1.5]), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels: give them with every batch or with none"):
        gm.update(torch.tensor([0.1]), torch.tensor([0]), torch.tensor([1]))
        gm.update(torch.tensor([0.1]), torch.tensor([0]))
    gm.reset()
    with pytest.raises(ValueError, match="metric: expected one of"):
        gm.update(torch.tensor([0.1, 0.9]), torch.tensor([0, 1]))
        gm.compute().difference("tpr")
    with pytest.raises(ValueError, match="method: expected"):
        gm.update(torch.tensor([0.1, 0.9]), torch.tensor([0, 1]))
        gm.compute().difference(method="sideways")


def _body(rank, out_dir):
    p, g, y = data()
    part = slice(0, 600) if rank == 0 else slice(600, 1000)
    gm = GroupMetrics(3)  # process_group="auto": sums over the initialised world
    gm.update(p[part], g[part], y[part])
    torch.save(gm.compute().by_group, os.path.join(out_dir, f"r{rank}.pt"))
    local = GroupMetrics(3, process_group=None)
    local.update(p[part], g[part], y[part])
    torch.save(local.compute().by_group, os.path.join(out_dir, f"local{rank}.pt"))


def test_distributed_counts_are_summed():
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(gloo_worker, args=(2, f"file://{os.path.join(tmp, 'init')}",
                                                    _body, tmp),
                                 nprocs=2, join=False, start_method="spawn")
        deadline = time.monotonic() + 120
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    proc.terminate()
                pytest.fail("distributed workers did not finish within 120 s")
        r0, r1, local0 = (torch.load(os.path.join(tmp, f), weights_only=True)
                          for f in ("r0.pt", "r1.pt", "local0.pt"))
    p, g, y = data()
    whole = GroupMetrics(3)
    whole.update(p, g, y)
    assert r0 == r1 == whole.compute().by_group
    assert local0["count"] != r0["count"]  # process_group=None does not sync


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, 300), max_size=12), seed=st.integers(0, 1000))
def test_any_batching_equals_one_shot_exactly(cuts, seed):
    p, g, y = data(300, seed)
    once = GroupMetrics(3)
    once.update(p, g, y)
    batched = GroupMetrics(3)
    bounds = [0, *sorted(cuts), 300]
    for a, b in zip(bounds, bounds[1:]):
        batched.update(p[a:b], g[a:b], y[a:b])
    assert torch.equal(once.counts, batched.counts)
    ra, rb = once.compute(), batched.compute()
    assert str(ra.by_group) == str(rb.by_group) and ra.overall == rb.overall


def test_p_rule_differences_and_ratios_by_hand_for_three_groups():
    # positive rates 1/4, 2/4, 3/4 on hard decisions
    pred = torch.tensor([0.9, 0.1, 0.1, 0.1, 0.9, 0.9, 0.1, 0.1, 0.9, 0.9, 0.9, 0.1])
    sens = torch.arange(12) // 4
    gm = GroupMetrics(["x", "y", "z"])
    gm.update(pred, sens)
    r = gm.compute()
    assert r.by_group["positive_rate"] == [0.25, 0.5, 0.75]
    assert r.overall["positive_rate"] == 0.5
    assert r.p_rule == pytest.approx(1 / 3)
    assert r.group_min("positive_rate") == 0.25 and r.group_max("positive_rate") == 0.75
    assert r.difference("positive_rate") == 0.5
    assert r.difference("positive_rate", method="to_overall") == 0.25
    assert r.ratio("positive_rate", method="to_overall") == pytest.approx(0.5)
    assert set(r.difference()) == {"positive_rate", "mean_score"}
    assert "33.3%" in str(r)


def test_threshold_and_soft_metrics_by_hand():
    gm = GroupMetrics(2, threshold=0.7)
    gm.update(torch.tensor([0.8, 0.6, 0.2, 0.9]), torch.tensor([0, 0, 1, 1]),
              torch.tensor([1, 1, 0, 1]))
    r = gm.compute()
    assert r.by_group["tpr"] == [0.5, 1.0]
    assert r.by_group["soft_tpr"] == pytest.approx([0.7, 0.9])
    assert r.by_group["soft_fpr"][1] == pytest.approx(0.2) and math.isnan(r.by_group["fpr"][0])
    assert r.by_group["soft_ppv"] == pytest.approx([1.0, 0.9 / 1.1])
    assert r.by_group["soft_accuracy"] == pytest.approx([0.7, (0.8 + 0.9) / 2])
    assert r.by_group["base_rate"] == [1.0, 0.5]


def test_intersections_and_per_attribute_p_rule():
    gen = torch.Generator().manual_seed(2)
    n = 500
    sex, race = torch.randint(0, 2, (n,), generator=gen), torch.randint(0, 2, (n,), generator=gen)
    p = torch.rand(n, generator=gen)
    inter = GroupMetrics({"sex": ["f", "m"], "race": ["b", "w"]})
    inter.update(p, torch.stack([sex, race], 1))
    rep = inter.compute()
    assert rep.group_names == ["f&b", "f&w", "m&b", "m&w"]
    for name, attr in (("sex", sex), ("race", race)):
        single = GroupMetrics(2)
        single.update(p, attr)
        marg = rep.by_attribute(name)
        assert marg.by_group["count"] == single.compute().by_group["count"]
        assert marg.p_rule == pytest.approx(single.compute().p_rule)
    assert rep.by_attribute(1).group_names == ["b", "w"]
    with pytest.raises(ValueError, match="attribute: expected one of"):
        rep.by_attribute("age")


def test_export_and_checkpoint():
    p, g, y = data(100)
    gm = GroupMetrics(["a", "b", "c"])
    gm.update(p, g, y)
    r = gm.compute()
    d = r.to_dict()
    assert d["groups"] == ["a", "b", "c"] and d["p_rule"] == r.p_rule
    assert d["difference"]["tpr"] == r.difference("tpr")
    frame = r.to_pandas()
    assert frame.loc["overall", "accuracy"] == r.overall["accuracy"]
    assert frame.loc["b", "fpr"] == r.by_group["fpr"][1]
    state = gm.state_dict()
    other = GroupMetrics(["a", "b", "c"])
    other.load_state_dict(state)
    gm.update(p, g, y)  # the saved state is a copy
    assert other.compute().by_group == r.by_group


def test_fairret_overlapping_columns_are_weights_and_overall_counts_each_row_once():
    gen = torch.Generator().manual_seed(4)
    n = 200
    sex, race = torch.randint(0, 2, (n,), generator=gen), torch.randint(0, 2, (n,), generator=gen)
    p = torch.rand(n, generator=gen)
    sens = torch.cat([torch.nn.functional.one_hot(sex, 2),
                      torch.nn.functional.one_hot(race, 2)], 1).float()  # fairret's layout
    gm = GroupMetrics(["f", "m", "b", "w"])
    gm.update(p, sens)
    r = gm.compute()
    single = GroupMetrics(2)
    single.update(p, race)
    assert r.overall["count"] == n and sum(r.by_group["count"]) == 2 * n
    assert r.by_group["positive_rate"][2:] == single.compute().by_group["positive_rate"]
