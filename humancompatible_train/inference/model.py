r"""A model with a built-in fairness layer and its trainer (the workflow of the
fairness_training small-batch streaming example).

``FairModel`` is an MLP whose output goes through a fairness layer: in training, the exact
per-batch projection (hard constraints, differentiable, so the network learns through it),

.. math::

    q = \arg\min_{q'} \tfrac12\|q' - z\|^2 \ \text{s.t.}\
    |\bar q'_g - \bar q'_h| \le \varepsilon,\quad lo \le q' \le hi

(:mod:`humancompatible_train._projection.solver`); at inference,
:class:`~humancompatible_train.inference.FairInference` (exact projection for batches of at
least ``b_tau``, online primal-dual below). ``FairTrainer`` fits it and reports.

Inputs are validated before anything changes: the protected column must hold integral group
ids in ``0..num_groups-1`` (a continuous column is refused, not rounded), loaders must yield
``(x, y)`` or ``(x, groups, y)`` batches, and a non-finite loss stops training before the
optimizer steps on it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._projection.solver import project_groups
from .._validation import check_bounds, check_int, check_real, fail
from .wrapper import FairInference

__all__ = ["FairModel", "FairTrainer", "project_batch"]

logger = logging.getLogger("humancompatible_train")


def project_batch(z: Tensor, groups: Tensor, eps: float, num_groups: int,
                  bounds: tuple[float, float] | None = None) -> Tensor:
    r"""Exact, differentiable projection of a batch onto
    :math:`\{q: |\bar q_g - \bar q_h| \le \varepsilon,\ lo \le q \le hi\}`
    (:func:`~humancompatible_train._projection.solver.project_groups`). A batch with
    one group is only clipped to the bounds. ``groups`` must hold ids in ``0..num_groups-1``
    (an id out of range raises a ``ValueError``)."""
    try:
        q, _ = project_groups(z.reshape(-1), groups.reshape(-1), num_groups, 1, eps, bounds)
    except IndexError:
        raise fail("groups", f"group ids in 0..{num_groups - 1}",
                   torch.unique(groups).tolist()[:10]) from None
    return q.view_as(z)


class FairModel(torch.nn.Module):
    """An MLP with a fairness layer on its output (mean-prediction parity by group).

    Args (those of the fairness_training package's ``FairModel``):
        input_dim: number of input features, ``>= 1``.
        hidden_dims: widths of the hidden layers (positive ints; may be empty).
        output_dim: must be 1 (one score per row).
        protected_attr_idx: the column of ``x`` holding the group id (integral values in
            ``0..num_groups-1``), unless groups are passed to :meth:`forward`.
        prediction_bounds: optional ``(lo, hi)`` bounds of the served scores.
        fairness_tolerance: :math:`\\varepsilon \\ge 0`.
        b_tau, eta_0: of the inference layer (:class:`FairInference`).
        fairness_metric: ``"mean_pred"`` (the only one the training projection supports).
        num_groups: number of groups, ``>= 1``.
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
        where = "FairModel: "
        input_dim = check_int("input_dim", input_dim, minimum=1, where=where)
        if isinstance(hidden_dims, (str, bytes)) or not isinstance(hidden_dims, Sequence):
            raise fail("hidden_dims", "a sequence of positive ints", hidden_dims, where)
        hidden = [check_int("hidden_dims", h, minimum=1, where=where) for h in hidden_dims]
        check_int("output_dim", output_dim, minimum=1, maximum=1, where=where)  # one score
        if fairness_metric != "mean_pred":
            raise fail("fairness_metric", "'mean_pred' for FairModel (use "
                       "FairInference(metric='equalized_odds') for the label-conditional "
                       "variant)", fairness_metric, where)
        protected_attr_idx = check_int("protected_attr_idx", protected_attr_idx, minimum=0,
                                       maximum=input_dim - 1, where=where)
        if prediction_bounds is not None:
            prediction_bounds = check_bounds("prediction_bounds", prediction_bounds, where)
        fairness_tolerance = check_real("fairness_tolerance", fairness_tolerance, low=0.0,
                                        where=where)
        b_tau = check_int("b_tau", b_tau, minimum=1, where=where)
        eta_0 = check_real("eta_0", eta_0, low=0.0, low_open=True, where=where)
        num_groups = check_int("num_groups", num_groups, minimum=1, where=where)
        dims = [input_dim, *hidden]
        layers: list[torch.nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        layers.append(torch.nn.Linear(dims[-1], 1))
        self.net = torch.nn.Sequential(*layers)
        self.input_dim = input_dim
        self.protected_attr_idx = protected_attr_idx
        self.prediction_bounds = prediction_bounds
        self.fairness_tolerance = fairness_tolerance
        self.b_tau = b_tau
        self.num_groups = num_groups
        self.fair = FairInference(
            None, num_groups=num_groups, fairness_tolerance=fairness_tolerance, b_tau=b_tau,
            eta_0=eta_0, prediction_bounds=prediction_bounds,
        )

    def _check_x(self, x: Any) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 2 \
                or x.shape[1] != self.input_dim or x.shape[0] == 0:
            raise fail("x", f"a floating tensor of shape (N, {self.input_dim}) with N >= 1",
                       f"{getattr(x, 'dtype', type(x).__name__)} of shape "
                       f"{tuple(getattr(x, 'shape', ()))}")
        return x

    def groups_of(self, x: Tensor, groups: Tensor | None = None) -> Tensor:
        """The batch's group ids (N,) int64: ``groups`` when given, else the protected column
        of ``x``. Refuses (one host read) ids that are not integers in
        ``0..num_groups-1``: a continuous or standardised column, NaN, a negative id."""
        S = self.num_groups
        if groups is None:
            values, name = x[:, self.protected_attr_idx], f"x[:, {self.protected_attr_idx}]"
        else:
            if not isinstance(groups, Tensor) or groups.numel() != x.shape[0] \
                    or groups.dtype == torch.bool or groups.is_complex():
                raise fail("groups", f"a tensor of {x.shape[0]} group ids",
                           tuple(groups.shape) if isinstance(groups, Tensor) else groups)
            values, name = groups.reshape(-1), "groups"
        bad = (values < 0) | (values > S - 1)
        if values.is_floating_point():
            bad |= values != values.round()  # NaN included
        if bool(bad.any()):
            shown = [float(f"{v:.6g}") for v in torch.unique(values[bad]).tolist()[:5]]
            raise fail(name, f"group ids: integers in 0..{S - 1} (the protected column)", shown)
        return values.long()

    def forward(self, x: Tensor, y: Tensor | None = None, inference: bool = False,
                groups: Tensor | None = None) -> Tensor:
        """Training mode: project the batch (differentiable). ``inference=True`` or eval
        mode: serve through :class:`FairInference`, updating its state. ``groups`` overrides
        the protected column of ``x``; ``y`` is accepted for the original signature and
        unused."""
        x = self._check_x(x)
        return self._apply(x, self.groups_of(x, groups), inference)

    def _apply(self, x: Tensor, g: Tensor, inference: bool) -> Tensor:
        """:meth:`forward` on checked inputs."""
        z = self.net(x)
        if self.training and not inference:
            return project_batch(z, g, self.fairness_tolerance, self.num_groups,
                                 self.prediction_bounds)
        return self.fair.adjust(z.detach(), g)

    # the attribute names of the fairness_training inference guide
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
        """Serve ``loader`` (``(x, y)`` or ``(x, groups, y)`` batches) through the inference
        layer and return :meth:`FairInference.stats`."""
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                for i, (x, s, _) in enumerate(_batches(loader, "loader")):
                    x = self._check_x(x)
                    g = self.groups_of(x, s)
                    if reset_before and i == 0:  # once the first batch is known to be valid
                        self.fair.reset()
                    self._apply(x, g, inference=True)
        finally:
            self.train(was)
        return self.fair.stats()


def _batches(loader: Iterable, name: str) -> Iterable[tuple[Tensor, Tensor | None, Tensor]]:
    """``(x, groups or None, y)`` from batches ``(x, y)`` or ``(x, groups, y)``; refuses an
    empty loader and other batch layouts with a message naming ``name``."""
    if isinstance(loader, (str, bytes)) or not isinstance(loader, Iterable):
        raise fail(name, "an iterable of (x, y) or (x, groups, y) batches",
                   type(loader).__name__)
    empty = True
    for batch in loader:
        empty = False
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise fail(name, "batches (x, y) or (x, groups, y)",
                       f"a batch of {len(batch)} items" if isinstance(batch, (tuple, list))
                       else type(batch).__name__)
        x, *s, y = batch
        yield x, (s[0] if s else None), y
    if empty:
        raise fail(name, "at least one batch", "an empty loader")


class FairTrainer:
    """Fit a :class:`FairModel` (hard per-batch constraints) and evaluate it on a stream.

    Args:
        model: the :class:`FairModel`.
        criterion: the loss, called as ``criterion(scores, labels)`` (e.g.
            ``torch.nn.BCEWithLogitsLoss()``).
        optimizer: a :class:`torch.optim.Optimizer` over the model's parameters.
        early_stopping_patience: stop after this many epochs without a lower validation
            loss (``None``: never), and restore the best weights.
    """

    def __init__(self, model: FairModel, criterion: Any, optimizer: torch.optim.Optimizer,
                 early_stopping_patience: int | None = None) -> None:
        where = "FairTrainer: "
        if not isinstance(model, FairModel):
            raise fail("model", "a FairModel", type(model).__name__, where)
        if not callable(criterion):
            raise fail("criterion", "a callable loss such as torch.nn.BCEWithLogitsLoss()",
                       criterion, where)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise fail("optimizer", "a torch.optim.Optimizer", type(optimizer).__name__, where)
        if early_stopping_patience is not None:
            early_stopping_patience = check_int("early_stopping_patience",
                                                early_stopping_patience, minimum=1, where=where)
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.patience = early_stopping_patience

    @staticmethod
    def _check_y(x: Any, y: Any) -> None:
        """Labels fit the batch (checked before the batch changes any state)."""
        n = x.shape[0] if isinstance(x, Tensor) and x.dim() >= 1 else None
        if not isinstance(y, Tensor) or n is None or y.numel() != n:
            raise fail("y", f"a tensor of {n} labels (one per row of x)",
                       tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__)

    def _loss(self, out: Tensor, y: Tensor) -> Tensor:
        return self.criterion(out, y.reshape(out.shape).to(out.dtype))

    def _gap(self, out: Tensor, groups: Tensor) -> float:
        means = [out[groups == g].mean() for g in range(self.model.num_groups)
                 if bool((groups == g).any())]
        return float(max(means) - min(means)) if len(means) >= 2 else 0.0

    def fit(self, train_loader: Iterable, val_loader: Iterable | None = None, epochs: int = 10,
            verbose: int = 1, log_interval: int = 10) -> dict[str, list[float]]:
        """Train for ``epochs`` (``>= 1``) passes over ``train_loader`` (batches ``(x, y)`` or
        ``(x, groups, y)``). A non-finite loss raises before the optimizer steps on it."""
        epochs = check_int("epochs", epochs, minimum=1)
        verbose = check_int("verbose", verbose, minimum=0)
        log_interval = check_int("log_interval", log_interval, minimum=1)
        history: dict[str, list[float]] = {"train_loss": [], "train_gap": [], "val_loss": [],
                                           "val_gap": []}
        best, best_state, waited = math.inf, None, 0
        for epoch in range(1, epochs + 1):
            self.model.train()
            tot, gap, n = 0.0, 0.0, 0
            for i, (x, s, y) in enumerate(_batches(train_loader, "train_loader")):
                x = self.model._check_x(x)
                g = self.model.groups_of(x, s)
                self._check_y(x, y)
                self.optimizer.zero_grad()
                out = self.model._apply(x, g, inference=False)
                loss = self._loss(out, y)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise ValueError(
                        f"loss: expected a finite value, got {value} at epoch {epoch}, batch "
                        f"{i} (non-finite features or labels, or a diverged model); the "
                        "optimizer did not step on it")
                loss.backward()
                self.optimizer.step()
                tot += value * len(x)
                gap += self._gap(out.detach(), g) * len(x)
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
            if verbose and epoch % log_interval == 0:
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
            for x, s, y in _batches(loader, "val_loader"):
                x = self.model._check_x(x)
                g = self.model.groups_of(x, s)
                self._check_y(x, y)
                out = self.model._apply(x, g, inference=False)
                tot += float(self._loss(out, y)) * len(x)
                gap += self._gap(out, g) * len(x)
                n += len(x)
        return tot / n, gap / n

    def evaluate(self, loader: Iterable, reset_before: bool = False) -> dict[str, Any]:
        """Serve ``loader`` (``(x, y)`` or ``(x, groups, y)`` batches) through the inference
        layer: ``test_loss`` and :meth:`FairInference.stats`. The serving state is kept
        unless ``reset_before``."""
        self.model.eval()
        tot, n = 0.0, 0
        with torch.no_grad():
            for x, s, y in _batches(loader, "loader"):
                x = self.model._check_x(x)
                g = self.model.groups_of(x, s)
                self._check_y(x, y)
                if reset_before and n == 0:  # once the first batch is known to be valid
                    self.model.fair.reset()
                out = self.model._apply(x, g, inference=True)
                tot += float(self._loss(out, y)) * len(x)
                n += len(x)
        result = self.model.fair.stats()
        result["test_loss"] = tot / n
        return result
