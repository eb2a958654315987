"""FairInference's device step (tensor operations, no host read): the same outputs and state
as the host step, float32 and float64; a CUDA call under the sync debug mode."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from humancompatible_train.inference import FairInference, _device

EPS = 0.05


def stream(n: int, seed: int, dtype: torch.dtype, shift: float = 1.5):
    gen = torch.Generator().manual_seed(seed)
    g = (torch.rand(n, generator=gen) < 0.3).long()
    y = (torch.rand(n, generator=gen) < 0.5).long()
    z = (torch.randn(n, generator=gen, dtype=torch.float64) * 2 + shift * g + 0.5 * y)
    return z.to(dtype), g, y


def pair(**kw) -> tuple[FairInference, FairInference]:
    return FairInference(**kw), FairInference(**kw)


def run_both(host, dev, z, g, y, sizes, labelled):
    i = 0
    for b in sizes:
        if i >= len(z):
            break
        sl = slice(i, i + b)
        lab = y[sl] if labelled else None
        qh = host.adjust(z[sl], g[sl], lab)
        qd = _device.serve(dev, z[sl], g[sl], lab)
        assert qd.dtype == z.dtype and qd.shape == z[sl].shape
        tol = 1e-12 if z.dtype == torch.float64 else 2e-6
        torch.testing.assert_close(qd, qh, rtol=tol, atol=tol)
        i += b
    sh, sd = host.state_dict(), dev.state_dict()
    for k, v in sh.items():
        if isinstance(v, torch.Tensor):
            torch.testing.assert_close(sd[k], v, rtol=1e-9, atol=1e-9, msg=k)
    a, b = host.stats(), dev.stats()
    for k in ("pooled_aggregate_gap", "weighted_avg_fairness_gap", "lambda_max",
              "mean_squared_adjustment", "cumulative_weighted_violation"):
        assert (math.isnan(a[k]) and math.isnan(b[k])) or b[k] == pytest.approx(a[k], abs=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("metric", ["mean_pred", "equalized_odds"])
@pytest.mark.parametrize("per_batch", [False, True])
def test_device_step_matches_the_host_step(dtype, metric, per_batch):
    z, g, y = stream(900, seed=3, dtype=dtype)
    host, dev = pair(metric=metric, per_batch=per_batch, b_tau=32)
    sizes = [1, 1, 3, 1, 8, 40, 2, 64, 1, 5] * 20
    run_both(host, dev, z, g, y, sizes, metric == "equalized_odds")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), sizes=st.lists(st.integers(1, 70), min_size=1,
                                                     max_size=12),
       pooled=st.sampled_from(["hard", "dual"]), calibrated=st.booleans(),
       shift=st.floats(-3, 3), eta=st.floats(0, 1))
def test_device_step_matches_on_random_streams(seed, sizes, pooled, calibrated, shift, eta):
    z, g, y = stream(sum(sizes), seed=seed, dtype=torch.float64, shift=shift)
    host, dev = pair(pooled=pooled, eta_0=eta, b_tau=16)
    if calibrated:
        zc, gc, _ = stream(300, seed=seed + 1, dtype=torch.float64, shift=shift)
        host.calibrate_scores(zc, gc)
        dev.calibrate_scores(zc, gc)
    run_both(host, dev, z, g, y, sizes, False)


def test_device_step_keeps_the_promise_after_every_call():
    z, g, _ = stream(600, seed=9, dtype=torch.float32, shift=2.5)
    fi = FairInference()
    served, groups = [], []
    for i in range(0, 600, 7):
        served.append(_device.serve(fi, z[i:i + 7], g[i:i + 7], None).double())
        groups.append(g[i:i + 7])
        q, gg = torch.cat(served), torch.cat(groups)
        if bool((gg == 0).any() & (gg == 1).any()):
            gap = (q[gg == 1].mean() - q[gg == 0].mean()).abs()
            assert float(gap) <= EPS + 1e-6  # float32 rows, float64 sums


def test_device_step_refuses_bad_rows_and_changes_nothing():
    fi = FairInference()
    _device.serve(fi, torch.tensor([0.3, 1.2]), torch.tensor([0, 1]), None)
    before = {k: v.clone() for k, v in fi.state_dict().items() if isinstance(v, torch.Tensor)}
    for z, g, match in ((torch.tensor([math.nan, 1.0]), torch.tensor([0, 1]), "finite"),
                        (torch.tensor([0.0, 1.0]), torch.tensor([0, 2]), "ids"),
                        (torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.5]), "whole"),
                        (torch.tensor([1e200, 1.0], dtype=torch.float64),
                         torch.tensor([0, 1]), "squares")):
        with pytest.raises(ValueError, match=match):
            _device.serve(fi, z, g, None)
        after = fi.state_dict()
        for k, v in before.items():
            assert torch.equal(after[k], v), k


def test_device_step_without_checks_serves_bad_rows_as_missing():
    a, b = FairInference(check_finite=False), FairInference()
    z, g = torch.tensor([0.3, math.nan, 1.2, 0.7]), torch.tensor([0, 1, 1, 5])
    q = _device.serve(a, z, g, None)
    assert torch.isnan(q[1]) and torch.isnan(q[3])
    ref = b.adjust(z[[0, 2]], g[[0, 2]])
    torch.testing.assert_close(q[[0, 2]], ref)
    assert a.stats()["total_samples"] == 2
    assert all(bool(torch.isfinite(v.double()).all()) for v in a.state_dict().values()
               if isinstance(v, torch.Tensor))


def test_device_step_is_used_only_where_it_applies():
    assert _device.supports(FairInference())
    assert _device.supports(FairInference(metric="equalized_odds"))
    assert not _device.supports(FairInference(prediction_bounds=(0.0, 1.0)))
    assert not _device.supports(FairInference(num_groups=3))
    assert not _device.supports(FairInference(metric="positive_rate"))
    with pytest.raises(ValueError, match="check_finite"):
        FairInference(check_finite="no")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("metric", ["mean_pred", "equalized_odds"])
def test_cuda_call_does_not_synchronise(metric):
    dev = torch.device("cuda")
    model = torch.nn.Linear(3, 1).to(dev)
    fi = FairInference(model, metric=metric, check_finite=False).to(dev)
    ref = FairInference(torch.nn.Linear(3, 1), metric=metric)
    ref.model.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(0)
    outs, refs = [], []
    for size in (1, 4, 64, 1, 16):
        x = torch.randn(size, 3, generator=gen)
        g = (torch.rand(size, generator=gen) < 0.4).long()
        y = (torch.rand(size, generator=gen) < 0.5).long()
        lab = y if metric == "equalized_odds" else None
        xd, gd = x.to(dev), g.to(dev)
        yd = None if lab is None else lab.to(dev)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            q = fi(xd, gd, yd)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert q.device.type == "cuda" and q.dtype == torch.float32
        outs.append(q.cpu())
        refs.append(ref(x, g, lab))
    torch.testing.assert_close(torch.cat(outs), torch.cat(refs), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ FairProjection
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bounds", [None, (-1.0, 1.5)])
def test_projection_serves_in_the_input_dtype(dtype, bounds):
    from humancompatible_train.dual_optim import FairProjection

    z, g, _ = stream(200, seed=4, dtype=dtype)
    q, _ = FairProjection(2, EPS, bounds=bounds).project(z, g)
    assert q.dtype == dtype and q.device == z.device and q.shape == z.shape
    gap = (q[g == 1].double().mean() - q[g == 0].double().mean()).abs()
    assert float(gap) <= EPS + (1e-6 if dtype == torch.float32 else 1e-9)
    if bounds is not None:
        assert float(q.min()) >= bounds[0] and float(q.max()) <= bounds[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bounds", [None, (-1.0, 1.5)])
def test_cuda_projection_does_not_synchronise(bounds):
    from humancompatible_train.dual_optim import FairProjection

    z, g, _ = stream(64, seed=5, dtype=torch.float32)
    ref, _ = FairProjection(2, EPS, bounds=bounds).project(z, g)
    proj = FairProjection(2, EPS, bounds=bounds, check_finite=False)
    zd, gd = z.cuda(), g.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        q, _ = proj.project(zd, gd)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert q.device.type == "cuda" and q.dtype == torch.float32
    torch.testing.assert_close(q.cpu(), ref, rtol=1e-5, atol=1e-5)
