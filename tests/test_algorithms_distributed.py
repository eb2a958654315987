"""iALM, PBM, SSG, the optimistic dual step and partially observed constraints under a
2-process gloo group: every rank holds the multipliers of a single-process run on the averaged
values (for observed entries: averaged over the ranks that observed them)."""

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from distributed_support import gloo_worker

from humancompatible_train.dual_optim import ALM, PBM, SSG, Optimistic, iALM

LOCAL = {0: [[1.0, -2.0], [0.5, 0.5], [-1.0, 3.0]], 1: [[3.0, 0.0], [-0.5, 1.5], [2.0, -1.0]]}


# rank -> steps of (values, observed indices) of a 4-constraint group
OBSERVED = {0: [([1.0, 2.0], [0, 1]), ([4.0], [3])], 1: [([3.0, -1.0], [1, 2]), ([2.0], [3])]}


def build(process_group=None):
    return {
        "ialm": iALM(2, lr=0.5, sigma=2.0, gamma=1.0, is_ineq=True, process_group=process_group),
        "pbm": PBM(2, lr=0.5, penalty_update="aimd", epoch_length=2,
                   process_group=process_group),
        "ssg": SSG(2, lr=2.0, tol=0.5, process_group=process_group),
        "optimistic": iALM(2, lr=0.5, gamma=10.0, process_group=process_group),
    }


def run(duals, values):
    """Steps on the given per-step values; returns the multipliers after each step."""
    x = torch.zeros(1, requires_grad=True)
    og = Optimistic(torch.optim.SGD([x], lr=0.1), duals["optimistic"])
    out = {k: [] for k in duals}
    for c in values:
        for name, dual in duals.items():
            if name == "optimistic":
                og.forward_update(x.sum(), c)
            else:
                dual.forward_update(torch.tensor(0.0), c)
            out[name].append(dual.duals)
    return out


def _body(rank, out_dir):
    out = run(build(dist.group.WORLD), [torch.tensor(c) for c in LOCAL[rank]])
    indexed = ALM(4, lr=1.0, momentum=0.5, process_group=dist.group.WORLD)
    for values, idx in OBSERVED[rank]:
        indexed.step(torch.tensor(values), indices=torch.tensor(idx))
    out["indexed"] = [indexed.duals, indexed.state_dict()["state"][0]["momentum_buffer"]]
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))


def test_two_processes_match_the_averaged_single_process_run():
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(gloo_worker, args=(2, f"file://{os.path.join(tmp, 'init')}", _body,
                                              tmp), nprocs=2, join=True, start_method="spawn")
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True)
                 for r in (0, 1)]
    averaged = [(torch.tensor(a) + torch.tensor(b)) / 2 for a, b in zip(LOCAL[0], LOCAL[1])]
    # step 1: entry 0 from rank 0 (1), entry 1 averaged ((2 + 3)/2), entry 2 from rank 1 (-1);
    # step 2: entry 3 averaged (3), b = 0.5 b + c there, the others keep their b.
    for r in ranks:
        assert r["indexed"][1].tolist() == [1.0, 2.5, -1.0, 3.0]
        assert r["indexed"][0].tolist() == [1.0, 2.5, -1.0, 3.0]
    expected = run(build(), averaged)
    for name, trajectory in expected.items():
        if name == "indexed":
            continue
        assert any(t.abs().sum() > 0 for t in trajectory), name
        for r in ranks:
            for mine, theirs in zip(r[name], trajectory):
                if name == "optimistic":  # avg(2c - c') and 2 avg(c) - avg(c') round apart
                    torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-7)
                else:
                    assert torch.equal(mine, theirs), name
