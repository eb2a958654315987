"""FairInference: regimes, the dual schedule by hand, statistics, reset, checkpoints, errors."""

import io
import math

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from humancompatible_train.dual_optim import PrimalDual
from humancompatible_train.inference import FairInference, FairModel, FairTrainer

EPS = 0.05


def gap(q, g):
    return (q[g == 1].mean() - q[g == 0].mean()).abs().item()


def stream(n=2000, seed=0, shift=1.0, p=0.3):
    gen = torch.Generator().manual_seed(seed)
    g = (torch.rand(n, generator=gen) < p).long()
    z = torch.randn(n, generator=gen, dtype=torch.float64) + shift * g
    return z, g


def test_large_batch_is_the_exact_projection_of_that_batch():
    z, g = stream(200)
    fi = FairInference(b_tau=64, fairness_tolerance=EPS)
    q = fi.adjust(z[:64], g[:64])
    # closed form for two groups, box inactive: q = z - mu * a (anchors.md)
    n1, n0 = (g[:64] == 1).sum(), (g[:64] == 0).sum()
    a = torch.where(g[:64] == 1, 1.0 / n1, -1.0 / n0).double()
    ag = (a * z[:64]).sum()
    mu = torch.sign(ag) * torch.clamp(ag.abs() - EPS, min=0) / (1 / n0 + 1 / n1)
    torch.testing.assert_close(q, z[:64] - mu * a)
    assert fi.dual_update_count == 1  # the dual learned from the batch all the same
    assert gap(q, g[:64]) == pytest.approx(EPS, abs=1e-9)


def simpson_batches():
    """Two batches with gap 0 each whose pool has a gap of 0.875 (composition differs)."""
    g_a = torch.tensor([0] * 60 + [1] * 4)
    g_b = torch.tensor([0] * 4 + [1] * 60)
    return (torch.ones(64, dtype=torch.float64), g_a), (torch.zeros(64, dtype=torch.float64), g_b)


def test_regime_switch_at_b_tau():
    (za, ga), (zb, gb) = simpson_batches()
    big = FairInference(b_tau=64, eta_0=0.0)
    small = FairInference(b_tau=65, eta_0=0.0)
    big.adjust(za, ga)
    big.adjust(zb, gb)
    # At b_tau, batches are projected on their own: each meets eps, the pool need not.
    assert big.stats()["pooled_aggregate_gap"] == pytest.approx(0.875)
    assert big.stats()["weighted_avg_fairness_gap"] == 0.0
    small.adjust(za, ga)
    qb = small.adjust(zb, gb)
    # One below b_tau, the streaming regime also keeps the pool within eps.
    assert gap(qb, gb) <= EPS + 1e-9
    assert small.stats()["pooled_aggregate_gap"] <= EPS + 1e-9


def test_eta_schedule_by_hand_for_three_batches():
    # pooled="dual" and single-group-free batches: lambda follows the dual rule alone.
    fi = FairInference(eta_0=0.5, fairness_tolerance=0.1, pooled="dual", b_tau=100)
    batches = [([1.0, 0.0], [1, 0]), ([2.0, 0.0, 0.0], [1, 0, 0]), ([0.5], [1])]
    lam = np.zeros(2)  # [lambda_01, lambda_10]: mu_0 - mu_1 <= eps, mu_1 - mu_0 <= eps
    sums, counts = np.zeros(2), np.zeros(2)
    for t, (zs, gs) in enumerate(batches, start=1):
        for zi, gi in zip(zs, gs):
            sums[gi] += zi
            counts[gi] += 1
        share = counts / counts.sum()
        theta = lam[1] - lam[0]
        nu = np.array([-theta * share[1], theta * share[0]])
        r = sums / counts - nu
        c = np.array([r[0] - r[1] - 0.1, r[1] - r[0] - 0.1])
        lam = np.maximum(0.0, lam + 0.5 / math.sqrt(t) * c)
        fi.adjust(torch.tensor(zs, dtype=torch.float64), torch.tensor(gs))
        np.testing.assert_allclose(fi.dual.duals.numpy(), lam, atol=1e-12)
    assert fi.dual_update_count == 3
    # by hand: t=1: r = (0, 1), c = (-1.1, 0.9) -> lambda = (0, 0.45)
    fi2 = FairInference(eta_0=0.5, fairness_tolerance=0.1, pooled="dual")
    fi2.adjust(torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([1, 0]))
    assert fi2.dual.duals.tolist() == pytest.approx([0.0, 0.45])


