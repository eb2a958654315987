"""FairnessConstraint: values by hand and against fairret, names, m, absent groups, proxies."""

import pytest
import torch
from fairret.statistic import (
    Accuracy,
    FalseNegativeFalsePositiveFraction,
    FalseOmissionRate,
    FalsePositiveRate,
    FScore,
    LinearFractionalStatistic,
    PositivePredictiveValue,
    PositiveRate,
    StackedLinearFractionalStatistic,
    TruePositiveRate,
)

from humancompatible_train.dual_optim import ALM
from humancompatible_train.fairness import FairnessConstraint, GroupMetrics

P = torch.tensor([0.2, 0.4, 0.9, 0.7, 0.1, 0.6], dtype=torch.float64)
S = torch.tensor([0, 0, 1, 1, 0, 2])
Y = torch.tensor([1, 0, 1, 0, 0, 1])


def test_pairwise_positive_rate_by_hand():
    fc = FairnessConstraint("PositiveRate", ["a", "b", "c"], eps=0.05, pred="probabilities")
    v = fc(P, S)
    pr = [(0.2 + 0.4 + 0.1) / 3, (0.9 + 0.7) / 2, 0.6]
    expected = [pr[g] - pr[h] - 0.05 for g in range(3) for h in range(3) if g != h]
    assert v.values.tolist() == pytest.approx(expected)
    assert fc.m == 6 == len(fc.names)
    assert fc.names[:2] == ["PR[a] - PR[b]", "PR[a] - PR[c]"]
    assert bool(v.active.all())


ALL_STATS = [PositiveRate(), TruePositiveRate(), FalsePositiveRate(), PositivePredictiveValue(),
             FalseOmissionRate(), Accuracy(), FScore(), FalseNegativeFalsePositiveFraction()]


@pytest.mark.parametrize("stat", ALL_STATS, ids=lambda s: type(s).__name__)
def test_statistics_match_fairret(stat):
    gen = torch.Generator().manual_seed(5)
    p = torch.rand(60, generator=gen, dtype=torch.float64)
    s, y = torch.arange(60) % 3, torch.randint(0, 2, (60,), generator=gen)
    fc = FairnessConstraint(stat, 3, mode="overall", eps=0.0, pred="probabilities")
    v = fc(p, s, y)
    assert bool(v.defined.all())
    onehot = torch.nn.functional.one_hot(s, 3).double()
    args = () if isinstance(stat, PositiveRate) else (y.double().view(-1, 1),)
    ref = stat(p.view(-1, 1), onehot, *args).reshape(-1)
    torch.testing.assert_close(v.statistics.reshape(-1), ref)
    overall = stat.overall_statistic(p.view(-1, 1), *args).reshape(-1)
    torch.testing.assert_close(v.overall, overall)
    rows = torch.stack([[ref[g] - overall[0], overall[0] - ref[g]][i]
                        for g in range(3) for i in range(2)])
    torch.testing.assert_close(v.values, rows)


def test_modes_names_and_sizes():
    eo = StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate())
    assert FairnessConstraint(eo, 3, mode="pairwise").m == 2 * 3 * 2
    assert FairnessConstraint(eo, 3, mode="overall").m == 2 * 2 * 3
    assert FairnessConstraint(eo, 3, mode="max_gap").m == 1
    fc = FairnessConstraint("TruePositiveRate+FalsePositiveRate", ["f", "m"], mode="abs_diff")
    assert fc.names == ["|TPR[f] - TPR[m]|", "|FPR[f] - FPR[m]|"]
    inter = FairnessConstraint("PositiveRate", {"sex": ["f", "m"], "race": ["x", "y"]},
                               mode="overall")
    assert inter.m == 8 and inter.names[0] == "PR[f&x] - PR[overall]"
    with pytest.raises(ValueError, match="compares exactly 2 groups"):
        FairnessConstraint("PositiveRate", 3, mode="abs_diff")
    with pytest.raises(ValueError, match="mode: expected one of"):
        FairnessConstraint("PositiveRate", 2, mode="ratio")
    with pytest.raises(ValueError, match="statistic: expected one of"):
        FairnessConstraint("Recall", 2)


def test_seed_002_pr_diff_is_abs_diff_mode():
    logit = torch.tensor([0.3, -1.0, 2.0, 0.5])
    sens = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    stats = PositiveRate()(torch.sigmoid(logit).view(-1, 1), sens)
    expected = torch.abs(stats[0] - stats[1]) - 0.05
    fc = FairnessConstraint("PositiveRate", 2, mode="abs_diff", eps=0.05)
    torch.testing.assert_close(fc(logit, sens).values, expected.reshape(1))


