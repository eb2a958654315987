"""The command line: ``humancompatible-train`` / ``python -m humancompatible_train``.

``train`` fits a model under a fairness constraint beside an unconstrained baseline (same split,
seed and network) and reports per-group metrics on the test split; ``compare`` trains several
algorithms and prints one table. Both write ``report.json``, ``history.csv`` and PNG plots to
``--out``. Bad arguments print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .dual_optim import ALM, DualOptimizer, PrimalDual

logger = logging.getLogger("humancompatible_train")

CONSTRAINTS = {
    "demographic_parity": "PositiveRate",
    "equal_opportunity": "TruePositiveRate",
    "equalized_odds": "TruePositiveRate+FalsePositiveRate",
    "predictive_parity": "PositivePredictiveValue",
    "accuracy_parity": "Accuracy",
}
#: Algorithms and the settings the README recommends (the dual step is --dual-lr when given).
ALGORITHMS: dict[str, Callable[[int, float | None], DualOptimizer | None]] = {
    "alm": lambda m, lr: ALM(m=m, lr=0.3 if lr is None else lr, is_ineq=True),
    "alm-hpr": lambda m, lr: ALM(m=m, lr=0.3 if lr is None else lr, is_ineq=True,
                                 penalty=1.0, augmentation="hpr"),
    "primal-dual": lambda m, lr: PrimalDual(m=m, eta_0=2.0 if lr is None else lr,
                                            is_ineq=True),
    "unconstrained": lambda m, lr: None,
    # Hard constraints: the exact per-batch projection of the probabilities (built in
    # _train_one, it needs the groups and the statistic rather than a constraint count).
    "projection": lambda m, lr: None,
}
#: Constraints the projection enforces exactly (mean parity of probabilities, per label class).
_PROJECTABLE = {"demographic_parity": "parity", "equalized_odds": "equalized_odds"}


class UsageError(Exception):
    """A bad argument: reported in one line, exit status 2."""


@dataclass
class RunResult:
    algorithm: str
    history: list[dict[str, float]] = field(default_factory=list)
    test: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--data", default="adult",
                        help="adult, dutch, or the path of a CSV/Parquet file (default adult)")
    common.add_argument("--target", default=None,
                        help="target column (CSV files; the bundled data know theirs)")
    common.add_argument("--positive", default=None, help="positive target value (CSV files)")
    common.add_argument("--sensitive", default=None, nargs="+",
                        help="sensitive column(s); several make intersectional groups "
                             "(default sex)")
    common.add_argument("--constraint", default="demographic_parity",
                        help=f"one of {sorted(CONSTRAINTS)} (default demographic_parity)")
    common.add_argument("--on", default="probabilities", choices=["probabilities", "decisions"],
                        help="constrain the statistic of probabilities, or of thresholded "
                             "decisions (proxy: decisions drive the dual step)")
    common.add_argument("--eps", type=float, default=0.05, help="tolerance (default 0.05)")
    common.add_argument("--epochs", type=int, default=10)
    common.add_argument("--batch-size", type=int, default=256)
    common.add_argument("--lr", type=float, default=1e-3, help="Adam step of the model")
    common.add_argument("--dual-lr", type=float, default=None,
                        help="dual step (default: the recommended one of each algorithm)")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--device", default="cpu")
    common.add_argument("--max-rows", type=int, default=None,
                        help="use a stratified sample of this many rows (quick runs)")
    common.add_argument("--out", default=None,
                        help="output folder (default runs/<data>-<constraint>-<time>)")
    common.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    common.add_argument("--quiet", action="store_true", help="no progress bar")

    p = _Parser(
        prog="humancompatible-train",
        description="Train PyTorch models under fairness constraints and report per group.",
    )
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    t = sub.add_parser("train", parents=[common], help="train one algorithm beside a baseline")
    t.add_argument("--algorithm", default="alm", help=f"one of {sorted(ALGORITHMS)}")
    c = sub.add_parser("compare", parents=[common], help="train several algorithms")
    c.add_argument("--algorithms", nargs="+", default=["unconstrained", "alm", "primal-dual"],
                   help=f"some of {sorted(ALGORITHMS)}")
    return p


def _load(args: argparse.Namespace):
    from .datasets import load_adult, load_csv, load_dutch

    kw: dict[str, Any] = {"seed": args.seed, "max_rows": args.max_rows}
    if args.sensitive:
        kw["sensitive"] = args.sensitive
    if args.data in ("adult", "dutch"):
        if args.target is not None:
            raise UsageError(f"--target is fixed for the bundled {args.data} data")
        return (load_adult if args.data == "adult" else load_dutch)(**kw)
    if not os.path.exists(args.data):
        raise UsageError(f"--data: expected 'adult', 'dutch' or an existing file, "
                         f"got {args.data!r}")
    if args.target is None or not args.sensitive:
        raise UsageError("--data PATH needs --target and --sensitive")
    return load_csv(args.data, target=args.target, positive=args.positive, **kw)


def _validate(args: argparse.Namespace, algorithms: Sequence[str]) -> None:
    if args.constraint not in CONSTRAINTS:
        raise UsageError(f"--constraint: expected one of {sorted(CONSTRAINTS)}, "
                         f"got {args.constraint!r}")
    if not (math.isfinite(args.eps) and 0 <= args.eps < 1):
        raise UsageError(f"--eps: expected a number in [0, 1), got {args.eps}")
    for a in algorithms:
        if a not in ALGORITHMS:
            raise UsageError(f"--algorithm: expected one of {sorted(ALGORITHMS)}, got {a!r}")
        if a == "projection" and args.constraint not in _PROJECTABLE:
            raise UsageError(f"--algorithm projection enforces {sorted(_PROJECTABLE)} on "
                             f"probabilities, not {args.constraint!r}")
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: expected a positive int, "
                             f"got {getattr(args, name)}")
    if not args.lr > 0:
        raise UsageError(f"--lr: expected a positive number, got {args.lr}")
    try:
        torch.empty(0, device=args.device)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--device: {args.device!r} is not available ({exc})") from None


class Fairness:
    """The run's constraint rows (from :mod:`humancompatible_train.fairness`) and its report."""

    def __init__(self, constraint: str, on: str, eps: float, group_names: Sequence[str]):
        from .fairness import FairnessConstraint

        mode = "abs_diff" if len(group_names) == 2 else "max_gap"
        self.spec = FairnessConstraint(CONSTRAINTS[constraint], list(group_names), mode=mode,
                                       eps=eps)
        self.on = on
        self.eps = eps
        self.names = self.spec.names
        self.group_names = list(group_names)

    @property
    def m(self) -> int:
        return self.spec.m

    def values(self, logit: torch.Tensor, sens: torch.Tensor, y: torch.Tensor):
        """(rows for the Lagrangian, rows for the dual step or None)."""
        smooth = self.spec(logit, sens, y).values
        if self.on == "decisions":
            return smooth, self.spec.decisions(logit, sens, y).values
        return smooth, None

    def report(self, logit: torch.Tensor, groups: torch.Tensor, y: torch.Tensor) -> dict:
        from .fairness import GroupMetrics

        metrics = GroupMetrics(self.group_names, scores="logits")
        metrics.update(logit, groups, y)
        rep = metrics.compute()
        # The constrained statistic, on probabilities and on decisions.
        stats = self.spec(logit, groups, y)
        gap_prob = float(stats.values.max()) + self.eps
        gap_dec = float(self.spec.decisions(logit, groups, y).values.max()) + self.eps
        return {
            "accuracy": rep.overall["accuracy"],
            "max_gap": gap_prob if self.on == "probabilities" else gap_dec,
            "gap_probabilities": gap_prob,
            "gap_decisions": gap_dec,
            "meets_eps": (gap_prob if self.on == "probabilities" else gap_dec) <= self.eps,
            "p_rule": rep.p_rule,
            "metrics": rep.to_dict(),
            "text": str(rep),
        }