def test_stats_by_hand_on_a_tiny_stream():
    fi = FairInference(fairness_tolerance=0.1, eta_0=0.0, b_tau=100)  # eta 0: no offsets
    q1 = fi.adjust(torch.tensor([0.0, 0.5], dtype=torch.float64), torch.tensor([0, 1]))
    # batch gap 0.5 > 0.1: projected to 0.1, equal weights -> (0.2, 0.3)
    assert q1.tolist() == pytest.approx([0.2, 0.3])
    q2 = fi.adjust(torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64), torch.tensor([0, 0, 0]))
    assert q2.tolist() == pytest.approx([0.3, 0.3, 0.3])  # pooled: 0.275 vs 0.3, inside
    s = fi.stats()
    assert s["total_samples"] == 5 and s["num_batches"] == 2
    # weighted average over batches with a defined gap: only the first (size 2, gap 0.1)
    assert s["weighted_avg_fairness_gap"] == pytest.approx(0.1)
    assert s["pooled_aggregate_gap"] == pytest.approx(0.3 - (0.2 + 0.9) / 4)
    assert s["mean_squared_adjustment"] == pytest.approx((0.2**2 + 0.2**2) / 5)
    assert s["cumulative_weighted_violation"] == pytest.approx(2 * (0.1 - 0.1))
    assert s["per_group"]["group_0"]["count"] == 4
    assert s["lambda_max"] == 0.0 and s["fairness_tolerance"] == 0.1


def test_reset_zeroes_exactly_the_serving_state():
    z, g = stream(300)
    fi = FairInference()
    first = [fi.adjust(z[i:i + 8], g[i:i + 8]) for i in range(0, 300, 8)]
    assert fi.dual.duals.abs().sum() > 0 and fi.dual_update_count > 0
    fi.reset()
    s = fi.stats()
    assert fi.dual_update_count == 0 and float(fi.dual.duals.abs().sum()) == 0
    assert s["total_samples"] == 0 and s["num_batches"] == 0 and s["lambda_max"] == 0
    assert float(fi.cumulative_weighted_violation) == 0
    again = [fi.adjust(z[i:i + 8], g[i:i + 8]) for i in range(0, 300, 8)]
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_checkpoint_mid_stream_continues_identically():
    z, g = stream(600)
    fi = FairInference()
    for i in range(0, 300, 4):
        fi.adjust(z[i:i + 4], g[i:i + 4])
    buf = io.BytesIO()
    torch.save(fi.state_dict(), buf)
    rest = [fi.adjust(z[i:i + 4], g[i:i + 4]) for i in range(300, 600, 4)]
    buf.seek(0)
    fresh = FairInference()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    again = [fresh.adjust(z[i:i + 4], g[i:i + 4]) for i in range(300, 600, 4)]
    for a, b in zip(rest, again):
        assert torch.equal(a, b)
    assert fresh.stats() == fi.stats()


def test_batch_size_one_and_single_group_batches_are_served():
    z, g = stream(1500, shift=1.0)
    fi = FairInference()
    out = torch.cat([fi.adjust(z[i:i + 1], g[i:i + 1]) for i in range(1500)])
    assert torch.isfinite(out).all()
    s = fi.stats()
    assert math.isnan(s["weighted_avg_fairness_gap"])  # no batch has two groups
    assert s["pooled_aggregate_gap"] <= EPS + 1e-9
    assert gap(out, g) <= EPS + 1e-9


def test_warm_start_corrects_the_first_batch():
    z, g = stream(3000, shift=1.0)
    trained = FairInference()
    for i in range(0, 2000, 16):
        trained.adjust(z[i:i + 16], g[i:i + 16])
    warm_dual = PrimalDual(2, eta_0=0.5, is_ineq=True, name="pooled_parity",
                           dtype=torch.float64, check_finite=False)
    warm_dual.load_state_dict(trained.dual.state_dict())
    shares = [float((g[:2000] == 0).double().mean()), float((g[:2000] == 1).double().mean())]
    cold, warm = FairInference(), FairInference(dual=warm_dual, group_shares=shares)
    first = slice(2000, 2004)
    majority_only = torch.tensor([0, 0, 0, 0])  # a one-group batch: only the dual can act
    qc = cold.adjust(z[first], majority_only)
    qw = warm.adjust(z[first], majority_only)
    assert torch.equal(qc, z[first])  # nothing to compare against yet: unchanged
    # Group 1 scores higher: the warm offsets lift group 0 from the first prediction on.
    theta = float(trained.lambda_dual[0, 1, 0] - trained.lambda_dual[0, 0, 1])
    assert theta > 0.5
    torch.testing.assert_close(qw, z[first] + theta * shares[1])


