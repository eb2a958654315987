"""FairnessConstraint: values by hand and against fairret, names, m, absent groups, proxies."""

import pytest
import torch
from fairret.statistic import (
    Accuracy,
    FalsePositiveRate,
    PositivePredictiveValue,
    PositiveRate,
    StackedLinearFractionalStatistic,
    TruePositiveRate,
)

from humancompatible_train.dual_optim import ALM
from humancompatible_train.fairness import FairnessConstraint

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


@pytest.mark.parametrize("stat", [PositiveRate(), TruePositiveRate(), FalsePositiveRate(),
                                  PositivePredictiveValue(), Accuracy()])
def test_statistics_match_fairret(stat):
    fc = FairnessConstraint(stat, 3, mode="overall", eps=0.0, pred="probabilities")
    v = fc(P, S, Y)
    onehot = torch.nn.functional.one_hot(S, 3).double()
    args = () if isinstance(stat, PositiveRate) else (Y.double().view(-1, 1),)
    ref = stat(P.view(-1, 1), onehot, *args).reshape(-1)
    defined = v.defined.reshape(-1)
    torch.testing.assert_close(v.statistics.reshape(-1)[defined], ref[defined])
    overall = stat.overall_statistic(P.view(-1, 1), *args).reshape(-1)
    torch.testing.assert_close(v.overall, overall)


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
    with pytest.raises(ValueError, match="labels: statistic"):
        fc(torch.zeros(3), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"pred: expected shape \(N,\) or \(N, 1\)"):
        fc(torch.zeros(3, 2), torch.tensor([0, 1, 1]), torch.zeros(3))
    with pytest.raises(ValueError, match="sens: expected 3 rows"):
        fc(torch.zeros(3), torch.tensor([0, 1]), torch.zeros(3))


def test_alm_meets_equalized_odds_for_three_groups():
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
            dual.forward_update(bce(logit, y[idx]), fc(logit, g[idx], y[idx]).values).backward()
            opt.step()
    with torch.no_grad():
        v = fc(model(x).squeeze(1), g, y)
    assert float(v.values.max()) <= 0.0, dict(zip(fc.names, v.values.tolist()))