def test_intersectional_ids_and_max_gap_by_hand():
    ids = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    p = torch.tensor([0.1, 0.3, 0.6, 0.8], dtype=torch.float64)
    fc = FairnessConstraint("PositiveRate", {"a": ["0", "1"], "b": ["0", "1"]}, mode="max_gap",
                            eps=0.1, pred="probabilities")
    assert fc(p, ids).values.tolist() == pytest.approx([0.8 - 0.1 - 0.1])


def test_absent_group_contributes_nothing():
    fc = FairnessConstraint("PositiveRate", ["a", "b", "c"], eps=0.05, pred="probabilities")
    p = torch.tensor([0.2, 0.9, 0.8], dtype=torch.float64, requires_grad=True)
    v = fc(p, torch.tensor([0, 1, 1]))  # group c absent: fairret would report PR 0
    assert v.inactive_names == ["PR[a] - PR[c]", "PR[b] - PR[c]", "PR[c] - PR[a]",
                                "PR[c] - PR[b]"]
    assert v.values[~v.active].abs().sum() == 0
    dual = ALM(fc.m, lr=1.0, is_ineq=True, dtype=torch.float64)
    dual.forward_update(torch.tensor(0.0, dtype=torch.float64), v.values).backward()
    assert dual.duals[~v.active].abs().sum() == 0  # no dual change
    # The gradient comes from the active rows only: d/dp of lambda*(PR_b - PR_a - eps).
    lam = dual.duals[2].item()
    assert p.grad.tolist() == pytest.approx([-lam, lam / 2, lam / 2])


def test_group_without_positive_labels_is_inactive_for_tpr():
    fc = FairnessConstraint("TruePositiveRate", 2, eps=0.0, pred="probabilities")
    v = fc(torch.tensor([0.3, 0.9, 0.4]), torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    assert not bool(v.active.any()) and v.values.abs().sum() == 0


def test_gradients_flow_through_logits():
    logit = torch.randn(50, 1, requires_grad=True, dtype=torch.float64)
    s = torch.arange(50) % 2
    fc = FairnessConstraint("PositiveRate", 2, mode="abs_diff", eps=0.0)
    fc(logit, s).values.sum().backward()
    assert logit.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda z: fc(z, s).values, (logit,))


def test_decisions_proxy_thresholds_without_gradient():
    fc = FairnessConstraint("PositiveRate", 2, mode="abs_diff", eps=0.0, pred="probabilities")
    p = torch.tensor([0.6, 0.4, 0.7, 0.8], requires_grad=True)
    d = fc.decisions(p, torch.tensor([0, 0, 1, 1]))
    assert d.values.tolist() == pytest.approx([0.5]) and not d.values.requires_grad


def test_bad_inputs_name_the_argument():
    fc = FairnessConstraint("TruePositiveRate", 2)
    with pytest.raises(ValueError, match="labels: expected labels for statistic"):
        fc(torch.zeros(3), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"pred: expected shape \(N,\) or \(N, 1\)"):
        fc(torch.zeros(3, 2), torch.tensor([0, 1, 1]), torch.zeros(3))
    with pytest.raises(ValueError, match="sens: expected 3 rows"):
        fc(torch.zeros(3), torch.tensor([0, 1]), torch.zeros(3))


def _train_equalized_odds(constrained):
    gen = torch.Generator().manual_seed(0)
    n = 6000
    g = torch.randint(0, 3, (n,), generator=gen)
    y = (torch.rand(n, generator=gen) < 0.3 + 0.15 * g).float()
    x = torch.randn(n, 5, generator=gen)
    x[:, 0] += 1.5 * y
    x[:, 1] += g.float()  # a proxy of the group
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    fc = FairnessConstraint("TruePositiveRate+FalsePositiveRate", ["g0", "g1", "g2"],
                            mode="pairwise", eps=0.05)
    dual = ALM(fc.m, lr=0.5, is_ineq=True, penalty=2.0, augmentation="hpr")
    bce = torch.nn.BCEWithLogitsLoss()
    for _ in range(25):
        for idx in torch.randperm(n, generator=gen).split(500):
            logit = model(x[idx]).squeeze(1)
            opt.zero_grad()
            loss = bce(logit, y[idx])
            if constrained:
                loss = dual.forward_update(loss, fc(logit, g[idx], y[idx]).values)
            loss.backward()
            opt.step()
    with torch.no_grad():
        logit = model(x).squeeze(1)
    metrics = GroupMetrics(fc.groups.names, scores="logits")
    metrics.update(logit, g, y)
    return fc(logit, g, y), metrics.compute()


