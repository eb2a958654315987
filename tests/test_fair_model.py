"""FairModel and FairTrainer on bad input: clear errors that name the argument, nothing changed;
(x, groups, y) batches accepted; the box of the training projection holds for one-group
batches."""

from __future__ import annotations

import io
import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from humancompatible_train.inference import FairModel, FairTrainer, project_batch


def snapshot(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


def data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    s = (torch.rand(n, generator=gen) < 0.4).long()
    x = torch.randn(n, 4, generator=gen)
    x[:, 0] = s.float()
    y = ((x[:, 1] + 0.5 * s + 0.3 * torch.randn(n, generator=gen)) > 0).float()
    return x, s, y


def trainer(seed: int = 0, **kwargs) -> FairTrainer:
    torch.manual_seed(seed)
    model = FairModel(4, hidden_dims=(8,), **kwargs)
    return FairTrainer(model, torch.nn.BCEWithLogitsLoss(),
                       torch.optim.SGD(model.parameters(), lr=0.1))


# ------------------------------------------------------------------------ construction


@pytest.mark.parametrize("kwargs,match", [
    ({"input_dim": 0}, r"FairModel: input_dim: expected a positive int, got 0"),
    ({"input_dim": 2.5}, r"input_dim: expected a positive int, got 2.5"),
    ({"hidden_dims": (8, 0)}, r"hidden_dims: expected a positive int, got 0"),
    ({"hidden_dims": "8"}, r"hidden_dims: expected a sequence of positive ints"),
    ({"output_dim": 2}, r"output_dim: expected an int in \[1, 1\], got 2"),
    ({"protected_attr_idx": 4}, r"protected_attr_idx: expected an int in \[0, 3\], got 4"),
    ({"prediction_bounds": (0,)}, r"prediction_bounds: expected a pair \(lo, hi\)"),
    ({"prediction_bounds": ("a", "b")}, r"prediction_bounds: expected a pair"),
    ({"fairness_tolerance": -1}, r"fairness_tolerance: expected a finite number >= 0"),
    ({"b_tau": 0}, r"b_tau: expected a positive int"),
    ({"eta_0": 0.0}, r"eta_0: expected a finite number > 0"),
    ({"fairness_metric": "equalized_odds"}, r"fairness_metric: expected 'mean_pred'"),
    ({"num_groups": 0}, r"num_groups: expected a positive int"),
])
def test_model_arguments(kwargs, match):
    args = {"input_dim": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        FairModel(**args)


def test_trainer_arguments():
    model = FairModel(4, hidden_dims=(8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.BCEWithLogitsLoss()
    with pytest.raises(ValueError, match=r"FairTrainer: model: expected a FairModel"):
        FairTrainer(torch.nn.Linear(4, 1), loss, opt)
    with pytest.raises(ValueError, match=r"criterion: expected a callable loss"):
        FairTrainer(model, "bce", opt)
    with pytest.raises(ValueError, match=r"optimizer: expected a torch.optim.Optimizer"):
        FairTrainer(model, loss, None)
    with pytest.raises(ValueError, match=r"early_stopping_patience: expected a positive int"):
        FairTrainer(model, loss, opt, early_stopping_patience=0)


# -------------------------------------------------------------------------- group ids


@pytest.mark.parametrize("column,shown", [
    ([0, 1, 2, 0, 1, 2.0], r"\[2.0\]"),           # an id >= num_groups (the reproducer)
    ([0.2, -1.3, 0.7, 1.1, 0.0, 0.5], r"\[-1.3"),  # a continuous (standardised) column
    ([0, 1, float("nan"), 0, 1, 0], r"\[nan\]"),
])
@pytest.mark.parametrize("inference", [False, True])
def test_protected_column_must_hold_group_ids(column, shown, inference):
    m = FairModel(3, hidden_dims=(4,))
    x = torch.rand(6, 3)
    x[:, 0] = torch.tensor(column)
    before = snapshot(m)
    with pytest.raises(ValueError, match=r"x\[:, 0\]: expected group ids: integers in 0..1 "
                                         rf"\(the protected column\), got {shown}"):
        m(x, inference=inference)
    assert snapshot(m) == before


def test_explicit_groups_and_x_are_checked():
    m = FairModel(3, hidden_dims=(4,))
    x = torch.rand(6, 3)
    with pytest.raises(ValueError, match=r"groups: expected group ids: integers in 0..1"):
        m(x, groups=torch.tensor([0, 1, 5, 0, 1, 0]))
    with pytest.raises(ValueError, match=r"groups: expected a tensor of 6 group ids"):
        m(x, groups=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"x: expected a floating tensor of shape \(N, 3\)"):
        m(torch.rand(6, 4))
    with pytest.raises(ValueError, match=r"x: expected a floating tensor"):
        m(torch.zeros(0, 3))
    with pytest.raises(ValueError, match=r"groups: expected group ids in 0..1"):
        project_batch(torch.rand(4), torch.tensor([0, 1, 2, 0]), 0.05, 2)


def test_one_group_batch_is_clipped_in_training():
    m = FairModel(2, hidden_dims=(), prediction_bounds=(0.0, 1.0))
    with torch.no_grad():
        m.net[0].weight.copy_(torch.tensor([[0.0, 10.0]]))
        m.net[0].bias.zero_()
    x = torch.tensor([[1.0, 0.5], [1.0, -0.3], [1.0, 0.02]])
    q = m(x)  # one group, training mode: the projection is the box alone
    torch.testing.assert_close(q.detach().view(-1), torch.tensor([1.0, 0.0, 0.2]))


# ------------------------------------------------------------------------------- fit


def test_fit_refuses_an_empty_loader_and_bad_epochs():
    t = trainer()
    before = snapshot(t.model)
    x, _, y = data()
    loader = [(x, y)]
    for bad, match in (([], r"train_loader: expected at least one batch, got 'an empty loader'"),
                       (3, r"train_loader: expected an iterable")):
        with pytest.raises(ValueError, match=match):
            t.fit(bad, epochs=1)
    for kwargs, match in (({"epochs": -3}, r"epochs: expected a positive int, got -3"),
                          ({"epochs": 0}, r"epochs: expected a positive int, got 0"),
                          ({"epochs": 2.0}, r"epochs: expected a positive int"),
                          ({"log_interval": 0}, r"log_interval: expected a positive int")):
        with pytest.raises(ValueError, match=match):
            t.fit(loader, **kwargs)
    with pytest.raises(ValueError, match=r"val_loader: expected at least one batch"):
        t.fit(loader, [], epochs=1)  # trains one epoch, then finds no validation batch
    t2 = trainer()
    with pytest.raises(ValueError, match=r"train_loader: expected batches \(x, y\) or "
                                         r"\(x, groups, y\), got 'a batch of 4 items'"):
        t2.fit([(x, x[:, 0], y, y)], epochs=1)
    with pytest.raises(ValueError, match=r"y: expected a tensor of 64 labels"):
        t2.fit([(x, y[:10])], epochs=1)
    assert snapshot(t2.model) == before  # same initial weights, nothing stepped


def test_triples_train_like_pairs():
    """(x, groups, y) batches: the groups come from the batch; with the protected column
    holding the same ids the run is identical to (x, y) batches."""
    x, s, y = data(128)
    loader_pairs = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 128, 32)]
    loader_triples = [(x[i:i + 32], s[i:i + 32], y[i:i + 32]) for i in range(0, 128, 32)]
    a, b = trainer(1, prediction_bounds=(-4.0, 4.0)), trainer(1, prediction_bounds=(-4.0, 4.0))
    ha = a.fit(loader_pairs, loader_pairs, epochs=3, verbose=0)
    hb = b.fit(loader_triples, loader_triples, epochs=3, verbose=0)
    assert ha == hb
    for key, va in a.model.net.state_dict().items():
        assert torch.equal(va, b.model.net.state_dict()[key])
    ea, eb = a.evaluate(loader_pairs, reset_before=True), b.evaluate(loader_triples, True)
    assert ea == eb and math.isfinite(ea["test_loss"])
    assert b.model.get_aggregate_fairness_stats(loader_triples) == \
        a.model.get_aggregate_fairness_stats(loader_pairs)


def test_nan_labels_stop_training_before_the_step():
    t = trainer()
    x, _, y = data()
    t.fit([(x, y)], epochs=1, verbose=0)
    before = snapshot(t.model)
    y_bad = y.clone()
    y_bad[3] = float("nan")
    with pytest.raises(ValueError, match=r"loss: expected a finite value, got nan at epoch 1, "
                                         r"batch 0 .*did not step"):
        t.fit([(x, y_bad)], epochs=1)
    assert snapshot(t.model) == before


def test_evaluate_keeps_the_serving_state_on_error():
    t = trainer()
    x, s, y = data()
    t.evaluate([(x, y)])
    before = snapshot(t.model)
    with pytest.raises(ValueError, match=r"loader: expected at least one batch"):
        t.evaluate([], reset_before=True)
    bad = x.clone()
    bad[0, 0] = 3.0
    with pytest.raises(ValueError, match=r"x\[:, 0\]: expected group ids"):
        t.evaluate([(bad, y)], reset_before=True)
    with pytest.raises(ValueError, match=r"loader: expected at least one batch"):
        t.model.get_aggregate_fairness_stats([])
    assert snapshot(t.model) == before


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 9), st.integers(0, 2**31)),
                min_size=1, max_size=6))
def test_serving_random_batches_errors_change_nothing(calls):
    """Random valid and invalid batches served in eval mode: an error leaves the model's
    state dict (weights and serving state) bit for bit as it was."""
    torch.manual_seed(0)
    m = FairModel(3, hidden_dims=(4,), b_tau=4).eval()
    for kind, n, seed in calls:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 3, generator=gen)
        x[:, 0] = torch.randint(0, 2, (n,), generator=gen).float()
        if kind == 1:
            x[0, 0] = 2.0
        elif kind == 2:
            x[0, 0] = 0.5
        elif kind == 3:
            x = x[:, :2]
        before = snapshot(m)
        try:
            m(x)
        except ValueError:
            assert kind in (1, 2, 3)
            assert snapshot(m) == before
        else:
            assert kind in (0, 4)