def _train_one(algorithm: str, data, fair: Fairness, args, progress) -> RunResult:
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    tr, va, te = data.train, data.val, data.test
    model = torch.nn.Sequential(
        torch.nn.Linear(tr.X.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 32),
        torch.nn.ReLU(), torch.nn.Linear(32, 1),
    ).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    dual = ALGORITHMS[algorithm](fair.m, args.dual_lr)
    proj = None
    if algorithm == "projection":
        from .dual_optim import FairProjection

        # Probabilities projected into [1e-6, 1 - 1e-6] so that the log-loss stays finite.
        proj = FairProjection(len(fair.group_names), args.eps, bounds=(1e-6, 1 - 1e-6),
                              constraint=_PROJECTABLE[args.constraint])

    def output(x: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Logits; through the projection (a whole batch at once) for hard constraints."""
        logit = model(x)
        if proj is None:
            return logit
        q, _ = proj.project(torch.sigmoid(logit).reshape(-1), s.argmax(-1) if s.dim() == 2
                            else s, y.reshape(-1))
        return torch.logit(q).view_as(logit)

    bce = torch.nn.BCEWithLogitsLoss()
    loader = torch.utils.data.DataLoader(tr.tensor_dataset(), batch_size=args.batch_size,
                                         shuffle=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    result = RunResult(algorithm)
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        for x, s, y in loader:
            x, s, y = x.to(dev), s.to(dev), y.to(dev)
            opt.zero_grad()
            logit = output(x, s, y)
            loss = bce(logit, y)
            if dual is None:
                loss.backward()
            else:
                smooth, proxy = fair.values(logit, s, y)
                dual.forward_update(loss, smooth.to(dual.duals.dtype),
                                    None if proxy is None else proxy.to(dual.duals.dtype)
                                    ).backward()
            opt.step()
            progress.update(1)
        model.eval()
        with torch.no_grad():
            row: dict[str, float] = {"epoch": epoch}
            for part, split in (("train", tr), ("val", va)):
                logit = output(split.X.to(dev), split.groups().to(dev), split.y.to(dev))
                row[f"{part}_loss"] = float(bce(logit, split.y.to(dev)))
                vals, _ = fair.values(logit, split.onehot().to(dev), split.y.to(dev))
                for name, v in zip(fair.names, vals.reshape(-1).tolist()):
                    row[f"{part} gap {name}"] = v + fair.eps  # the row is gap - eps
            if dual is not None:
                for name, v in zip(fair.names, dual.duals.tolist()):
                    row[f"dual {name}"] = v
        result.history.append(row)
        gaps = [row[f"train gap {n}"] for n in fair.names]
        logger.info("[%s] epoch %d  loss %.4f  max gap %.4f (eps %.3f)%s", algorithm, epoch,
                    row["train_loss"], max(gaps), fair.eps,
                    "" if dual is None else "  duals " + " ".join(
                        f"{v:.3f}" for v in dual.duals.tolist()))
    result.seconds = time.perf_counter() - t0
    with torch.no_grad():
        # The test split is served as one large batch (projected when training was).
        logit = output(te.X.to(dev), te.groups().to(dev), te.y.to(dev)).cpu()
    result.test = fair.report(logit, te.groups(), te.y)
    result.test["train_gap"] = max(result.history[-1][f"train gap {n}"] for n in fair.names)
    result.test["scores"] = torch.sigmoid(logit).reshape(-1)
    return result


def _write(out: Path, args, data, fair: Fairness, runs: list[RunResult], plots: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items()}
    report = {
        "settings": settings,
        "versions": {"humancompatible_train": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "data": {"name": getattr(data, "name", str(args.data)), "train": len(data.train.y),
                 "val": len(data.val.y), "test": len(data.test.y),
                 "groups": fair.group_names},
        "constraint": {"name": args.constraint, "on": args.on, "eps": args.eps,
                       "rows": fair.names},
        "results": {r.algorithm: {k: v for k, v in r.test.items() if k != "scores"}
                    | {"train_seconds": r.seconds} for r in runs},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    keys: list[str] = []
    for r in runs:
        for row in r.history:
            keys += [k for k in row if k not in keys]
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["algorithm", *keys])
        w.writeheader()
        for r in runs:
            for row in r.history:
                w.writerow({"algorithm": r.algorithm, **row})
    if not plots:
        return
    try:
        from .plotting import plot_group_distributions, plot_tradeoff, plot_training_history
    except ImportError as exc:  # matplotlib missing: keep the numbers, say why
        logger.warning("plots skipped: %s", exc)
        return
    for r in runs:
        if r.algorithm != "unconstrained" or len(runs) == 1:
            plot_training_history(r.history, eps=args.eps, title=f"{r.algorithm}",
                                  save_path=out / f"history_{r.algorithm}.png")
        plot_group_distributions(r.test["scores"].numpy(), data.test.groups().numpy(),
                                 group_names=fair.group_names,
                                 title=f"{r.algorithm}: test scores by group",
                                 save_path=out / f"groups_{r.algorithm}.png")
    plot_tradeoff([{"method": r.algorithm, "label": r.algorithm, "gap": r.test["max_gap"],
                    "accuracy": r.test["accuracy"]} for r in runs], eps=args.eps,
                  title=f"test accuracy against {args.constraint} gap",
                  save_path=out / "tradeoff.png")


def _table(runs: list[RunResult], eps: float) -> str:
    head = (f"{'algorithm':16s} {'test acc':>9s} {'train gap':>10s} {'test gap':>9s} "
            f"{'p%-rule':>8s} {'eps met (train/test)':>21s}")
    lines = [head, "-" * len(head)]
    for r in runs:
        t = r.test
        train_gap = r.test["train_gap"]
        met = f"{'yes' if train_gap <= eps else 'no'}/{'yes' if t['max_gap'] <= eps else 'no'}"
        lines.append(f"{r.algorithm:16s} {t['accuracy']:9.4f} {train_gap:10.4f} "
                     f"{t['max_gap']:9.4f} {t['p_rule']:8.3f} {met:>21s}")
    return "\n".join(lines)


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv if argv is None or argv else ["train"])
    if args.command is None:
        args = _parser().parse_args(["train", *(argv or [])])
    algorithms = ([args.algorithm, "unconstrained"] if args.command == "train"
                  and args.algorithm != "unconstrained" else
                  [args.algorithm] if args.command == "train" else list(args.algorithms))
    _validate(args, algorithms)
    data = _load(args)
    attrs = data.sensitive
    group_names = list(data.group_names[attrs[0]]) if len(attrs) == 1 else None
    if group_names is None:
        raise UsageError("--sensitive: several attributes are not supported by the command "
                         "line yet; pass one")
    fair = Fairness(args.constraint, args.on, args.eps, group_names)
    out = Path(args.out or f"runs/{Path(str(args.data)).stem}-{args.constraint}-"
                           f"{time.strftime('%Y%m%d-%H%M%S')}")
    steps = math.ceil(len(data.train.y) / args.batch_size) * args.epochs * len(algorithms)
    from tqdm.auto import tqdm

    runs: list[RunResult] = []
    with tqdm(total=steps, disable=args.quiet or not sys.stderr.isatty(), unit="step",
              desc="training") as progress:
        try:
            for a in algorithms:
                runs.append(_train_one(a, data, fair, args, progress))
        except KeyboardInterrupt:
            logger.warning("interrupted: writing what was trained so far to %s", out)
            if runs:
                _write(out, args, data, fair, runs, plots=not args.no_plots)
            return 130
    _write(out, args, data, fair, runs, plots=not args.no_plots)
    logger.info("\n%s", _table(runs, args.eps))
    for r in runs:
        logger.info("\n[%s] per group on the test split:\n%s", r.algorithm, r.test["text"])
    logger.info("written to %s", out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        sys.stderr.write(f"humancompatible-train: error: {exc}\n")
        return 2
    except (ValueError, FileNotFoundError, KeyError) as exc:
        # The loaders' messages name the column and what was found.
        sys.stderr.write(f"humancompatible-train: error: {exc}\n")
        return 2
