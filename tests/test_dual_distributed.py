"""process_group averages the dual-step values across 2 gloo processes on CPU, and every rank
takes the same decision on faults (no rank is left waiting in a collective)."""

import math
import os
import re
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from distributed_support import gloo_worker

from humancompatible_train.dual_optim import ALM, PrimalDual

LOCAL = {0: [[1.0, -2.0], [0.5, 0.5], [-1.0, 3.0]], 1: [[3.0, 0.0], [-0.5, 1.5], [2.0, -1.0]]}


def _averaging(rank, out_dir):
    alm = ALM(2, lr=0.5, momentum=0.5, is_ineq=True, process_group=dist.group.WORLD)
    pd = PrimalDual(2, eta_0=0.5, process_group=dist.group.WORLD)
    lagrangians = []
    for c in LOCAL[rank]:
        local = torch.tensor(c)
        lagrangians.append(alm.forward_update(torch.tensor(0.0), local).item())
        pd.step(local)
    torch.save({"alm": alm.duals, "pd": pd.duals, "lagr": lagrangians},
               os.path.join(out_dir, f"rank{rank}.pt"))


def _body(rank, out_dir):
    _averaging(rank, out_dir)
    _faults(rank, out_dir)


@pytest.fixture(scope="module")
def results():
    """One pair of processes for every test of this file (spawning costs seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.start_processes(gloo_worker, args=(2, f"file://{init_file}", _body, tmp),
                           nprocs=2, join=True, start_method="spawn")
        yield {name: [torch.load(os.path.join(tmp, f"{name}{i}.pt"), weights_only=True)
                      for i in (0, 1)] for name in ("rank", "faults")}


def test_two_process_duals_identical_and_equal_to_averaged_run(results):
    r0, r1 = results["rank"]

    alm = ALM(2, lr=0.5, momentum=0.5, is_ineq=True)
    pd = PrimalDual(2, eta_0=0.5)
    expected_lagr = {0: [], 1: []}
    for c0, c1 in zip(LOCAL[0], LOCAL[1]):
        avg = (torch.tensor(c0) + torch.tensor(c1)) / 2
        alm.step(avg)
        pd.step(avg)
        for rank, c in ((0, c0), (1, c1)):
            # The Lagrangian keeps each rank's local values.
            expected_lagr[rank].append(torch.dot(alm.duals, torch.tensor(c)).item())
    for r in (r0, r1):
        assert torch.equal(r["alm"], alm.duals)
        assert torch.equal(r["pd"], pd.duals)
    assert r0["lagr"] == pytest.approx(expected_lagr[0])
    assert r1["lagr"] == pytest.approx(expected_lagr[1])
    assert r0["lagr"] != pytest.approx(r1["lagr"])


def _attempt(call):
    try:
        call()
    except ValueError as exc:
        return str(exc)
    return None


def _faults(rank, out_dir):
    nan = float("nan")
    world_group = dist.group.WORLD
    out = {}
    alm = ALM(2, lr=0.5, is_ineq=True, process_group=world_group)
    alm.step(torch.tensor([1.0, 1.0]))
    before = alm.duals
    zero = torch.tensor(0.0)
    # A NaN in the Lagrangian's values on rank 0 only, proxies finite everywhere.
    out["lagrangian"] = _attempt(lambda: alm.forward_update(
        zero, torch.tensor([nan if rank == 0 else 0.1, 0.2]),
        dual_constraints=torch.tensor([0.3, 0.3])))
    # A NaN in the proxies on rank 1 only.
    out["proxies"] = _attempt(lambda: alm.forward_update(
        zero, torch.tensor([0.1, 0.2]),
        dual_constraints=torch.tensor([0.3, nan if rank == 1 else 0.3])))
    # The plain step with an Inf on rank 0.
    out["plain"] = _attempt(lambda: alm.step(torch.tensor([0.1, math.inf * (rank == 0)])))
    out["unchanged"] = torch.equal(alm.duals, before)
    # The group still works afterwards.
    alm.step(torch.tensor([0.2 * (rank + 1), 0.0]))
    out["after"] = alm.duals
    # Unchecked mode: the NaN of rank 0 is masked out on both ranks alike.
    masked = ALM(2, lr=1.0, process_group=world_group, check_finite=False)
    masked.step(torch.tensor([nan if rank == 0 else 1.0, 1.0]))
    out["masked"] = masked.duals
    # Ranks built differently are told so, on every rank, at the first step.
    lr = ALM(1, lr=0.5 + 0.2 * rank, process_group=world_group)
    out["lr"] = _attempt(lambda: lr.step(torch.tensor(0.1)))
    sizes = ALM(1 + rank, lr=0.5, process_group=world_group)
    out["sizes"] = _attempt(lambda: sizes.step(torch.zeros(1 + rank)))
    start = ALM(1, lr=0.5, process_group=world_group, init_duals=float(rank))
    out["duals"] = _attempt(lambda: start.step(torch.tensor(0.1)))
    torch.save(out, os.path.join(out_dir, f"faults{rank}.pt"))


def test_every_rank_takes_the_same_decision(results):
    r = results["faults"]
    # The rank with the NaN names it; its peer says that another process had one.
    assert re.search(r"^constraints: non-finite value\(s\) in constraint group 'g0' at index "
                     r"\[0\] .*no multiplier was changed on any process$", r[0]["lagrangian"])
    assert r[1]["lagrangian"].startswith("constraints: a non-finite constraint value on "
                                         "another process")
    for rank in (0, 1):
        assert "(averaged over the process group): non-finite value(s) in constraint group " \
               "'g0' at index [1]" in r[rank]["proxies"]
        assert "at index [1]" in r[rank]["plain"]
        assert r[rank]["unchanged"]
        assert "different values of constraint group 'g0': lr" in r[rank]["lr"]
        assert "expected every rank's ALM to hold the same constraint groups" in r[rank]["sizes"]
        assert "different values of constraint group 'g0': multiplier" in r[rank]["duals"]
    # lambda = 0.5 after the first step; then the average (0.2 + 0.4) / 2 = 0.3 at lr 0.5
    assert torch.equal(r[0]["after"], r[1]["after"])
    assert r[0]["after"].tolist() == pytest.approx([0.5 + 0.5 * 0.3, 0.5])
    # the NaN makes the averaged entry NaN, so both ranks leave it out
    assert r[0]["masked"].tolist() == r[1]["masked"].tolist() == [0.0, 1.0]
