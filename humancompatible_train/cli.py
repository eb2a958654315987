"""The command line: ``humancompatible-train`` / ``python -m humancompatible_train``.

``train`` fits a model under a fairness constraint beside an unconstrained baseline (same split,
seed and network) and reports, for the train, validation and test splits, the gap on
probabilities and on decisions and whether each meets ε; ``compare`` trains several algorithms.
Both write ``report.json``, ``history.csv`` and PNG plots to ``--out``.

The command line fails before the work, not after: every argument, the data and the output folder
are checked before training. Exit status: 0 complete; 1 an unexpected error (one line; the
traceback with ``--debug`` or ``HUMANCOMPATIBLE_TRAIN_DEBUG=1``); 2 a bad argument or input file
(one line, nothing trained); 3 a model diverged (the report says which); 130 Ctrl-C and 143
SIGTERM (the report says ``"status": "interrupted"``).

How the model is trained lives in :mod:`humancompatible_train._cli_train` (one replaceable
procedure); what is measured and written, in :mod:`humancompatible_train._cli_report`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from . import __version__
from . import _cli_report as report
from . import _cli_train as training
from ._cli_run import EXIT_DIVERGED, Session, exit_status, signals
from ._validation import check_device, check_int, check_real

logger = logging.getLogger("humancompatible_train")

CONSTRAINTS = {
    "demographic_parity": "PositiveRate",
    "equal_opportunity": "TruePositiveRate",
    "equalized_odds": "TruePositiveRate+FalsePositiveRate",
    "predictive_parity": "PositivePredictiveValue",
    "accuracy_parity": "Accuracy",
}
BUNDLED = {"adult": ("sex", "race"), "dutch": ("sex", "age")}
#: Threads of the default run: measured on a 2-core machine, one thread is fastest for these
#: small networks (docs/cli.md, "Threads").
DEFAULT_THREADS = 1
DEBUG_ENV = "HUMANCOMPATIBLE_TRAIN_DEBUG"
EXIT_ERROR, EXIT_USAGE = 1, 2
__all__ = ["EXIT_DIVERGED", "EXIT_ERROR", "EXIT_USAGE", "UsageError", "main", "parse", "run"]


class UsageError(Exception):
    """A bad argument or input: reported in one line, exit status 2."""


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
                        help="sensitive column (default sex for the bundled data)")
    common.add_argument("--encoding", default="utf-8",
                        help="text encoding of a CSV file, e.g. latin-1 (default utf-8)")
    common.add_argument("--constraint", default="demographic_parity",
                        help=f"one of {sorted(CONSTRAINTS)} (default demographic_parity)")
    common.add_argument("--on", default="probabilities", choices=["probabilities", "decisions"],
                        help="constrain the statistic of probabilities, or of thresholded "
                             "decisions (proxy: decisions drive the dual step)")
    common.add_argument("--eps", type=float, default=0.05, help="tolerance (default 0.05)")
    common.add_argument("--epochs", type=int, default=10, help="(default 10)")
    common.add_argument("--batch-size", type=int, default=256, help="(default 256)")
    common.add_argument("--lr", type=float, default=1e-3, help="Adam step of the model (1e-3)")
    common.add_argument("--dual-lr", type=float, default=None,
                        help="dual step (default: the recommended one of each algorithm)")
    common.add_argument("--dual-data", default="validation", choices=["validation", "train"],
                        help="the batches whose constraint rows drive the multipliers: "
                             "validation (default; the model descends on training batches) or "
                             "the training batches themselves")
    common.add_argument("--margin", type=float, default=None,
                        help="safety margin: the dual step, the choice of the epoch and the "
                             "decision thresholds aim at eps - margin (default "
                             f"min({training.DEFAULT_MARGIN:g}, eps / 2))")
    common.add_argument("--iterate", default="best", choices=["best", "last"],
                        help="the epoch served: the best one meeting eps - margin on the "
                             "validation split (default) or the last")
    common.add_argument("--thresholds", default="validation", choices=["validation", "none"],
                        help="decisions: per-group thresholds fitted on the validation split "
                             "(default; demographic parity) or p >= 0.5 for every group")
    common.add_argument("--seed", type=int, default=0, help="(default 0)")
    common.add_argument("--device", default="cpu", help="(default cpu)")
    common.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"CPU threads of torch (default {DEFAULT_THREADS}: fastest for "
                             "these small networks)")
    common.add_argument("--max-rows", type=int, default=None,
                        help="use a stratified sample of this many rows (quick runs)")
    common.add_argument("--out", default=None,
                        help="output folder (default runs/<data>-<constraint>-<time>); "
                             "must be new or empty unless --overwrite")
    common.add_argument("--overwrite", action="store_true",
                        help="reuse a non-empty --out: replace an earlier run's outputs there")
    common.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    common.add_argument("--quiet", action="store_true",
                        help="no progress bar and no per-epoch lines")
    common.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an unexpected error (or {DEBUG_ENV}=1)")

    p = _Parser(
        prog="humancompatible-train",
        description="Train PyTorch models under fairness constraints and report per group. "
                    "Without a subcommand, options go to 'train'.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    t = sub.add_parser("train", parents=[common], help="train one algorithm beside a baseline")
    t.add_argument("--algorithm", default=training.DEFAULT_ALGORITHM,
                   help=f"one of {list(training.ALGORITHMS)} (default "
                        f"{training.DEFAULT_ALGORITHM})")
    c = sub.add_parser("compare", parents=[common], help="train several algorithms")
    c.add_argument("--algorithms", nargs="+",
                   default=["unconstrained", training.DEFAULT_ALGORITHM, "alm"],
                   help=f"some of {list(training.ALGORITHMS)}, each once")
    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse; options without a subcommand go to ``train``."""
    argv = list(argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["train", *argv]
    return _parser().parse_args(argv)


def _usage(exc: ValueError) -> UsageError:
    return UsageError(str(exc))


def _check(args: argparse.Namespace) -> list[str]:
    """Check every argument (nothing is read or trained yet); returns the algorithms to run."""
    from .datasets._read import check_encoding

    if args.command == "train":
        algorithms = [args.algorithm] + ([] if args.algorithm == "unconstrained"
                                         else ["unconstrained"])
    else:
        algorithms = list(args.algorithms)
    option = "--algorithm" if args.command == "train" else "--algorithms"
    for a in algorithms:
        if a not in training.ALGORITHMS:
            raise UsageError(f"{option}: expected one of {list(training.ALGORITHMS)}, got {a!r}")
    twice = sorted({a for a in algorithms if algorithms.count(a) > 1})
    if twice:
        raise UsageError(f"{option}: each algorithm trains once; {twice} given more than once")
    if args.constraint not in CONSTRAINTS:
        raise UsageError(f"--constraint: expected one of {sorted(CONSTRAINTS)}, "
                         f"got {args.constraint!r}")
    if "projection" in algorithms and args.constraint not in training.PROJECTABLE:
        raise UsageError(f"--algorithm projection enforces {sorted(training.PROJECTABLE)} on "
                         f"probabilities, not {args.constraint!r}")
    try:
        check_real("--eps", args.eps, low=0.0, high=1.0, high_open=True)
        check_real("--lr", args.lr, low=0.0, low_open=True)
        if args.dual_lr is not None:
            check_real("--dual-lr", args.dual_lr, low=0.0, low_open=True)
        check_int("--epochs", args.epochs, minimum=1)
        check_int("--batch-size", args.batch_size, minimum=1)
        check_int("--seed", args.seed, minimum=0, maximum=2**32 - 1)
        check_int("--threads", args.threads, minimum=1, maximum=1024)
        if args.max_rows is not None:
            check_int("--max-rows", args.max_rows, minimum=1)
        if args.margin is None:
            args.margin = min(training.DEFAULT_MARGIN, args.eps / 2)
        check_real("--margin", args.margin, low=0.0, high=args.eps)
        device = check_device("--device", args.device)
        check_encoding(args.encoding, name="--encoding")
    except ValueError as exc:
        raise _usage(exc) from None
    if device.type == "meta":
        raise UsageError("--device: expected a device that holds data, such as 'cpu' or "
                         "'cuda', got 'meta'")
    args.device = device
    if args.out is not None and not args.out.strip():
        raise UsageError(f"--out: expected a folder path, got {args.out!r}")
    _check_data_options(args)
    return algorithms


def _check_data_options(args: argparse.Namespace) -> None:
    if args.sensitive and len(args.sensitive) > 1:
        raise UsageError(f"--sensitive: expected one column (several attributes are not "
                         f"supported by the command line yet), got {args.sensitive}")
    if args.data in BUNDLED:
        for opt in ("target", "positive"):
            if getattr(args, opt) is not None:
                raise UsageError(f"--{opt}: the bundled {args.data} data fix their target and "
                                 f"positive label; --{opt} is for CSV files")
        offered = BUNDLED[args.data]
        if args.sensitive and args.sensitive[0] not in offered:
            raise UsageError(f"--sensitive: {args.data} offers {list(offered)}, "
                             f"got {args.sensitive[0]!r}")
        return
    if not os.path.isfile(args.data):
        raise UsageError(f"--data: expected 'adult', 'dutch' or an existing file, "
                         f"got {args.data!r}")
    if args.target is None or not args.sensitive:
        raise UsageError("--data PATH needs --target and --sensitive")


#: The loaders' argument names, as the command line spells them.
_OPTIONS = {"target": "--target", "sensitive": "--sensitive", "positive": "--positive",
            "max_rows": "--max-rows", "encoding": "--encoding", "seed": "--seed"}


def _as_option(message: str) -> str:
    """A loader's message with its leading argument name spelled as the option."""
    for name, option in _OPTIONS.items():
        for sep in (":", "="):
            if message.startswith(name + sep):
                return option + sep + message[len(name) + 1:]
    return message.replace("(raise max_rows)", "(raise --max-rows)")


def _load(args: argparse.Namespace):
    """The data, checked for the report: no empty split, every group in every split."""
    from .datasets import load_adult, load_csv, load_dutch

    kw: dict[str, Any] = {"seed": args.seed, "max_rows": args.max_rows}
    if args.sensitive:
        kw["sensitive"] = args.sensitive[0]
    if args.data in BUNDLED:
        data = (load_adult if args.data == "adult" else load_dutch)(**kw)
    else:
        data = load_csv(args.data, target=args.target, positive=args.positive,
                        encoding=args.encoding, **kw)
    names = data.group_names[data.sensitive[0]]
    for split_name, split in zip(report.SPLITS, (data.train, data.val, data.test)):
        counts = torch.bincount(split.groups(), minlength=len(names)).tolist()
        absent = [g for g, c in zip(names, counts) if c == 0]
        if absent:
            hint = "raise --max-rows" if args.max_rows else "use more rows"
            raise UsageError(f"the {split_name} split ({len(split)} rows) has no rows of group(s) "
                             f"{absent}; a per-group report needs every group there ({hint})")
    return data


@contextlib.contextmanager
def _console(quiet: bool) -> Iterator[None]:
    """Log to stdout at INFO during the run when nobody configured logging (the command line's
    output channel); restore the logger after."""
    added = None
    configured = [h for h in logger.handlers if not isinstance(h, logging.NullHandler)]
    if not configured and not logging.getLogger().handlers:
        added = logging.StreamHandler(sys.stdout)
        added.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(added)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(level)
        if added is not None:
            logger.removeHandler(added)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv``; returns the exit status (errors raise)."""
    args = parse(sys.argv[1:] if argv is None else argv)
    algorithms = _check(args)
    out_path = Path(args.out or f"runs/{Path(str(args.data)).stem}-{args.constraint}-"
                                f"{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        out = report.OutputFolder(out_path, args.overwrite)
    except report.OutputError as exc:
        raise UsageError(str(exc)) from None
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with _console(args.quiet):
            return _run(args, algorithms, out)
    finally:
        torch.set_num_threads(threads)
        out.discard_if_unused()


def _run(args: argparse.Namespace, algorithms: list[str], out: report.OutputFolder) -> int:
    from .fairness import FairnessConstraint

    logger.info("humancompatible-train %s: %s on %s, %s <= %g on %s; threads %d, device %s",
                __version__, ", ".join(algorithms), args.data, args.constraint, args.eps,
                args.on, torch.get_num_threads(), args.device)
    try:
        data = _load(args)
    except (ValueError, OSError) as exc:
        raise UsageError(_as_option(str(exc))) from None
    names = list(data.group_names[data.sensitive[0]])
    # Linear rows stat_a - stat_b - eps (one per ordered pair): a batch estimates them without
    # bias, unlike |stat_a - stat_b| (docs/satisfaction.md); the report gives the largest gap.
    fc = FairnessConstraint(CONSTRAINTS[args.constraint], names, mode="pairwise", eps=args.eps)
    settings = training.Settings(args.constraint, args.on, args.eps, args.epochs,
                                 args.batch_size, args.lr, args.dual_lr, args.seed, args.device,
                                 args.dual_data, args.margin, args.iterate, args.thresholds)
    return Session(args, data, fc, settings, algorithms, out).run()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status. Never a traceback unless asked for."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        with signals():
            return run(argv)
    except UsageError as exc:
        _say(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        code = exit_status(exc)
        _say(f"interrupted by {signal.Signals(code - 128).name}")
        return code
    except Exception as exc:  # the last line of defence: one line, unless --debug
        if debug or "--debug" in (sys.argv[1:] if argv is None else argv):
            raise
        _say(f"unexpected {type(exc).__name__}: {exc} (run with --debug or {DEBUG_ENV}=1 "
             "for the traceback)")
        return EXIT_ERROR


def _say(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    sys.stderr.write(f"humancompatible-train: error: {first}\n")