def test_pooled_target_on_reduced_seed_000_stream_at_batch_4():
    rng = np.random.RandomState(42)
    n = 6000
    protected = rng.binomial(1, 0.3, n)
    feats = rng.randn(n, 19)
    feats[:, 0] += 0.3 * protected
    y = ((feats[:, 0] + feats[:, 1] + 0.5 * protected + rng.randn(n) * 0.5) > 0)
    X = torch.tensor(np.hstack([protected[:, None], feats]), dtype=torch.float32)
    Y = torch.tensor(y, dtype=torch.float32)
    torch.manual_seed(0)
    model = FairModel(input_dim=20, hidden_dims=[32, 16], protected_attr_idx=0,
                      fairness_tolerance=EPS, b_tau=1000, eta_0=0.5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[:4000], Y[:4000]),
                                         batch_size=1000, shuffle=True)
    trainer = FairTrainer(model, torch.nn.BCEWithLogitsLoss(),
                          torch.optim.Adam(model.parameters(), lr=3e-3))
    trainer.fit(loader, epochs=15, verbose=0)
    test = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[4000:], Y[4000:]),
                                       batch_size=4)
    m = trainer.evaluate(test, reset_before=True)
    assert m["pooled_aggregate_gap"] <= EPS + 0.005
    assert m["weighted_avg_fairness_gap"] <= EPS + 0.005
    assert math.isfinite(m["test_loss"]) and m["total_samples"] == 2000


def test_three_groups_and_equalized_odds():
    # Three groups use Dykstra's alternating projections: the pooled band (the last
    # projection) holds exactly, the per-batch band to the accuracy of 200 rounds.
    gen = torch.Generator().manual_seed(3)
    g = torch.randint(0, 3, (900,), generator=gen)
    y = (torch.rand(900, generator=gen) < 0.4).long()
    z = torch.randn(900, generator=gen, dtype=torch.float64) + 0.8 * g + 0.5 * y
    fi = FairInference(num_groups=3, metric="equalized_odds", b_tau=64, dykstra_iters=200)
    for i in range(0, 900, 8):
        q = fi.adjust(z[i:i + 8], g[i:i + 8], y[i:i + 8])
        for k in (0, 1):
            sel = y[i:i + 8] == k
            means = [q[sel & (g[i:i + 8] == s)].mean() for s in range(3)
                     if bool((sel & (g[i:i + 8] == s)).any())]
            if len(means) >= 2:
                assert float(max(means) - min(means)) <= EPS + 0.02
    assert fi.stats()["pooled_aggregate_gap"] <= EPS + 1e-6
    assert fi.stats()["weighted_avg_fairness_gap"] <= EPS + 0.005


def snapshot(fi):
    return {k: v.clone() for k, v in fi.state_dict().items() if isinstance(v, torch.Tensor)}, \
        fi.dual.duals, fi.dual_update_count


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.tensor([0.1, float("nan")]), torch.tensor([0, 1])), "NaN or Inf"),
        ((torch.tensor([0.1, 0.2]), torch.tensor([0, 2])), r"groups must lie in 0..1"),
        ((torch.zeros(2, 2), torch.tensor([0, 1])), r"shape \(N,\) or \(N, 1\)"),
        ((torch.zeros(3), torch.tensor([0, 1])), "3 group ids"),
        ((torch.tensor([1, 2]), torch.tensor([0, 1])), "floating tensor"),
    ],
)
def test_bad_input_raises_and_changes_nothing(args, match):
    fi = FairInference()
    fi.adjust(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    before = snapshot(fi)
    with pytest.raises(ValueError, match=match):
        fi.adjust(*args)
    after = snapshot(fi)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert torch.equal(before[1], after[1]) and before[2] == after[2]


def test_labels_required_for_equalized_odds():
    fi = FairInference(metric="equalized_odds")
    with pytest.raises(ValueError, match="needs labels"):
        fi.adjust(torch.zeros(4), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="dual must be a PrimalDual with 2 constraints"):
        FairInference(dual=PrimalDual(3))


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=25), seed=st.integers(0, 999),
       shift=st.floats(-2, 2))
def test_every_small_batch_and_the_pool_meet_eps(sizes, seed, shift):
    gen = torch.Generator().manual_seed(seed)
    fi = FairInference(b_tau=64)
    for b in sizes:
        g = (torch.rand(b, generator=gen) < 0.4).long()
        z = torch.randn(b, generator=gen, dtype=torch.float64) + shift * g
        q = fi.adjust(z, g)
        if bool((g == 0).any()) and bool((g == 1).any()):
            assert gap(q, g) <= EPS + 1e-7
        pooled = fi.stats()["pooled_aggregate_gap"]
        assert math.isnan(pooled) or pooled <= EPS + 1e-7


