"""Demographic parity on Adult under DistributedDataParallel (tutorial 8).

Run on CPU with two processes (gloo):

    torchrun --standalone --nproc_per_node 2 tutorials/ddp_demographic_parity.py

Each process trains on its own shard of every epoch (``DistributedSampler``), DDP averages the
gradients, and the dual optimizer's ``process_group=`` averages the constraint values that
drive the dual step, so every process holds the same multiplier. ``HCT_TUTORIAL_QUICK=1``
selects a small, fast run.
"""

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from humancompatible_train.datasets import load_adult
from humancompatible_train.dual_optim import ALM
from humancompatible_train.fairness import FairnessConstraint, GroupMetrics


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    # One intra-op thread per process: two processes on two cores, no oversubscription.
    torch.set_num_threads(1)
    quick = os.environ.get("HCT_TUTORIAL_QUICK") == "1"
    epochs = 1 if quick else 10

    data = load_adult(max_rows=2500 if quick else None)
    dataset = data.train.tensor_dataset()
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    # 128 rows per process and step: the global batch is 256, as in tutorial 1.
    loader = DataLoader(dataset, batch_size=256 // world, sampler=sampler)

    torch.manual_seed(0)  # the same initial model everywhere (DDP also broadcasts rank 0's)
    model = DistributedDataParallel(torch.nn.Sequential(
        torch.nn.Linear(data.n_features, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    bce = torch.nn.BCEWithLogitsLoss()
    dp = FairnessConstraint("PositiveRate", data.train.group_names["sex"], mode="abs_diff",
                            eps=0.05)
    dual = ALM(1, lr=0.3, is_ineq=True, process_group=dist.group.WORLD)

    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, s, y in loader:
            opt.zero_grad()
            logit = model(x)
            lagrangian = dual.forward_update(bce(logit, y), dp(logit, s).values)
            lagrangian.backward()
            opt.step()

    # Every process holds the same multiplier (and, through DDP, the same model).
    gathered = [torch.empty_like(dual.duals) for _ in range(world)]
    dist.all_gather(gathered, dual.duals)
    assert all(torch.equal(g, gathered[0]) for g in gathered), gathered

    # Evaluation: each process scores its half of the test set; GroupMetrics sums the counts
    # over the processes in compute() (every process must call it).
    test = data.test
    part = slice(rank, None, world)
    metrics = GroupMetrics(data.test.group_names["sex"])
    with torch.no_grad():
        metrics.update(torch.sigmoid(model(test.X[part])), test.onehot()[part], test.y[part])
    report = metrics.compute()
    if rank == 0:
        print(f"{world} processes, {epochs} epochs; multiplier {dual.duals.item():.4f} on every "
              f"process")
        print(f"test accuracy {report.overall['accuracy']:.4f}, gap of mean probabilities "
              f"{report.difference('mean_score'):.4f} (epsilon 0.05), "
              f"{int(report.overall['count'])} test rows over {world} processes")
    dist.barrier()  # nobody leaves while another process still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