def test_alm_meets_equalized_odds_for_three_groups():
    rows, report = _train_equalized_odds(constrained=True)
    assert float(rows.values.max()) <= 0.0, rows.named()
    assert report.difference("soft_tpr") <= 0.05 and report.difference("soft_fpr") <= 0.05
    # The bound binds: without the constraint the same model and data violate it.
    free, free_report = _train_equalized_odds(constrained=False)
    assert float(free.values.max()) > 0.0
    assert free_report.difference("soft_tpr") > 0.05
    assert report.overall["accuracy"] > free_report.overall["accuracy"] - 0.02


class FalseNegativeRate(LinearFractionalStatistic):
    """A user-defined statistic: P(d=0 | y=1) = sum y (1 - p) / sum y."""

    def num_intercept(self, label):
        return label

    def num_slope(self, label):
        return -label

    def denom_intercept(self, label):
        return label

    def denom_slope(self, label):
        return 0.0


def test_user_defined_statistic_gets_the_labels():
    fc = FairnessConstraint(FalseNegativeRate(), ["a", "b", "c"], mode="overall", eps=0.0,
                            pred="probabilities")
    v = fc(P, S, Y)
    fnr = [(1 - 0.2) / 1, (1 - 0.9) / 1, (1 - 0.6) / 1]  # positives: rows 0, 2, 5
    overall = (0.8 + 0.1 + 0.4) / 3
    assert v.statistics[0].tolist() == pytest.approx(fnr)
    assert float(v.overall[0]) == pytest.approx(overall)
    assert fc.names[0] == "FalseNegativeRate[a] - FalseNegativeRate[overall]"
    assert v.values.tolist()[:2] == pytest.approx([fnr[0] - overall, overall - fnr[0]])
    with pytest.raises(ValueError, match="labels: expected labels for statistic"):
        fc(P, S)


def test_nested_stacks_flatten_and_name_every_statistic():
    inner = StackedLinearFractionalStatistic(TruePositiveRate(), FalsePositiveRate())
    fc = FairnessConstraint(StackedLinearFractionalStatistic(PositiveRate(), inner), 2,
                            mode="abs_diff", eps=0.0, pred="probabilities")
    assert fc.m == 3 and [n.split("[")[0] for n in fc.names] == ["|PR", "|TPR", "|FPR"]
    v = fc(P[:4], S[:4], Y[:4])
    assert v.statistics.shape == (3, 2)


def test_every_group_layout_gives_the_same_rows():
    gen = torch.Generator().manual_seed(3)
    n = 40
    sex, race = torch.randint(0, 2, (n,), generator=gen), torch.randint(0, 3, (n,), generator=gen)
    p = torch.rand(n, generator=gen, dtype=torch.float64)
    groups = {"sex": ["f", "m"], "race": ["x", "y", "z"]}
    fc = FairnessConstraint("PositiveRate", groups, eps=0.0, pred="probabilities")
    ids = sex * 3 + race
    columns = torch.stack([sex, race], 1)
    side_by_side = torch.cat([torch.nn.functional.one_hot(sex, 2),
                              torch.nn.functional.one_hot(race, 3)], 1).double()
    onehot = torch.nn.functional.one_hot(ids, 6).double()
    ref = fc(p, ids).values
    for sens in (columns, side_by_side, onehot, ids.view(-1, 1)):
        torch.testing.assert_close(fc(p, sens).values, ref)
    assert fc.groups.names[4] == "m&y" and fc.m == 30
    with pytest.raises(ValueError, match=r"sens: expected attribute ids in 0..k-1"):
        fc(p, torch.stack([sex, race + 1], 1))


def test_two_by_two_intersections_accept_both_float_layouts():
    fc = FairnessConstraint("PositiveRate", {"a": ["0", "1"], "b": ["0", "1"]}, eps=0.0,
                            pred="probabilities")
    p = torch.tensor([0.1, 0.3, 0.6, 0.8], dtype=torch.float64)
    blocks = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1]]).double()
    torch.testing.assert_close(fc(p, blocks).values, fc(p, torch.eye(4).double()).values)


def test_out_of_range_ids_raise_instead_of_joining_a_group():
    fc = FairnessConstraint("PositiveRate", ["a", "b"], pred="probabilities")
    with pytest.raises(ValueError,
                       match=r"sens: expected group ids in 0..1 \(\['a', 'b'\]\), got \[2\]"):
        fc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 1, 2]))