# ----------------------------------------------------------------- mean residual
def residual_stream(n=3000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g = (torch.rand(n, generator=gen) < 0.3).long()
    y = (torch.rand(n, generator=gen) < 0.3 + 0.3 * g).double()
    # Group 0 over-predicted by 0.1 on average, group 1 calibrated.
    z = 0.4 + 0.2 * g + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    return z, g, y


def test_mean_residual_large_batch_is_the_per_group_clamp_of_its_mean():
    z, g, y = residual_stream(200)
    fi = FairInference(metric="mean_residual", b_tau=64, fairness_tolerance=EPS)
    q = fi.adjust(z[:100], g[:100], y[:100])
    for s in (0, 1):
        m = g[:100] == s
        resid = z[:100][m].mean() - y[:100][m].mean()
        # Every member of the group moves by the same amount: the mean into ybar +/- eps.
        expect = z[:100][m] - torch.sign(resid) * torch.clamp(resid.abs() - EPS, min=0)
        torch.testing.assert_close(q[m], expect)
    assert fi.stats()["weighted_avg_fairness_gap"] == pytest.approx(EPS, abs=1e-9)


@pytest.mark.parametrize("batch", [1, 4, 16])
def test_mean_residual_stream_meets_eps_pooled(batch):
    z, g, y = residual_stream()
    for pooled in ("dual", "hard"):
        fi = FairInference(metric="mean_residual", b_tau=64, fairness_tolerance=EPS,
                           pooled=pooled)
        for i in range(0, len(z), batch):
            fi.adjust(z[i:i + batch], g[i:i + batch], y[i:i + batch])
        st = fi.stats()
        # Without the correction the residual of group 0 is about 0.1.
        assert st["pooled_aggregate_gap"] <= EPS + 1e-9
        assert st["per_group"]["group_0"]["mean_label"] == pytest.approx(
            y[g == 0].mean().item())
        # The learned offset of group 0 is close to its excess residual 0.1 - eps.
        lam = fi.lambda_dual
        assert lam.shape == (2, 2)
        assert lam[0, 0].item() == pytest.approx(0.05, abs=0.02)


def test_mean_residual_hard_mode_holds_after_every_batch():
    z, g, y = residual_stream(400, seed=3)
    fi = FairInference(metric="mean_residual", b_tau=64, pooled="hard", fairness_tolerance=EPS)
    for i in range(0, 400, 5):
        fi.adjust(z[i:i + 5], g[i:i + 5], y[i:i + 5])
        assert fi.stats()["pooled_aggregate_gap"] <= EPS + 1e-9


def test_mean_residual_needs_finite_labels():
    fi = FairInference(metric="mean_residual")
    with pytest.raises(ValueError, match="needs labels"):
        fi.adjust(torch.zeros(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels contain NaN"):
        fi.adjust(torch.zeros(2), torch.tensor([0, 1]), torch.tensor([0.0, float("nan")]))
    assert fi.stats()["total_samples"] == 0


# ------------------------------------------------------------------ positive rate
def decision_rate_gap(q, g, t=0.5):
    d = (q >= t).double()
    return (d[g == 1].mean() - d[g == 0].mean()).abs().item()


def test_positive_rate_large_batch_meets_eps_with_fewest_flips():
    gen = torch.Generator().manual_seed(1)
    g = (torch.rand(500, generator=gen) < 0.4).long()
    z = torch.rand(500, generator=gen, dtype=torch.float64) * 0.8 + 0.3 * g
    fi = FairInference(metric="positive_rate", b_tau=64, fairness_tolerance=EPS)
    q = fi.adjust(z, g)
    assert decision_rate_gap(z, g) > 0.2
    assert decision_rate_gap(q, g) <= EPS + 1e-12
    changed = q != z
    # Only decisions were changed, each moved exactly to (or just below) the threshold.
    assert bool(((q[changed] - 0.5).abs() < 1e-12).all())
    assert fi.stats()["per_group"]["group_1"]["positive_rate"] == pytest.approx(
        (q[g == 1] >= 0.5).double().mean().item())


@pytest.mark.parametrize("batch", [1, 4, 16])
def test_positive_rate_stream_meets_eps_pooled(batch):
    gen = torch.Generator().manual_seed(2)
    g = (torch.rand(2000, generator=gen) < 0.3).long()
    z = torch.rand(2000, generator=gen, dtype=torch.float64) * 0.8 + 0.3 * g
    fi = FairInference(metric="positive_rate", b_tau=64, fairness_tolerance=EPS)
    for i in range(0, 2000, batch):
        fi.adjust(z[i:i + batch], g[i:i + batch])
    st = fi.stats()
    assert st["pooled_aggregate_gap"] <= EPS + 1e-12
    rates = [st["per_group"][f"group_{s}"]["positive_rate"] for s in (0, 1)]
    assert abs(rates[1] - rates[0]) == pytest.approx(st["pooled_aggregate_gap"])


@pytest.mark.parametrize("other_means, z, expected", [
    ((0.5, 0.55), 0.3, 3 * 0.45),  # interval [0.45, 0.6] for group 0's pooled mean: lower end
    ((0.5, 0.55), 1.5, 1.5),  # inside: unchanged
    ((0.5, 0.9), 0.3, 3 * 0.7),  # others 0.4 apart (> eps): the middle of 0.8 and 0.6
])
def test_single_prediction_by_hand(other_means, z, expected):
    # eta_0 = 0: no offsets, so only the pooled correction acts; group 0 has served two
    # predictions with mean 0, groups 1 and 2 two each with the given means.
    fi = FairInference(num_groups=3, fairness_tolerance=0.1, eta_0=0.0)
    fi.count.copy_(torch.tensor([[2.0, 2.0, 2.0]]))
    sums = torch.tensor([[0.0, 2 * other_means[0], 2 * other_means[1]]], dtype=torch.float64)
    fi.out_sum.copy_(sums)
    fi.raw_sum.copy_(sums)
    q = fi.adjust(torch.tensor([z], dtype=torch.float64), torch.tensor([0]))
    assert q.item() == pytest.approx(expected, abs=1e-12)
    assert fi.out_sum[0, 0].item() == pytest.approx(expected, abs=1e-12)


def test_single_prediction_with_no_other_group_seen_is_unchanged():
    fi = FairInference(num_groups=3)
    q = fi.adjust(torch.tensor([0.7], dtype=torch.float64), torch.tensor([2]))
    assert q.item() == 0.7
    with pytest.raises(ValueError, match=r"groups must lie in 0..2"):
        fi.adjust(torch.tensor([0.7]), torch.tensor([-1]))


def test_served_predictions_and_serving_state_are_ordinary_tensors():
    # adjust() runs in inference mode; nothing it returns or keeps may be an inference tensor.
    dual = PrimalDual(2, eta_0=0.5, is_ineq=True, dtype=torch.float64, check_finite=False)
    fi = FairInference(dual=dual)
    for b in (1, 3, 64):
        q = fi.adjust(torch.linspace(0, 1, b), torch.arange(b) % 2)
        assert not q.is_inference() and q.dtype == torch.float32
        q.add_(1.0)  # in place, outside inference mode
        w = torch.ones(b, requires_grad=True)
        (w * q).sum().backward()
        torch.testing.assert_close(w.grad, q)
    assert not any(t.is_inference() for t in fi.buffers())
    assert not dual.param_groups[0]["params"][0].is_inference()
    # The same dual keeps training afterwards (its multipliers enter an autograd graph).
    x = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    dual.forward_update((x ** 2).sum(), x).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_a_float32_training_dual_serves_a_float64_wrapper():
    dual = PrimalDual(2, eta_0=0.5, is_ineq=True, check_finite=False)  # float32 multipliers
    with torch.no_grad():
        dual.param_groups[0]["params"][0].copy_(torch.tensor([0.0, 0.4]))
    fi = FairInference(dual=dual, group_shares=[0.5, 0.5])
    q = fi.adjust(torch.tensor([0.5], dtype=torch.float64), torch.tensor([0]))
    # nu_0 = (lambda_01 - lambda_10) * share_1 = -0.2: group 0 is lifted by 0.2 at once
    assert q.item() == pytest.approx(0.7, abs=1e-6)
    assert dual.duals.dtype == torch.float32


def test_labels_of_the_wrong_size_are_refused_for_every_metric():
    fi = FairInference()  # mean parity: labels are optional, but checked when given
    before = snapshot(fi)
    with pytest.raises(ValueError, match="labels must be a tensor of 2 values"):
        fi.adjust(torch.tensor([0.1, 0.2]), torch.tensor([0, 1]), torch.tensor([1.0, 0.0, 1.0]))
    after = snapshot(fi)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
