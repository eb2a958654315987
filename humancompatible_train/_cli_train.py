"""The command line's training procedure: one function, replaceable as a whole or in parts.

The command line hands :func:`train` a :class:`Setup` (data, constraint, settings, two
callbacks) and gets back a :class:`Trained` (a ``predict`` function serving a whole split, the
epoch it chose, or why it diverged). Everything around it (checking the arguments, the output
folder, evaluating every split the same way, the report, interruptions) does not depend on how
the model was trained, so a new default changes only this module:

* :data:`PROCEDURE` is the function the command line calls; assign another
  ``Callable[[Setup], Trained]`` to replace the whole procedure;
* :func:`make_dual` is the algorithm factory (:data:`ALGORITHMS` names what the command line
  accepts);
* :func:`dual_rows` is the dual step's source: the rows that feed the Lagrangian and those
  that drive the multipliers;
* :func:`select_iterate` picks the epoch whose model is served (every epoch's weights are kept
  until the end).

The default is the README's loop: Adam on the network, one dual step per training batch
(``forward_update``), the last epoch served.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .dual_optim import ALM, DualOptimizer, FairProjection, PrimalDual

if TYPE_CHECKING:  # pragma: no cover
    from .datasets import DatasetSplits, Split
    from .fairness import FairnessConstraint

#: Algorithm -> (what it is, the default dual step). ``None``: no dual step to give.
ALGORITHMS: dict[str, tuple[str, float | None]] = {
    "alm": ("augmented Lagrangian, ALM(lr=0.3)", 0.3),
    "alm-hpr": ("ALM with the HPR penalty 1.0, ALM(lr=0.3)", 0.3),
    "primal-dual": ("PrimalDual(eta_0=2.0)", 2.0),
    "projection": ("FairProjection of every batch's probabilities (hard constraints)", None),
    "unconstrained": ("no constraint (the baseline)", None),
}
#: Constraints the projection enforces exactly (mean parity of probabilities, per label class).
PROJECTABLE = {"demographic_parity": "parity", "equalized_odds": "equalized_odds"}


@dataclass(frozen=True)
class Settings:
    """The training settings of the command line (already checked)."""

    constraint: str
    on: str  #: "probabilities" or "decisions": which rows drive the dual step
    eps: float
    epochs: int
    batch_size: int
    lr: float
    dual_lr: float | None
    seed: int
    device: torch.device


@dataclass
class Setup:
    """What a training procedure gets."""

    algorithm: str
    data: DatasetSplits
    fairness: FairnessConstraint  #: rows ``|stat_a - stat_b| - eps`` (or the largest gap)
    settings: Settings
    on_step: Callable[[], None] = lambda: None  #: after every optimizer step (progress bar)
    on_epoch: Callable[[dict[str, float]], None] = lambda row: None  #: one history row


@dataclass
class Trained:
    """What a training procedure returns.

    ``predict(split)`` gives the served model's logits for a whole split, shape ``(n, 1)``, on
    the CPU (for ``projection``, the split is projected as one batch). A procedure that stopped
    because the loss or a constraint value became non-finite sets ``diverged`` to the reason;
    the command line then reports no metric of that model.
    """

    predict: Callable[[Split], torch.Tensor]
    epochs_run: int
    selected_epoch: int | None
    diverged: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  #: extra report fields


def make_dual(algorithm: str, m: int, dual_lr: float | None) -> DualOptimizer | None:
    """The dual optimizer of ``algorithm`` for ``m`` constraint rows (None: no dual step)."""
    lr = ALGORITHMS[algorithm][1] if dual_lr is None else dual_lr
    if algorithm == "alm":
        return ALM(m=m, lr=lr, is_ineq=True)
    if algorithm == "alm-hpr":
        return ALM(m=m, lr=lr, is_ineq=True, penalty=1.0, augmentation="hpr")
    if algorithm == "primal-dual":
        return PrimalDual(m=m, eta_0=lr, is_ineq=True)
    return None


def dual_rows(setup: Setup, logit: torch.Tensor, sens: torch.Tensor, y: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rows of the Lagrangian, rows of the dual step or None for the same rows).

    With ``on="decisions"`` the thresholded decisions drive the multipliers while the smooth
    rows give the gradient (proxy constraints, Cotter et al., JMLR 2019).
    """
    smooth = setup.fairness(logit, sens, y).values
    if setup.settings.on == "decisions":
        return smooth, setup.fairness.decisions(logit, sens, y).values
    return smooth, None


def select_iterate(history: Sequence[dict[str, float]]) -> int:
    """The epoch (1-based) whose model is served: the last one."""
    return len(history)


def batches(tensors: Sequence[torch.Tensor], batch_size: int, generator: torch.Generator
            ) -> Iterator[tuple[torch.Tensor, ...]]:
    """One shuffled epoch of batches (every row once, a new permutation from ``generator`` per
    epoch), sliced from the tensors at once: a ``DataLoader`` over a ``TensorDataset`` stacks
    the rows one by one, which took a third of a training step here."""
    perm = torch.randperm(len(tensors[0]), generator=generator)
    for start in range(0, len(perm), batch_size):
        idx = perm[start:start + batch_size]
        yield tuple(t[idx] for t in tensors)


