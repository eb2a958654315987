"""process_group averages the dual-step values across 2 gloo processes on CPU."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from humancompatible_train.dual_optim import ALM, PrimalDual

LOCAL = {0: [[1.0, -2.0], [0.5, 0.5], [-1.0, 3.0]], 1: [[3.0, 0.0], [-0.5, 1.5], [2.0, -1.0]]}


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        alm = ALM(2, lr=0.5, momentum=0.5, is_ineq=True, process_group=dist.group.WORLD)
        pd = PrimalDual(2, eta_0=0.5, process_group=dist.group.WORLD)
        lagrangians = []
        for c in LOCAL[rank]:
            local = torch.tensor(c)
            lagrangians.append(alm.forward_update(torch.tensor(0.0), local).item())
            pd.step(local)
        torch.save({"alm": alm.duals, "pd": pd.duals, "lagr": lagrangians},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        # Leave together: a rank tearing down gloo while its peer still talks aborts the peer.
        dist.barrier()
    finally:
        dist.destroy_process_group()



def test_two_process_duals_identical_and_equal_to_averaged_run():
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.start_processes(_worker, args=(2, init_file, tmp), nprocs=2, join=True,
                           start_method="spawn")
        r0 = torch.load(os.path.join(tmp, "rank0.pt"), weights_only=True)
        r1 = torch.load(os.path.join(tmp, "rank1.pt"), weights_only=True)

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
