"""The command line's training procedure: one function, replaceable as a whole or in parts.

The command line hands :func:`train` a :class:`Setup` (data, constraint, settings, two
callbacks) and gets back a :class:`Trained` (functions serving a whole split, the epoch it
chose, or why it diverged). Everything around it (checking the arguments, the output folder,
evaluating every split the same way, the report, interruptions) does not depend on how the
model was trained, so a new default changes only this module:

* :data:`PROCEDURE` is the function the command line calls; assign another
  ``Callable[[Setup], Trained]`` to replace the whole procedure;
* :func:`make_dual` is the algorithm factory (:data:`ALGORITHMS` names what the command line
  accepts);
* :func:`held_out` and :func:`dual_rows` are the dual step's source: the rows that feed the
  Lagrangian and those that drive the multipliers;
* :func:`select_iterate` picks the epoch whose model is served (every epoch's weights are kept
  until the end);
* :func:`fit_thresholds` fixes the served decisions.

The default is the recipe of ``docs/satisfaction.md``: Adam on the network descends the
Lagrangian on training batches; :class:`~humancompatible_train.dual_optim.AdaptiveDual`'s
multipliers ascend on the constraint rows of *validation* batches, aiming at ε − margin
(:class:`~humancompatible_train.dual_optim.HeldOutConstraints`, Cotter et al., ICML 2019);
the epoch served is the best one that meets ε − margin on the validation split
(:class:`~humancompatible_train.dual_optim.BestIterate`, TFCO's rule); its decisions use
per-group thresholds fitted on the validation split
(:class:`~humancompatible_train.dual_optim.GroupThresholds`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .dual_optim import (
    ALM,
    PBM,
    SSG,
    AdaptiveDual,
    BestIterate,
    DualOptimizer,
    FairProjection,
    GroupThresholds,
    HeldOutConstraints,
    PrimalDual,
    iALM,
    nuPI,
)

if TYPE_CHECKING:  # pragma: no cover
    from .datasets import DatasetSplits, Split
    from .fairness import ConstraintValues, FairnessConstraint

#: Algorithm -> (what it is, the default dual step). ``None``: no dual step to give.
ALGORITHMS: dict[str, tuple[str, float | None]] = {
    "adaptive": ("AdaptiveDual: dual ascent in units of each constraint's noise (lr 0.003)",
                 0.003),
    "nupi": ("nuPI: PI control of the multipliers (lr 0.1, kappa_p 10)", 0.1),
    "alm": ("augmented Lagrangian, ALM(lr=0.1)", 0.1),
    "alm-hpr": ("ALM with the HPR penalty 1.0, ALM(lr=0.1)", 0.1),
    "ialm": ("inexact ALM with a growing penalty, iALM(lr=1.0)", 1.0),
    "pbm": ("smoothed penalty-barrier method, PBM(lr=0.9), annealed per epoch", 0.9),
    "ssg": ("switching subgradient: the loss when feasible, else the violated row", 1.0),
    "primal-dual": ("PrimalDual(eta_0=2.0)", 2.0),
    "projection": ("FairProjection of every batch's probabilities (hard constraints)", None),
    "unconstrained": ("no constraint (the baseline)", None),
}
DEFAULT_ALGORITHM = "adaptive"
#: Constraints the projection enforces exactly (mean parity of probabilities, per label class).
PROJECTABLE = {"demographic_parity": "parity", "equalized_odds": "equalized_odds"}
#: Constraints whose decisions per-group thresholds bound (GroupThresholds: positive rates).
THRESHOLDABLE = ("demographic_parity",)
#: The safety margin of the validation-driven dual step, measured (docs/satisfaction.md): it
#: covers one standard error of the difference between validation and test gaps.
DEFAULT_MARGIN = 0.01


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
    dual_data: str = "validation"  #: "validation" or "train": the data of the dual step
    margin: float = DEFAULT_MARGIN  #: the dual step, the iterate and thresholds aim at eps - margin
    iterate: str = "best"  #: "best" (BestIterate on validation) or "last"
    thresholds: str = "validation"  #: "validation" (GroupThresholds) or "none" (p >= 0.5)


@dataclass
class Setup:
    """What a training procedure gets."""

    algorithm: str
    data: DatasetSplits
    fairness: FairnessConstraint  #: linear rows ``stat_a - stat_b - eps`` (``pairwise``)
    settings: Settings
    on_step: Callable[[], None] = lambda: None  #: after every optimizer step (progress bar)
    on_epoch: Callable[[dict[str, float]], None] = lambda row: None  #: one history row


@dataclass
class Trained:
    """What a training procedure returns.

    ``predict(split)`` gives the served model's logits for a whole split, shape ``(n, 1)``, on
    the CPU (for ``projection``, the split is projected as one batch); ``decide(split)``, when
    set, the served decisions (bool, shape ``(n,)``) where they are not ``p >= 0.5``. A
    procedure that stopped because the loss or a constraint value became non-finite sets
    ``diverged`` to the reason; the command line then reports no metric of that model.
    """

    predict: Callable[[Split], torch.Tensor]
    epochs_run: int
    selected_epoch: int | None
    diverged: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  #: extra report fields
    decide: Callable[[Split], torch.Tensor] | None = None


def make_dual(algorithm: str, m: int, dual_lr: float | None) -> DualOptimizer | None:
    """The dual optimizer of ``algorithm`` for ``m`` constraint rows (None: no dual step)."""
    lr = ALGORITHMS[algorithm][1] if dual_lr is None else dual_lr
    if algorithm == "adaptive":
        return AdaptiveDual(m=m, lr=lr, is_ineq=True)
    if algorithm == "nupi":
        return nuPI(m=m, lr=lr, is_ineq=True)
    if algorithm == "alm":
        return ALM(m=m, lr=lr, is_ineq=True)
    if algorithm == "alm-hpr":
        return ALM(m=m, lr=lr, is_ineq=True, penalty=1.0, augmentation="hpr")
    if algorithm == "ialm":
        return iALM(m=m, lr=lr, is_ineq=True)
    if algorithm == "pbm":  # inequalities by construction (multiplicative, positive duals)
        return PBM(m=m, lr=lr)
    if algorithm == "ssg":
        return SSG(m=m, lr=lr, is_ineq=True)
    if algorithm == "primal-dual":
        return PrimalDual(m=m, eta_0=lr, is_ineq=True)
    return None


def _view(setup: Setup) -> Callable[..., ConstraintValues]:
    """The rows ``--on`` constrains: of probabilities, or of thresholded decisions."""
    fc = setup.fairness
    return fc.decisions if setup.settings.on == "decisions" else fc


def held_out(setup: Setup, output: Callable[..., torch.Tensor], model: torch.nn.Module
             ) -> HeldOutConstraints | None:
    """With ``dual_data="validation"``: the validation split in shuffled batches of the
    training batch size, cycled; each call gives the ``--on`` rows there plus the margin."""
    s = setup.settings
    if s.dual_data != "validation":
        return None
    va, view = setup.data.val, _view(setup)
    order = torch.randperm(len(va), generator=torch.Generator().manual_seed(s.seed + 1))
    X, G, Y = va.X[order].to(s.device), va.onehot()[order].to(s.device), va.y[order].to(s.device)
    loader = [(X[i:i + s.batch_size], G[i:i + s.batch_size], Y[i:i + s.batch_size])
              for i in range(0, len(order), s.batch_size)]
    return HeldOutConstraints(loader, lambda x, g, y: view(output(x, g, y), g, y), model=model,
                              margin=s.margin)


def dual_rows(setup: Setup, logit: torch.Tensor, sens: torch.Tensor, y: torch.Tensor,
              source: HeldOutConstraints | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rows of the Lagrangian, rows of the dual step or None for the same rows).

    The Lagrangian always gets the smooth rows of the training batch. The dual step gets the
    rows of the next validation batch when ``source`` is given; otherwise the training
    batch's rows, of decisions with ``on="decisions"`` (proxy constraints, Cotter et al.,
    JMLR 2019), plus the margin.
    """
    s = setup.settings
    smooth = setup.fairness(logit, sens, y).values
    if source is not None:
        return smooth, source()
    proxy = setup.fairness.decisions(logit, sens, y).values if s.on == "decisions" else None
    if s.margin:
        proxy = (smooth.detach() if proxy is None else proxy) + s.margin
    return smooth, proxy


