"""A model with a built-in fairness layer and its trainer (the fairness_training workflow).

``FairModel`` is an MLP whose output goes through a fairness layer: in training, the exact
per-batch projection (hard constraints, differentiable, so the network learns through it);
at inference, :class:`~humancompatible_train.inference.FairInference` (exact projection for
batches of at least ``b_tau``, online primal-dual below). ``FairTrainer`` fits it and reports.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._projection import project_groups
from .wrapper import FairInference

__all__ = ["FairModel", "FairTrainer", "project_batch"]

logger = logging.getLogger("humancompatible_train")


def project_batch(z: Tensor, groups: Tensor, eps: float, num_groups: int,
                  bounds: tuple[float, float] | None = None) -> Tensor:
    r"""Exact, differentiable projection of a batch onto
    :math:`\{q: |\bar q_g - \bar q_h| \le \varepsilon,\ lo \le q \le hi\}`
    (:func:`~humancompatible_train._projection.solver.project_groups`). A batch with
    one group is returned unchanged."""
    q, _ = project_groups(z.reshape(-1), groups.reshape(-1), num_groups, 1, eps, bounds)
    return q.view_as(z)


class FairModel(torch.nn.Module):
    """An MLP with a fairness layer on its output (mean-prediction parity by group).

    Args mirror ``FairModel`` of the fairness_training small-batch streaming example:
    ``input_dim``, ``hidden_dims``, ``output_dim`` (1), ``protected_attr_idx`` (the column of
    ``x`` holding the group id), ``prediction_bounds``, ``fairness_tolerance``, ``b_tau``,
    ``eta_0`` and ``fairness_metric`` (``"mean_pred"``).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (64, 32),
        output_dim: int = 1,
        protected_attr_idx: int = 0,
        prediction_bounds: tuple[float, float] | None = None,
        fairness_tolerance: float = 0.05,
        b_tau: int = 64,
        eta_0: float = 0.5,
        fairness_metric: str = "mean_pred",
        num_groups: int = 2,
    ) -> None:
        super().__init__()
        if output_dim != 1:
            raise ValueError(f"output_dim must be 1 (one score per row), got {output_dim}")
        if fairness_metric != "mean_pred":
            raise ValueError(
                f"fairness_metric must be 'mean_pred' for FairModel, got {fairness_metric!r}; "
                "use FairInference(metric='equalized_odds') for the label-conditional variant"
            )
        dims = [input_dim, *hidden_dims]
        layers: list[torch.nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        layers.append(torch.nn.Linear(dims[-1], 1))
        self.net = torch.nn.Sequential(*layers)
        self.protected_attr_idx = protected_attr_idx
        self.prediction_bounds = prediction_bounds
        self.fairness_tolerance = fairness_tolerance
        self.b_tau = b_tau
        self.num_groups = num_groups
        self.fair = FairInference(
            None, num_groups=num_groups, fairness_tolerance=fairness_tolerance, b_tau=b_tau,
            eta_0=eta_0, prediction_bounds=prediction_bounds,
        )

    def groups_of(self, x: Tensor) -> Tensor:
        return x[:, self.protected_attr_idx].round().long()

    def forward(self, x: Tensor, y: Tensor | None = None, inference: bool = False) -> Tensor:
        """Training mode: project the batch (differentiable). ``inference=True`` or eval
        mode: serve through :class:`FairInference`, updating its state."""
        z = self.net(x)
        groups = self.groups_of(x)
        if self.training and not inference:
            return project_batch(z, groups, self.fairness_tolerance, self.num_groups,
                                 self.prediction_bounds)
        return self.fair.adjust(z.detach(), groups)

    # seed 001's attribute names
    @property
    def lambda_dual(self) -> float:
        return float(self.fair.dual.duals.max())

    @property
    def cumulative_samples(self) -> int:
        return int(self.fair.cumulative_samples)

    def reset(self) -> None:
        self.fair.reset()

    def get_aggregate_fairness_stats(self, loader: Iterable,
                                     reset_before: bool = True) -> dict[str, Any]:
        """Serve ``loader`` through the inference layer and return :meth:`FairInference.stats`."""
        if reset_before:
            self.fair.reset()
        was = self.training
        self.eval()
        with torch.no_grad():
            for batch in loader:
                self(batch[0], inference=True)
        self.train(was)
        return self.fair.stats()


class FairTrainer:
    """Fit a :class:`FairModel` (hard per-batch constraints) and evaluate it on a stream."""

    def __init__(self, model: FairModel, criterion: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, early_stopping_patience: int | None = None
                 ) -> None:
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.patience = early_stopping_patience

    def _loss(self, out: Tensor, y: Tensor) -> Tensor:
        return self.criterion(out, y.view_as(out).to(out.dtype))

    def _gap(self, out: Tensor, groups: Tensor) -> float:
        means = [out[groups == g].mean() for g in range(self.model.num_groups)
                 if bool((groups == g).any())]
        return float(max(means) - min(means)) if len(means) >= 2 else 0.0

    def fit(self, train_loader: Iterable, val_loader: Iterable | None = None, epochs: int = 10,
            verbose: int = 1, log_interval: int = 10) -> dict[str, list[float]]:
        history: dict[str, list[float]] = {"train_loss": [], "train_gap": [], "val_loss": [],
                                           "val_gap": []}
        best, best_state, waited = math.inf, None, 0
        for epoch in range(1, epochs + 1):
            self.model.train()
            tot, gap, n = 0.0, 0.0, 0
            for x, y in train_loader:
                self.optimizer.zero_grad()
                out = self.model(x)
                loss = self._loss(out, y)
                loss.backward()
                self.optimizer.step()
                tot += float(loss.detach()) * len(x)
                gap += self._gap(out.detach(), self.model.groups_of(x)) * len(x)
                n += len(x)
            history["train_loss"].append(tot / n)
            history["train_gap"].append(gap / n)
            if val_loader is not None:
                vl, vg = self._validate(val_loader)
                history["val_loss"].append(vl)
                history["val_gap"].append(vg)
                if self.patience is not None:
                    if vl < best - 1e-6:
                        best, waited = vl, 0
                        best_state = {k: v.clone() if isinstance(v, Tensor) else v
                                      for k, v in self.model.state_dict().items()}
                    else:
                        waited += 1
                        if waited >= self.patience:
                            logger.info("early stopping at epoch %d", epoch)
                            break
            if verbose and epoch % max(1, log_interval) == 0:
                logger.info("Epoch %d | Train Loss: %.4f | Val Loss: %.4f | Train Gap: %.4f | "
                            "Val Gap: %.4f", epoch, history["train_loss"][-1],
                            history["val_loss"][-1] if history["val_loss"] else math.nan,
                            history["train_gap"][-1],
                            history["val_gap"][-1] if history["val_gap"] else math.nan)
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return history

    def _validate(self, loader: Iterable) -> tuple[float, float]:
        # Validation batches are large: the training-time projection, no serving state.
        self.model.train()
        tot, gap, n = 0.0, 0.0, 0
        with torch.no_grad():
            for x, y in loader:
                out = self.model(x)
                tot += float(self._loss(out, y)) * len(x)
                gap += self._gap(out, self.model.groups_of(x)) * len(x)
                n += len(x)
        return tot / n, gap / n

    def evaluate(self, loader: Iterable, reset_before: bool = False) -> dict[str, Any]:
        """Serve ``loader`` (``(x, y)`` batches) through the inference layer: ``test_loss``
        and :meth:`FairInference.stats`. The serving state is kept unless ``reset_before``."""
        if reset_before:
            self.model.fair.reset()
        self.model.eval()
        tot, n = 0.0, 0
        with torch.no_grad():
            for x, y in loader:
                out = self.model(x, inference=True)
                tot += float(self._loss(out, y)) * len(x)
                n += len(x)
        result = self.model.fair.stats()
        result["test_loss"] = tot / n if n else math.nan
        return result
