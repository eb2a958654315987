"""NaN is never fair (bad-input D1), and FairnessConstraint's argument and value checks (D12,
D15): non-finite inputs give active NaN rows, absent groups inactive ones; bad ids,
memberships and labels are refused; values are read only where ``validate`` says."""

import contextlib
import math

import pytest
import torch

from humancompatible_train.dual_optim import ALM
from humancompatible_train.fairness import FairnessConstraint, Groups

NAN, INF = float("nan"), float("inf")
MODES = ("pairwise", "overall", "max_gap", "abs_diff")
IDS = torch.tensor([0, 0, 0, 1, 1, 1])


@contextlib.contextmanager
def no_host_reads():
    """Fail on any read of a tensor's value on the host (item, tolist, bool, float, int)."""
    names = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was read on the host")

    try:
        for n in names:
            setattr(torch.Tensor, n, refuse)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def assert_all_nan_and_active(rows):
    assert rows.values.isnan().all(), rows.values
    assert rows.active.all() and rows.nonfinite.all()
    assert rows.nonfinite_names == rows.names and rows.inactive_names == []
    assert not rows.absent.any() and not rows.defined.any()
    assert rows.statistics.isnan().all()
    assert math.isnan(float(rows.largest_gap()))


# ------------------------------------------------------------------ D1: non-finite inputs
@pytest.mark.parametrize("validate", [None, False])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_a_non_finite_logit_makes_every_row_nan_and_active(mode, bad, validate):
    fc = FairnessConstraint("PositiveRate", ["a", "b"], mode=mode, validate=validate)
    logit = torch.tensor([bad, 3.0, 3.0, -3.0, -3.0, -3.0])
    for sens in (IDS, torch.nn.functional.one_hot(IDS, 2).float()):
        rows = fc(logit, sens)
        assert_all_nan_and_active(rows)
        assert rows.overall.isnan().all()
    assert_all_nan_and_active(fc.decisions(logit, IDS))


@pytest.mark.parametrize("validate", [None, False])
def test_non_finite_probabilities_labels_and_memberships_give_nan_rows(validate):
    kw = dict(mode="pairwise", validate=validate)
    p = torch.tensor([0.2, 0.9, 0.4, 0.6, 0.3, 0.8])
    y = torch.tensor([1.0, 0, 1, 0, 1, 0])
    fc = FairnessConstraint("PositiveRate", 3, pred="probabilities", **kw)
    sens = torch.tensor([0, 1, 2, 0, 1, 2])
    assert_all_nan_and_active(fc(torch.tensor([NAN, *p[1:]]), sens))
    tpr = FairnessConstraint("TruePositiveRate+FalsePositiveRate", 3, pred="probabilities", **kw)
    assert_all_nan_and_active(tpr(p, sens, torch.tensor([NAN, *y[1:]])))
    # A NaN membership weight: its group's statistic and the rows comparing it.
    soft = torch.nn.functional.one_hot(sens, 3).float()
    soft[2, 1] = NAN
    rows = fc(p, soft)
    assert rows.statistics.isnan().tolist() == [[False, True, False]]
    assert rows.nonfinite_names == ["PR[g0] - PR[g1]", "PR[g1] - PR[g0]", "PR[g1] - PR[g2]",
                                    "PR[g2] - PR[g1]"]
    assert rows.active.all() and math.isnan(float(rows.largest_gap()))


def test_absence_takes_precedence_and_is_never_a_met_constraint():
    fc = FairnessConstraint("PositiveRate", ["a", "b", "c"], mode="pairwise")
    rows = fc(torch.tensor([NAN, 2.0, 1.0]), torch.tensor([0, 0, 1]))  # c absent
    assert rows.nonfinite_names == ["PR[a] - PR[b]", "PR[b] - PR[a]"]
    assert rows.inactive_names == ["PR[a] - PR[c]", "PR[b] - PR[c]", "PR[c] - PR[a]",
                                   "PR[c] - PR[b]"]
    assert math.isnan(float(rows.largest_gap()))
    # Only one group present: every row inactive, the gap undefined (never met).
    two = FairnessConstraint("PositiveRate", ["a", "b"], mode="abs_diff")
    for logit in (torch.tensor([1.0, 2.0]), torch.tensor([NAN, 2.0])):
        only_a = two(logit, torch.tensor([0, 0]))
        assert not only_a.active.any() and only_a.values.tolist() == [0.0]
        assert only_a.absent.tolist() == [[False, True]]
        assert math.isnan(float(only_a.largest_gap()))