def select_iterate(history: Sequence[dict[str, float]], setup: Setup) -> int:
    """The epoch (1-based) whose model is served.

    ``iterate="best"``: TFCO's rule on the validation split (:class:`BestIterate`): among the
    epochs whose largest gap (of the ``--on`` view) is at most ε − margin, the lowest
    validation loss; if none is, the smallest gap. The unconstrained baseline takes the
    lowest validation loss. ``iterate="last"``: the last epoch.
    """
    s = setup.settings
    if s.iterate == "last":
        return len(history)
    chooser = BestIterate(tolerance=-s.margin, keep="best")
    key = "decision gap" if s.on == "decisions" else "gap"
    constrained = setup.algorithm != "unconstrained"
    for row in history:
        gaps = [row[f"val {key} {k}"] for k in setup.fairness.statistic_names]
        if not math.isfinite(row["val_loss"]) or not all(math.isfinite(g) for g in gaps):
            continue  # NaN is never fair: such an epoch is never chosen
        # The baseline has no constraint: every epoch is feasible (-1 < -margin).
        violation = max(gaps) - s.eps if constrained else -1.0
        chooser.consider(row["val_loss"], violation, step=int(row["epoch"]))
    return chooser.best().step if len(chooser) else len(history)


def fit_thresholds(setup: Setup, predict: Callable[[Split], torch.Tensor]
                   ) -> tuple[GroupThresholds | None, str]:
    """Per-group thresholds fitted on the validation split (or None), and the decision rule
    in words. They maximise validation accuracy subject to positive rates within ε − margin
    (:class:`GroupThresholds`): demographic parity only, not for the unconstrained baseline."""
    s = setup.settings
    if s.thresholds == "none":
        return None, "p >= 0.5 (--thresholds none)"
    if setup.algorithm == "unconstrained":
        return None, "p >= 0.5 (the baseline is unconstrained)"
    if s.constraint not in THRESHOLDABLE:
        return None, (f"p >= 0.5 (group thresholds bound positive-rate parity, not "
                      f"{s.constraint})")
    va = setup.data.val
    scores = torch.sigmoid(predict(va).double()).reshape(-1)
    fitted = GroupThresholds(s.eps, margin=s.margin).fit(scores, va.groups(), va.y.reshape(-1))
    return fitted, "per-group thresholds fitted on the validation split"


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
    source = None if dual is None else held_out(setup, output, model)
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
                smooth, step_rows = dual_rows(setup, logit, g, y, source)
                dual.forward_update(loss, smooth.to(dtype), None if step_rows is None
                                    else step_rows.to(dtype)).backward()
            opt.step()
            setup.on_step()
        if diverged:
            break
        if isinstance(dual, PBM):  # its penalty and dual step anneal per epoch
            dual.end_epoch()
        row = _epoch_row(epoch, setup, output, bce, (("train", tr), ("val", va)), dual)
        history.append(row)
        snapshots.append(copy.deepcopy(model.state_dict()))
        setup.on_epoch(row)
        if not math.isfinite(row["train_loss"]):
            diverged = f"the training loss became {row['train_loss']} after epoch {epoch}"
            break
    details: dict[str, Any] = {
        "train_seconds": time.perf_counter() - t0,
        "dual_data": None if dual is None else s.dual_data,
        "margin": s.margin,
        "iterate": s.iterate,
    }
    if dual is not None:
        details["duals"] = dict(zip(fc.names, dual.duals.tolist()))
    if diverged:
        return Trained(_no_model, len(history), None, diverged, details)
    chosen = select_iterate(history, setup)
    model.load_state_dict(snapshots[chosen - 1])
    model.eval()

    def predict(split: Split) -> torch.Tensor:
        with torch.no_grad():
            return output(split.X.to(dev), split.groups().to(dev), split.y.to(dev)).cpu()

    thresholds, rule = fit_thresholds(setup, predict)
    details["decision_rule"] = rule
    details["thresholds"] = None if thresholds is None else _thresholds_report(setup, thresholds)
    decide = None
    if thresholds is not None:
        def decide(split: Split) -> torch.Tensor:
            return thresholds.decide(torch.sigmoid(predict(split).double()), split.groups())

    return Trained(predict, len(history), chosen, None, details, decide)


