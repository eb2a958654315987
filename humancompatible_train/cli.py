"""Command line of humancompatible_train."""

from __future__ import annotations

import logging
import sys

import torch

from .dual_optim import ALM

logger = logging.getLogger("humancompatible_train")


def _demo(epochs: int = 5, eps: float = 0.05, seed: int = 0) -> None:
    """Train a small classifier under demographic parity with ALM on synthetic data."""
    g = torch.Generator().manual_seed(seed)
    n = 4000
    s = (torch.rand(n, generator=g) < 0.35).float()
    x = torch.randn(n, 6, generator=g)
    x[:, 0] = s + 0.5 * x[:, 0]
    y = ((x[:, 1] + 0.5 * x[:, 2] + 0.5 * s + 0.3 * torch.randn(n, generator=g)) > 0.6).float()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    dual = ALM(m=1, lr=0.5, is_ineq=True, name="demographic_parity")
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        for idx in perm.split(128):
            p = torch.sigmoid(model(x[idx]).squeeze(1))
            loss = torch.nn.functional.binary_cross_entropy(p, y[idx])
            gap = (p[s[idx] == 1].mean() - p[s[idx] == 0].mean()).abs() - eps
            opt.zero_grad()
            dual.forward_update(loss, gap).backward()
            opt.step()
        with torch.no_grad():
            p = torch.sigmoid(model(x).squeeze(1))
            gap = (p[s == 1].mean() - p[s == 0].mean()).abs().item()
        logger.info("epoch %d  |PR gap| %.4f (eps %.2f)  lambda %.4f", epoch, gap, eps,
                    dual.duals.item())


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    _demo()
    return 0