def test_absent_group_and_nan_are_told_apart():
    fc = FairnessConstraint("PositiveRate", ["a", "b", "c"], mode="pairwise", eps=0.1,
                            pred="probabilities")
    absent = fc(torch.tensor([0.2, 0.9, 0.8]), torch.tensor([0, 1, 1]))
    assert absent.absent.tolist() == [[False, False, True]]
    assert absent.statistics[0, 2].isnan() and not absent.defined[0, 2]
    assert absent.inactive_names == ["PR[a] - PR[c]", "PR[b] - PR[c]", "PR[c] - PR[a]",
                                     "PR[c] - PR[b]"]
    assert absent.nonfinite_names == [] and torch.isfinite(absent.values).all()
    # The largest gap over the active rows: |0.85 - 0.2|.
    assert float(absent.largest_gap()) == pytest.approx(0.65)
    nan = fc(torch.tensor([NAN, 0.9, 0.8]), torch.tensor([0, 1, 1]))
    assert nan.inactive_names == absent.inactive_names  # absence, told apart from ...
    assert nan.nonfinite_names == ["PR[a] - PR[b]", "PR[b] - PR[a]"]  # ... the NaN rows


def test_dual_optimizer_raises_on_nan_rows_and_masks_them_when_asked():
    """The bad-input D1 reproducer: the dual step now refuses the NaN batch."""
    fc = FairnessConstraint("PositiveRate", ["a", "b"], mode="abs_diff")
    rows = fc(torch.tensor([NAN, 3., 3., -3., -3., -3.]), IDS)
    dual = ALM(fc.m, lr=0.5, is_ineq=True)
    with pytest.raises(ValueError, match=r"non-finite value\(s\) in constraint group .* at "
                                         r"index \[0\]"):
        dual.forward_update(torch.tensor(0.0), rows.values)
    assert dual.duals.tolist() == [0.0]
    masking = ALM(fc.m, lr=0.5, is_ineq=True, check_finite=False)
    masking.forward_update(torch.tensor(0.0), rows.values)
    assert masking.duals.tolist() == [0.0]  # masked explicitly, not stepped with a zero
    # A finite batch steps the multiplier.
    masking.forward_update(torch.tensor(0.0), fc(torch.tensor([3., 3., 3., -3., -3., -3.]),
                                                  IDS).values)
    assert masking.duals.item() > 0