def _thresholds_report(setup: Setup, fitted: GroupThresholds) -> dict[str, Any]:
    """The thresholds on probabilities per group (``"+inf"``: nobody positive; ``"-inf"``:
    everybody) and the positive rates they give on the validation split."""
    names = list(setup.fairness.groups.names)
    values = [t if math.isfinite(t) else ("+inf" if t > 0 else "-inf")
              for t in fitted.thresholds.tolist()]
    return {"fitted_on": "validation", "eps": fitted.eps, "margin": fitted.margin,
            "by_group": dict(zip(names, values)),
            "validation_positive_rates": dict(zip(names, fitted.rates.tolist()))}


def _no_model(split: Split) -> torch.Tensor:
    raise RuntimeError("the run diverged: there is no model to serve")


def largest_gaps(rows: ConstraintValues) -> list[float]:
    """Per stacked statistic, the largest difference between groups (NaN if a group's
    statistic is undefined)."""
    stats, defined = rows.statistics, rows.defined
    gaps = (stats.amax(-1) - stats.amin(-1)).double()
    return torch.where(defined.all(-1), gaps, torch.nan).tolist()


def _epoch_row(epoch: int, setup: Setup, output: Callable[..., torch.Tensor],
               loss_fn: torch.nn.Module, splits: Sequence[tuple[str, Split]],
               dual: DualOptimizer | None) -> dict[str, float]:
    """One history row: loss and the largest gap of every statistic, on probabilities and on
    decisions, per split (NaN where undefined or the model's output is not finite), then the
    multipliers."""
    fc, dev = setup.fairness, setup.settings.device
    row: dict[str, float] = {"epoch": epoch}
    with torch.no_grad():
        for part, split in splits:
            y = split.y.to(dev)
            logit = output(split.X.to(dev), split.groups().to(dev), y)
            row[f"{part}_loss"] = float(loss_fn(logit, y))
            finite = bool(torch.isfinite(logit).all())
            groups = split.onehot().to(dev)
            for key, view in (("gap", fc), ("decision gap", fc.decisions)):
                gaps = largest_gaps(view(logit, groups, y)) if finite else \
                    [math.nan] * len(fc.statistic_names)
                for name, v in zip(fc.statistic_names, gaps):
                    row[f"{part} {key} {name}"] = v
    if dual is not None:
        for name, v in zip(fc.names, dual.duals.tolist()):
            row[f"dual {name}"] = v
    return row


#: The procedure the command line calls.
PROCEDURE: Callable[[Setup], Trained] = train
