"""Seed 002's training loop runs with only the import line changed and meets its constraint."""

import torch
from fairret.statistic import PositiveRate

from humancompatible_train.dual_optim import ALM  # the only changed line


def synthetic(n=8000, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(n, generator=g) < 0.35).long()
    x = torch.randn(n, 6, generator=g)
    x[:, 0] = s + 0.5 * x[:, 0]  # a proxy of the group
    # Labels carry a group bias that the model can only pick up through the proxy.
    y = ((x[:, 1] + 0.5 * x[:, 2] + 0.5 * s + 0.3 * torch.randn(n, generator=g)) > 0.6).float()
    groups = torch.nn.functional.one_hot(s, 2).float()
    return x, groups, y.unsqueeze(1)


def pr_diff(logit, groups):
    preds = torch.sigmoid(logit)
    stats = PositiveRate()(preds, groups)
    return torch.abs(stats[0] - stats[1])


def train(constrained, epochs=20):
    torch.manual_seed(0)
    X, groups, y = synthetic()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, groups, y),
                                         batch_size=64, shuffle=True)
    criterion = torch.nn.BCEWithLogitsLoss()
    model = torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32),
                                torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters())
    dual_optimizer = ALM(m=1, lr=0.01, is_ineq=True) if constrained else None
    gaps = []
    for _epoch in range(epochs):
        model.train()
        for batch_feat, batch_groups, batch_label in loader:
            optimizer.zero_grad()
            logit = model(batch_feat)
            loss = criterion(logit, batch_label)
            if constrained:
                constraint = pr_diff(logit, batch_groups) - 0.05
                lagr = dual_optimizer.forward_update(loss, constraint)
                lagr.backward()
            else:
                loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            gaps.append(pr_diff(model(X), groups).item())
    return gaps, dual_optimizer


def test_seed_002_loop_meets_the_constraint():
    free_gaps, _ = train(constrained=False)
    gaps, dual = train(constrained=True)
    assert free_gaps[-1] > 0.08, "the instance must be unfair without the constraint"
    assert dual.duals.item() > 0, "the constraint was active, so lambda must be > 0"
    assert max(gaps[-3:]) <= 0.05, gaps