def test_empty_batch_is_inactive_and_its_gap_missing():
    fc = FairnessConstraint("TruePositiveRate", 2, mode="pairwise")
    rows = fc(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert not rows.active.any() and rows.values.tolist() == [0.0, 0.0]
    assert math.isnan(float(rows.largest_gap()))


def test_largest_gap_is_the_largest_group_difference_in_every_mode():
    p = torch.tensor([0.2, 0.4, 0.9, 0.7, 0.1, 0.6], dtype=torch.float64)
    s = torch.tensor([0, 0, 1, 1, 0, 2])
    pr = [0.7 / 3, 0.8, 0.6]
    overall = sum(p.tolist()) / 6
    expected = {"pairwise": max(pr) - min(pr), "max_gap": max(pr) - min(pr),
                "overall": max(abs(v - overall) for v in pr)}
    for mode, gap in expected.items():
        fc = FairnessConstraint("PositiveRate", 3, mode=mode, eps=0.05, pred="probabilities")
        assert float(fc(p, s).largest_gap()) == pytest.approx(gap)


# ------------------------------------------------------------------ validation (D12, D15)
def test_float_group_ids_are_refused_not_rounded():
    fc = FairnessConstraint("TruePositiveRate", ["a", "b"], mode="abs_diff")
    with pytest.raises(ValueError, match=r"sens: expected integer group ids \(N,\) or a float "
                                         r"membership \(N, 2\), got torch.float32 values"):
        fc(torch.randn(6), torch.tensor([.4, 1., .6, 0., 1., 0.]), torch.ones(6))
    with pytest.raises(ValueError, match="float ids are not rounded"):
        Groups.named(["a", "b"]).ids(torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("membership", [[[-3.0, 2.0]], [[5.0, 7.0]], [[0.5, 1.5]]])
def test_memberships_outside_zero_one_are_refused(membership):
    fc = FairnessConstraint("PositiveRate", ["a", "b"], mode="abs_diff")
    sens = torch.tensor([[1.0, 0.0], *membership, [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"sens: expected memberships in \[0, 1\] \(one-hot or "
                                         r"soft weights\), got values in"):
        fc(torch.randn(3), sens)


def test_soft_memberships_in_zero_one_are_weights():
    fc = FairnessConstraint("PositiveRate", ["a", "b"], mode="pairwise", eps=0.0,
                            pred="probabilities")
    p = torch.tensor([0.2, 0.6, 1.0], dtype=torch.float64)
    sens = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], dtype=torch.float64)
    a, b = (0.2 + 0.3) / 1.5, (0.3 + 1.0) / 1.5
    assert fc(p, sens).values.tolist() == pytest.approx([a - b, b - a])


def test_labels_must_be_label_weights_for_fairret_statistics():
    """The D12 reproducer: labels in {1, 2} used as TPR weights."""
    fc = FairnessConstraint("TruePositiveRate", ["a", "b"], mode="abs_diff")
    with pytest.raises(ValueError, match=r"labels: expected labels in \[0, 1\] \(TPR weighs rows "
                                         r"by them\), got values in \[1, 2\]"):
        fc(torch.randn(6), torch.tensor([0, 1] * 3), torch.tensor([1., 2., 2., 1., 2., 1.]))
    soft = fc(torch.zeros(4), torch.tensor([0, 0, 1, 1]), torch.tensor([0.5, 1.0, 1.0, 0.0]))
    assert soft.active.all()  # labels in [0, 1] are weights, as in fairret


def test_ids_out_of_range_are_refused_on_every_layout():
    fc = FairnessConstraint("PositiveRate", {"a": ["0", "1"], "b": ["x", "y", "z"]})
    with pytest.raises(ValueError, match=r"sens: expected group ids in 0..5"):
        fc(torch.zeros(2), torch.tensor([0, 6]))
    with pytest.raises(ValueError, match=r"sens: expected group ids in 0..5"):
        fc(torch.zeros(2), torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match=r"sens: expected attribute ids in 0..k-1"):
        fc(torch.zeros(2), torch.tensor([[0, 0], [1, 3]]))
    blocks = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match=r"sens: expected one-hot blocks side by side"):
        fc(torch.zeros(2), blocks)
    with pytest.raises(ValueError, match=r"sens: expected integer id columns \(N, 2\)"):
        fc(torch.zeros(2), torch.tensor([[0.0, 0.0], [1.0, 2.0]]))


def test_constructor_arguments_name_what_was_wrong():
    cases = [
        (dict(groups=2.5), r"groups: expected group names, a number of groups \(an int >= 2\) "
                           r"or \{attribute: value names\}, got 2.5"),
        (dict(groups="ab"), r"groups: expected group names.*got 'ab'"),
        (dict(groups=1), r"groups: expected an int >= 2, got 1"),
        (dict(groups={"sex": "fm"}), r"groups\['sex'\]: expected group names"),
        (dict(eps=INF), r"eps: expected a finite number >= 0.0, got inf"),
        (dict(eps=NAN), r"eps: expected a finite number >= 0.0, got nan"),
        (dict(eps="0.1"), r"eps: expected a finite number >= 0.0, got '0.1'"),
        (dict(threshold=1.5), r"threshold: expected a finite number in \[0.0, 1.0\]"),
        (dict(validate="yes"), r"validate: expected True or False, got 'yes'"),
        (dict(mode="ratio"), r"mode: expected one of"),
        (dict(inactive="skip"), r"inactive: expected one of"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            FairnessConstraint("PositiveRate", **{"groups": 2, **kwargs})


def test_inputs_of_the_wrong_kind_name_the_argument():
    fc = FairnessConstraint("TruePositiveRate", 2)
    with pytest.raises(ValueError, match=r"pred: expected a floating tensor of logits, got list"):
        fc([0.1, 0.2], torch.tensor([0, 1]), torch.ones(2))
    with pytest.raises(ValueError, match=r"pred: expected a floating tensor of logits, got a "
                                         r"tensor of torch.int64"):
        fc(torch.tensor([1, 2]), torch.tensor([0, 1]), torch.ones(2))
    with pytest.raises(ValueError, match=r"sens: expected a tensor, got list"):
        fc(torch.zeros(2), [0, 1], torch.ones(2))
    with pytest.raises(ValueError, match=r"labels: expected 2 values \(one per prediction\), "
                                         r"got shape \(3,\)"):
        fc(torch.zeros(2), torch.tensor([0, 1]), torch.ones(3))
    with pytest.raises(ValueError, match=r"sens: expected 2 rows \(one per prediction\), got 3"):
        fc(torch.zeros(2), torch.tensor([0, 1, 1]), torch.ones(2))


def test_probabilities_out_of_range_are_refused():
    fc = FairnessConstraint("PositiveRate", 2, pred="probabilities")
    with pytest.raises(ValueError, match=r"pred: expected probabilities in \[0, 1\] \(pass "
                                         r"pred='logits' for logits\), got values in \[-0.5, 1\]"):
        fc(torch.tensor([-0.5, 1.0]), torch.tensor([0, 1]))


def test_validate_true_refuses_non_finite_inputs_at_the_constraint():
    fc = FairnessConstraint("TruePositiveRate", ["a", "b"], validate=True)
    with pytest.raises(ValueError, match=r"pred: expected finite logits, got inf at row 2"):
        fc(torch.tensor([0.0, 1.0, INF]), torch.tensor([0, 1, 1]), torch.ones(3))
    with pytest.raises(ValueError, match=r"labels: expected finite labels, got nan at row 1"):
        fc(torch.zeros(3), torch.tensor([0, 1, 1]), torch.tensor([1.0, NAN, 0.0]))
    with pytest.raises(ValueError, match=r"sens: expected finite memberships"):
        fc(torch.zeros(2), torch.tensor([[1.0, 0.0], [NAN, 1.0]]), torch.ones(2))


def test_validate_false_reads_nothing_and_accepts_what_it_cannot_see():
    for stat in ("PositiveRate", "TruePositiveRate+FalsePositiveRate"):
        for mode in MODES:
            fc = FairnessConstraint(stat, ["a", "b"], mode=mode, validate=False)
            logit = torch.randn(6, requires_grad=True)
            y = torch.tensor([1.0, 0, 1, 0, 1, 0])
            with no_host_reads():
                rows = fc(logit, IDS, y)
                rows.values.sum().backward()
                fc.decisions(logit, IDS, y)
                fc(logit, torch.nn.functional.one_hot(IDS, 2).float(), y)
                rows.largest_gap()
            assert torch.isfinite(logit.grad).all()
    # Without a read, an id out of range belongs to no group (documented).
    fc = FairnessConstraint("PositiveRate", ["a", "b"], validate=False, pred="probabilities")
    rows = fc(torch.tensor([0.2, 0.8, 0.5]), torch.tensor([0, 1, 7]))
    assert rows.values.tolist() == pytest.approx([0.2 - 0.8 - 0.05, 0.8 - 0.2 - 0.05])


def test_default_reads_once_per_call_on_cpu_with_item():
    """The default check on CPU: a few scalar reads of one batch (no read per row)."""
    calls = []
    item = torch.Tensor.item

    def counting(self):
        calls.append(1)
        return item(self)

    fc = FairnessConstraint("PositiveRate", 2, mode="abs_diff")
    torch.Tensor.item = counting
    try:
        fc(torch.randn(500), torch.randint(0, 2, (500,)))
    finally:
        torch.Tensor.item = item
    assert 0 < len(calls) <= 4


def test_labels_given_to_a_statistic_without_labels_are_checked_for_shape_only():
    fc = FairnessConstraint("PositiveRate", ["a", "b"], mode="abs_diff", pred="probabilities")
    p, s = torch.tensor([0.2, 0.6, 0.9]), torch.tensor([0, 1, 1])
    expected = fc(p, s).values
    for layout in (s, torch.nn.functional.one_hot(s, 2).float()):  # both paths
        assert torch.equal(fc(p, layout, torch.tensor([1.0, NAN, 2.0])).values, expected)
        with pytest.raises(ValueError, match=r"labels: expected 3 values"):
            fc(p, layout, torch.ones(4))
    three = FairnessConstraint("PositiveRate", 3, pred="probabilities")
    with pytest.raises(ValueError, match=r"labels: expected a real tensor, got list"):
        three(p, s, [1, 0, 1])


def test_eps_and_threshold_are_checked_whenever_set():
    fc = FairnessConstraint("PositiveRate", 2)
    fc.eps = 0.1
    with pytest.raises(ValueError, match=r"eps: expected a finite number >= 0.0, got inf"):
        fc.eps = INF
    with pytest.raises(ValueError, match=r"threshold: expected a finite number in \[0.0, 1.0\]"):
        fc.threshold = -1
    assert fc.eps == 0.1 and fc.threshold == 0.5
