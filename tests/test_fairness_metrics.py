"""GroupMetrics: exact accumulation, hand-checked values, p%-rule, distributed sums."""

import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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
    assert gm.compute().by_group["count"] == [0, 0]


def test_errors():
    gm = GroupMetrics(["a", "b"])
    with pytest.raises(ValueError, match=r"group ids must lie in 0..1"):
        gm.update(torch.tensor([0.1]), torch.tensor([2]))
    with pytest.raises(ValueError, match="sens: expected 2 rows"):
        gm.update(torch.tensor([0.1, 0.2]), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels: expected 1 values in"):
        gm.update(torch.tensor([0.1]), torch.tensor([0]), torch.tensor([2]))
    with pytest.raises(ValueError, match="method: expected"):
        gm.update(torch.tensor([0.1, 0.9]), torch.tensor([0, 1]))
        gm.compute().difference(method="sideways")


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        p, g, y = data()
        part = slice(0, 600) if rank == 0 else slice(600, 1000)
        gm = GroupMetrics(3, process_group=dist.group.WORLD)
        gm.update(p[part], g[part], y[part])
        torch.save(gm.compute().by_group, os.path.join(out_dir, f"r{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_distributed_counts_are_summed():
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2,
                           join=True, start_method="spawn")
        r0 = torch.load(os.path.join(tmp, "r0.pt"), weights_only=True)
        r1 = torch.load(os.path.join(tmp, "r1.pt"), weights_only=True)
    p, g, y = data()
    whole = GroupMetrics(3)
    whole.update(p, g, y)
    assert r0 == r1 == whole.compute().by_group