def test_inactive_nan_leaves_momentum_buffers_untouched():
    fc = FairnessConstraint("PositiveRate", ["a", "b", "c"], eps=0.0, pred="probabilities",
                            inactive="nan")
    dual = ALM(fc.m, lr=1.0, is_ineq=True, momentum=0.5, check_finite=False,
               dtype=torch.float64)
    full = fc(torch.tensor([0.9, 0.1, 0.2], dtype=torch.float64), torch.tensor([0, 1, 2]))
    dual.update(full.values)
    before = dual.duals.clone()
    buf = dual.state[dual.param_groups[0]["params"][0]]["momentum_buffer"].clone()
    p = torch.tensor([0.9, 0.1], dtype=torch.float64, requires_grad=True)
    part = fc(p, torch.tensor([0, 1]))  # group c absent
    assert part.values[~part.active].isnan().all()
    lagr = dual.forward_update(torch.zeros((), dtype=torch.float64), part.values)
    lagr.backward()
    assert torch.isfinite(p.grad).all()
    after = dual.duals
    buf_after = dual.state[dual.param_groups[0]["params"][0]]["momentum_buffer"]
    inactive = ~part.active
    assert torch.equal(after[inactive], before[inactive])
    assert torch.equal(buf_after[inactive], buf[inactive])
    assert not torch.equal(after[part.active], before[part.active])


def test_names_line_up_with_the_dual_groups():
    dp = FairnessConstraint("PositiveRate", ["f", "m"], mode="abs_diff", name="dp")
    eo = FairnessConstraint("TruePositiveRate+FalsePositiveRate", ["f", "m"], name="eo")
    dual = ALM(None, lr=0.5)
    dp.add_to(dual)
    eo.add_to(dual, lr=0.1)
    assert dual.names == ["dp", "eo"] and dual.m == dp.m + eo.m == 5
    assert dual.param_groups[1]["is_ineq"] and dual.param_groups[1]["lr"] == 0.1
    logit = torch.tensor([2.0, -1.0, 0.5, 1.5])
    s, y = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 1, 0])
    a, b = dp(logit, s), eo(logit, s, y)
    dual.forward_update(torch.zeros(()), {**a.as_dict(), **b.as_dict()})
    rows = eo.dual_by_row(dual)
    assert list(rows) == ["TPR[f] - TPR[m]", "TPR[m] - TPR[f]", "FPR[f] - FPR[m]",
                          "FPR[m] - FPR[f]"]
    assert rows["FPR[m] - FPR[f]"] == pytest.approx(0.1 * float(b.values[3]))
    assert list(b.named()) == eo.names


def test_statistics_equal_the_soft_and_hard_streaming_metrics():
    gen = torch.Generator().manual_seed(1)
    p = torch.rand(200, generator=gen, dtype=torch.float64)
    s, y = torch.randint(0, 3, (200,), generator=gen), torch.randint(0, 2, (200,), generator=gen)
    gm = GroupMetrics(3)
    gm.update(p, s, y)
    rep = gm.compute()
    pairs = {"PositiveRate": "mean_score", "TruePositiveRate": "soft_tpr",
             "FalsePositiveRate": "soft_fpr", "PositivePredictiveValue": "soft_ppv",
             "FalseOmissionRate": "soft_for", "Accuracy": "soft_accuracy"}
    for stat, metric in pairs.items():
        fc = FairnessConstraint(stat, 3, pred="probabilities", threshold=0.5)
        assert fc(p, s, y).statistics[0].tolist() == pytest.approx(rep.by_group[metric])
        hard = metric.replace("soft_", "").replace("mean_score", "positive_rate")
        assert fc.decisions(p, s, y).statistics[0].tolist() == pytest.approx(
            rep.by_group[hard])


def test_argument_checks():
    with pytest.raises(ValueError, match="eps: expected a finite number >= 0"):
        FairnessConstraint("PositiveRate", 2, eps=-0.1)
    with pytest.raises(ValueError, match=r"pred: expected one of \('logits', 'probabilities'\)"):
        FairnessConstraint("PositiveRate", 2, pred="scores")
    with pytest.raises(ValueError, match="inactive: expected one of"):
        FairnessConstraint("PositiveRate", 2, inactive="skip")
    with pytest.raises(ValueError, match="groups: expected at least 2 groups"):
        FairnessConstraint("PositiveRate", ["only"])
    with pytest.raises(ValueError, match="statistic: expected a fairret"):
        FairnessConstraint(torch.nn.Linear, 2)
