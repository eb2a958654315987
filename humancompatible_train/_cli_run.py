"""One run of the command line, after every check: train each algorithm, evaluate it on every
split, write the outputs; and what happens when a run does not finish.

* Ctrl-C or SIGTERM while training or drawing the plots: the temporary files are dropped and
  ``report.json`` says ``"status": "interrupted"`` (with what was finished), beside the history
  of the epochs that ran; exit 130 / 143.
* A signal during the final renames (milliseconds) is held until they are done.
* An unexpected error: ``report.json`` says ``"status": "failed"`` and the error; exit 1.
* A model whose loss or outputs became non-finite: its metrics are ``null``, ``meets_eps`` is
  false, the report's status is ``"diverged"``; exit 3.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from . import __version__
from . import _cli_report as report
from . import _cli_train as training

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from .datasets import DatasetSplits
    from .fairness import FairnessConstraint

logger = logging.getLogger("humancompatible_train")

EXIT_DIVERGED = 3


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or a held SIGINT): the run stops and exits with 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(exc: KeyboardInterrupt) -> int:
    return 128 + getattr(exc, "signum", signal.SIGINT)


@contextlib.contextmanager
def signals(defer: bool = False) -> Iterator[None]:
    """SIGTERM raises :class:`Interrupted` as Ctrl-C raises KeyboardInterrupt; with ``defer``
    both are held until the block ends, then raised. Main thread only (elsewhere a signal
    cannot be handled, and the block runs as is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if not defer:
            raise Interrupted(signum)
        pending.append(signum)

    sigs = (signal.SIGINT, signal.SIGTERM) if defer else (signal.SIGTERM,)
    previous = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if pending:
        raise Interrupted(pending[0])


class Session:
    """Runs the algorithms of one command and writes what it got."""

    def __init__(self, args: argparse.Namespace, data: DatasetSplits, fc: FairnessConstraint,
                 settings: training.Settings, algorithms: list[str],
                 out: report.OutputFolder) -> None:
        self.args, self.data, self.fc, self.settings = args, data, fc, settings
        self.algorithms, self.out = algorithms, out
        self.results: dict[str, dict[str, Any]] = {}
        self.histories: list[tuple[str, list[dict[str, float]]]] = []
        self.scores: dict[str, torch.Tensor] = {}
        self.doing: dict[str, Any] = {"phase": "training"}
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------------------ run
    def run(self) -> int:
        if self.args.overwrite:
            self.out.clear()
        try:
            self._train_all()
            self.doing = {"phase": "writing the outputs"}
            diverged = [a for a, r in self.results.items() if r["status"] == "diverged"]
            status = "diverged" if diverged else "complete"
            self._stage_all(status)
        except KeyboardInterrupt as exc:
            code = exit_status(exc)
            self._finish_early("interrupted", {"signal": signal.Signals(code - 128).name,
                                               "during": self.doing})
            logger.warning("interrupted by %s during %s; %s/report.json says so",
                           signal.Signals(code - 128).name, self._doing_text(), self.out.path)
            return code
        except Exception as exc:
            with contextlib.suppress(Exception):  # the original error is what matters
                self._finish_early("failed", {"error": f"{type(exc).__name__}: {exc}",
                                              "during": self.doing})
            raise
        try:
            with signals(defer=True):
                files = self.out.commit()
        except KeyboardInterrupt as exc:
            logger.warning("stopped by %s after the outputs were complete",
                           signal.Signals(exit_status(exc) - 128).name)
            return exit_status(exc)
        self._summary(files)
        if diverged:
            logger.warning("diverged: %s (their metrics are null; see report.json)",
                           ", ".join(diverged))
            return EXIT_DIVERGED
        return 0

    def _train_all(self) -> None:
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        per_epoch = math.ceil(len(self.data.train) / self.settings.batch_size)
        quiet = self.args.quiet
        total = per_epoch * self.settings.epochs * len(self.algorithms)
        with contextlib.ExitStack() as stack:
            bar = stack.enter_context(tqdm(total=total, unit="step", desc="training",
                                           disable=quiet or None, leave=False))
            if not bar.disable:  # log lines above the bar, not through it
                stack.enter_context(logging_redirect_tqdm([logging.root, logger]))
            for algorithm in self.algorithms:
                history: list[dict[str, float]] = []
                self.histories.append((algorithm, history))
                self.doing = {"phase": "training", "algorithm": algorithm, "epochs_done": 0}

                def on_epoch(row: dict[str, float], algorithm: str = algorithm,
                             history: list[dict[str, float]] = history) -> None:
                    history.append(row)
                    self.doing["epochs_done"] = len(history)
                    if not quiet:
                        self._log_epoch(algorithm, row)

                setup = training.Setup(algorithm, self.data, self.fc, self.settings,
                                       on_step=lambda: bar.update(1), on_epoch=on_epoch)
                trained = training.PROCEDURE(setup)
                self.doing = {"phase": "evaluating", "algorithm": algorithm}
                self.results[algorithm] = self._evaluate(algorithm, trained)

    def _log_epoch(self, algorithm: str, row: dict[str, float]) -> None:
        stats = self.fc.statistic_names

        def gaps(part: str) -> str:
            return " ".join(f"{row.get(f'{part} gap {k}', math.nan):.4f}" for k in stats)

        duals = [row[f"dual {n}"] for n in self.fc.names if f"dual {n}" in row]
        logger.info("[%s] epoch %d  loss %.4f  gap train %s  validation %s (eps %g)%s",
                    algorithm, row["epoch"], row["train_loss"], gaps("train"), gaps("val"),
                    self.fc.eps, "  duals " + " ".join(f"{v:.3f}" for v in duals) if duals
                    else "")

    def _evaluate(self, algorithm: str, trained: training.Trained) -> dict[str, Any]:
        splits = dict(zip(report.SPLITS, (self.data.train, self.data.val, self.data.test)))
        evaluated: dict[str, Any] = {}
        for name, split in splits.items():
            logit = None if trained.diverged else trained.predict(split)
            decisions = None
            if logit is not None and trained.decide is not None and \
                    bool(torch.isfinite(logit).all()):
                decisions = trained.decide(split)
            if name == "test" and logit is not None:
                self.scores[algorithm] = torch.sigmoid(logit).reshape(-1)
            evaluated[name] = report.evaluate(self.fc, logit, split, decisions)
        if not trained.diverged:
            bad = [n for n, e in evaluated.items() if e["accuracy"] is None]
            if bad:  # finite loss but non-finite outputs: still no fair model
                trained.diverged = f"non-finite outputs on the {', '.join(bad)} split(s)"
        view = self.settings.on
        test = evaluated["test"]
        return {
            "status": "diverged" if trained.diverged else "complete",
            "diverged": trained.diverged,
            "epochs_trained": trained.epochs_run,
            "selected_epoch": trained.selected_epoch,  # the epoch whose model is served
            **trained.details,
            # The test split in short (what a user reads first), then every split in full.
            "accuracy": test["accuracy"],
            "max_gap": test["gap"][view],
            "meets_eps": test["meets_eps"][view],
            "p_rule": test["p_rule"],
            "splits": evaluated,
        }

    # --------------------------------------------------------------------------- writing
    def _report(self, status: str, **extra: Any) -> dict[str, Any]:
        args, data = self.args, self.data
        results = {a: {**r, "splits": {s: {k: v for k, v in e.items() if k != "text"}
                                       for s, e in r["splits"].items()}}
                   for a, r in self.results.items()}
        return {
            "status": status,
            **extra,
            "settings": {k: v for k, v in vars(args).items()},
            "versions": {"humancompatible_train": __version__, "torch": torch.__version__,
                         "python": platform.python_version()},
            "threads": torch.get_num_threads(),
            "data": {"name": data.name, "target": data.target, "positive": data.positive,
                     "sensitive": data.sensitive[0], "groups": list(self.fc.groups.names),
                     "rows": {s: len(p) for s, p in zip(report.SPLITS,
                                                        (data.train, data.val, data.test))}},
            "constraint": {"name": args.constraint, "on": args.on, "eps": args.eps,
                           "rows": self.fc.names,
                           "gap": "largest difference between groups of the statistic"},
            "algorithms": self.algorithms,
            "results": results,
            "seconds": time.perf_counter() - self.t0,
        }

    def _stage_all(self, status: str) -> None:
        self.out.write_text("history.csv", report.history_csv(self.histories))
        if not self.args.no_plots:
            self._stage_plots()
        files = sorted([*self.out, "report.json"])
        self.out.write_text("report.json", report.to_json(self._report(status, files=files)))

    def _stage_plots(self) -> None:
        try:
            from .plotting import plot_group_distributions, plot_tradeoff, plot_training_history
        except ImportError as exc:  # matplotlib missing: keep the numbers, say why
            logger.warning("plots skipped: %s", exc)
            return
        eps, test = self.args.eps, self.data.test
        for algorithm, history in self.histories:
            if history and (algorithm != "unconstrained" or len(self.histories) == 1):
                plot_training_history(history, eps=eps, title=algorithm,
                                      save_path=self.out.stage(f"history_{algorithm}.png"))
            if algorithm in self.scores:
                plot_group_distributions(
                    self.scores[algorithm].numpy(), test.groups().numpy(),
                    group_names=list(self.fc.groups.names),
                    title=f"{algorithm}: test scores by group",
                    save_path=self.out.stage(f"groups_{algorithm}.png"))
        points = [{"method": a, "label": a, "gap": r["max_gap"], "accuracy": r["accuracy"]}
                  for a, r in self.results.items() if r["max_gap"] is not None]
        if points:
            plot_tradeoff(points, eps=eps, title=f"test accuracy against {self.args.constraint} "
                          f"gap ({self.args.on})", save_path=self.out.stage("tradeoff.png"))

    def _finish_early(self, status: str, extra: dict[str, Any]) -> None:
        """The report of a run that did not finish: what was finished, and where it stopped."""
        self.out.discard()
        with signals(defer=True):
            finished = list(self.results)
            extra = {**extra, "finished": finished,
                     "not_finished": [a for a in self.algorithms if a not in finished]}
            self.out.write_text("history.csv", report.history_csv(self.histories))
            self.out.write_text("report.json", report.to_json(self._report(
                status, **{status: extra}, files=["history.csv", "report.json"])))
            self.out.commit()

    def _doing_text(self) -> str:
        d = self.doing
        if "algorithm" in d:
            more = f", {d['epochs_done']} epoch(s) done" if "epochs_done" in d else ""
            return f"{d['phase']} {d['algorithm']}{more}"
        return d["phase"]

    def _summary(self, files: list[str]) -> None:
        logger.info("\n%s", report.table(self.results, self.args.eps))
        for algorithm, r in self.results.items():
            if r["status"] == "complete":
                logger.info("\n[%s] per group on the test split (epoch %s served):\n%s",
                            algorithm, r["selected_epoch"], r["splits"]["test"]["text"])
        logger.info("written to %s: %s", self.out.path, ", ".join(files))