def _model(d: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(d, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
        torch.nn.Linear(32, 1),
    )


def train(setup: Setup) -> Trained:
    """The default procedure (see the module docstring)."""
    s, fc = setup.settings, setup.fairness
    dev = s.device
    torch.manual_seed(s.seed)
    tr, va = setup.data.train, setup.data.val
    model = _model(tr.X.shape[1]).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    dual = make_dual(setup.algorithm, fc.m, s.dual_lr)
    proj = None
    if setup.algorithm == "projection":
        # Probabilities projected into [1e-6, 1 - 1e-6] so that the log-loss stays finite.
        proj = FairProjection(len(fc.groups.names), s.eps, bounds=(1e-6, 1 - 1e-6),
                              constraint=PROJECTABLE[s.constraint])

    def output(x: torch.Tensor, groups: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Logits; through the projection (a whole batch at once) for hard constraints."""
        logit = model(x)
        if proj is None:
            return logit
        ids = groups.argmax(-1) if groups.dim() == 2 else groups
        q, _ = proj.project(torch.sigmoid(logit).reshape(-1), ids, y.reshape(-1))
        return torch.logit(q).view_as(logit)

    bce = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(s.seed)
    tensors = (tr.X, tr.onehot(), tr.y)
    dtype = None if dual is None else dual.duals.dtype
    history: list[dict[str, float]] = []
    snapshots: list[dict[str, torch.Tensor]] = []
    diverged: str | None = None
    t0 = time.perf_counter()
    for epoch in range(1, s.epochs + 1):
        model.train()
        for x, g, y in batches(tensors, s.batch_size, generator):
            x, g, y = x.to(dev), g.to(dev), y.to(dev)
            opt.zero_grad()
            logit = output(x, g, y)
            loss = bce(logit, y)
            # One host read per batch: a NaN loss must stop the run, not reach the report.
            if not bool(torch.isfinite(loss)):
                diverged = f"the training loss became {float(loss)} in epoch {epoch}"
                break
            if dual is None:
                loss.backward()
            else:
                smooth, proxy = dual_rows(setup, logit, g, y)
                dual.forward_update(loss, smooth.to(dtype),
                                    None if proxy is None else proxy.to(dtype)).backward()
            opt.step()
            setup.on_step()
        if diverged:
            break
        row = _epoch_row(epoch, setup, output, bce, (("train", tr), ("val", va)), dual)
        history.append(row)
        snapshots.append(copy.deepcopy(model.state_dict()))
        setup.on_epoch(row)
        if not math.isfinite(row["train_loss"]):
            diverged = f"the training loss became {row['train_loss']} after epoch {epoch}"
            break
    details: dict[str, Any] = {"train_seconds": time.perf_counter() - t0}
    if dual is not None:
        details["duals"] = dict(zip(fc.names, dual.duals.tolist()))
    if diverged:
        return Trained(_no_model, len(history), None, diverged, details)
    chosen = select_iterate(history)
    model.load_state_dict(snapshots[chosen - 1])
    model.eval()

    def predict(split: Split) -> torch.Tensor:
        with torch.no_grad():
            return output(split.X.to(dev), split.groups().to(dev), split.y.to(dev)).cpu()

    return Trained(predict, len(history), chosen, None, details)


def _no_model(split: Split) -> torch.Tensor:
    raise RuntimeError("the run diverged: there is no model to serve")


def _epoch_row(epoch: int, setup: Setup, output: Callable[..., torch.Tensor],
               loss_fn: torch.nn.Module, splits: Sequence[tuple[str, Split]],
               dual: DualOptimizer | None) -> dict[str, float]:
    """One history row: loss and the gap of every constraint row per split (NaN where a row
    is undefined or the model's output is not finite), then the multipliers."""
    fc, dev = setup.fairness, setup.settings.device
    row: dict[str, float] = {"epoch": epoch}
    with torch.no_grad():
        for part, split in splits:
            y = split.y.to(dev)
            logit = output(split.X.to(dev), split.groups().to(dev), y)
            row[f"{part}_loss"] = float(loss_fn(logit, y))
            finite = bool(torch.isfinite(logit).all())
            if finite:
                rows = fc(logit, split.onehot().to(dev), y)
                gaps = torch.where(rows.active, rows.values + fc.eps, torch.nan).tolist()
            else:
                gaps = [math.nan] * fc.m
            for name, v in zip(fc.names, gaps):
                row[f"{part} gap {name}"] = v
    if dual is not None:
        for name, v in zip(fc.names, dual.duals.tolist()):
            row[f"dual {name}"] = v
    return row


#: The procedure the command line calls.
PROCEDURE: Callable[[Setup], Trained] = train
