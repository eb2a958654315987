"""On CUDA: the default FairnessConstraint (and GroupMetrics with validate=False) never
synchronise with the host, give the CPU's values, and keep NaN rows active without reading
anything. Skipped where torch has no CUDA device (these checks need one)."""

import math

import pytest
import torch

from humancompatible_train.fairness import FairnessConstraint, GroupMetrics

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIGS = [("PositiveRate", 2, "abs_diff"), ("PositiveRate", 2, "pairwise"),
           ("TruePositiveRate+FalsePositiveRate", 3, "pairwise"), ("Accuracy", 3, "overall"),
           ("PositivePredictiveValue", 3, "max_gap"),
           ("PositiveRate", {"a": ["0", "1"], "b": ["x", "y"]}, "max_gap")]


@pytest.mark.parametrize("stat,groups,mode", CONFIGS)
def test_no_host_sync_and_the_cpu_values(stat, groups, mode):
    dev = torch.device("cuda")
    fc = FairnessConstraint(stat, groups, mode=mode)
    S = fc.groups.S
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(256, 1, generator=gen).to(dev).requires_grad_()
    ids = torch.randint(0, S, (256,), generator=gen).to(dev)
    y = torch.randint(0, 2, (256, 1), generator=gen).float().to(dev)
    labels = y if fc.needs_labels else None
    layouts = (ids, torch.nn.functional.one_hot(ids, S).float())
    for sens in layouts:  # first calls build the cached tables (host-to-device copies)
        fc(z, sens, labels)
        fc.decisions(z, sens, labels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for sens in layouts:
            rows = fc(z, sens, labels)
            rows.values.sum().backward()
            fc.decisions(z, sens, labels)
            rows.largest_gap()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    cpu = FairnessConstraint(stat, groups, mode=mode)(z.detach().cpu(), ids.cpu(),
                                                      None if labels is None else y.cpu())
    torch.testing.assert_close(fc(z.detach(), ids, labels).values.cpu(), cpu.values)


def test_nan_rows_stay_active_without_reads_and_validate_true_reads():
    dev = torch.device("cuda")
    fc = FairnessConstraint("PositiveRate", 2, mode="abs_diff")
    z = torch.tensor([float("inf"), 3.0, 3.0, -3.0, -3.0, -3.0], device=dev)
    ids = torch.tensor([0, 0, 0, 1, 1, 1], device=dev)
    rows = fc(z, ids)
    assert rows.values.isnan().all() and rows.active.all()
    assert math.isnan(float(rows.largest_gap()))
    with pytest.raises(ValueError, match=r"pred: expected finite logits, got inf at row 0"):
        FairnessConstraint("PositiveRate", 2, validate=True)(z, ids)


def test_group_metrics_without_validation_never_syncs_and_moves():
    dev = torch.device("cuda")
    gm = GroupMetrics(2, scores="logits", validate=False)
    batch = (torch.randn(64, device=dev), torch.randint(0, 2, (64,), device=dev),
             torch.randint(0, 2, (64,), device=dev))
    gm.update(*batch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gm.update(*batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert gm.to("cpu").counts.device.type == "cpu" and gm.counts[0, -1].item() == 128
