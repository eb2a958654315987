"""What the command line reports, and how it writes it.

* :func:`evaluate` measures a served model on one split, the same way whatever trained it: the
  gap of the constrained statistic on probabilities, on the served decisions (per-group
  thresholds where fitted) and on decisions at p >= 0.5, whether each meets ε, accuracy, the
  p%-rule and every per-group metric of :class:`GroupMetrics`. A
  non-finite output or an undefined statistic gives ``None`` (JSON ``null``) and
  ``meets_eps: False``: NaN is never fair.
* :class:`OutputFolder` checks ``--out`` before any work, writes every file under a temporary
  name and renames it into place, ``report.json`` last.
* :func:`to_json` writes strict RFC 8259 JSON (non-finite numbers become ``null``).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .datasets import Split
    from .fairness import ConstraintValues, FairnessConstraint

SPLITS = ("train", "validation", "test")
#: The views of every split: the statistic of probabilities, of the decisions served (per-group
#: thresholds where fitted, else p >= 0.5), and of decisions at p >= 0.5 (the same when no
#: thresholds were fitted); both decision views are reported so that each is visible.
VIEWS = ("probabilities", "decisions", "decisions_at_0.5")
#: Per-group metrics of the served decisions (the soft ones describe scores, not decisions).
_DECISION_METRICS = ("count", "positive_rate", "base_rate", "accuracy", "tpr", "fpr", "ppv")


def _gap(values: ConstraintValues) -> float | None:
    """The largest gap between groups of any stacked statistic; None if a group's statistic
    is undefined (no rows in its denominator) or not finite."""
    stats, defined = values.statistics, values.defined
    if not bool(defined.all()) or not bool(torch.isfinite(stats).all()):
        return None
    return float((stats.amax(-1) - stats.amin(-1)).amax())


def as_logits(decisions: torch.Tensor) -> torch.Tensor:
    """Float64 logits (+-30) whose decisions at p >= 0.5 are ``decisions`` exactly."""
    return torch.where(decisions.reshape(-1, 1).bool(), 30.0, -30.0).double()


def evaluate(fc: FairnessConstraint, logit: torch.Tensor | None, split: Split,
             decisions: torch.Tensor | None = None) -> dict[str, Any]:
    """The report of one split (``logit=None``: no model to serve, every metric ``None``).

    ``decisions`` are the served decisions when they are not ``p >= 0.5`` (e.g. per-group
    thresholds); ``accuracy``, ``p_rule`` and the ``decisions`` view are then theirs, and
    ``accuracy_at_0.5``, ``p_rule_at_0.5`` and ``decisions_at_0.5`` those of ``p >= 0.5``.
    """
    from .fairness import GroupMetrics

    n = len(split)
    out: dict[str, Any] = {"rows": n, "accuracy": None, "loss": None,
                           "gap": dict.fromkeys(VIEWS), "meets_eps": dict.fromkeys(VIEWS, False),
                           "p_rule": None, "accuracy_at_0.5": None, "p_rule_at_0.5": None,
                           "metrics": None, "decision_metrics": None}
    if logit is None:
        return out
    if not bool(torch.isfinite(logit).all()):
        out["non_finite_outputs"] = int((~torch.isfinite(logit)).sum())
        return out
    # float64: a gap of exactly eps (3/60 - 0/20 = 0.05) must read as met, not 0.0500000007.
    logit, groups, y = logit.double(), split.groups(), split.y.double()
    served = None if decisions is None else as_logits(decisions)
    views = {"probabilities": fc(logit, groups, y),
             "decisions_at_0.5": fc.decisions(logit, groups, y)}
    views["decisions"] = views["decisions_at_0.5"] if served is None else \
        fc.decisions(served, groups, y)
    for view in VIEWS:
        gap = _gap(views[view])
        out["gap"][view] = gap
        out["meets_eps"][view] = gap is not None and gap <= fc.eps
    names = list(fc.groups.names)
    metrics = GroupMetrics(names, scores="logits")
    metrics.update(logit, groups, y)
    rep = metrics.compute()
    out["loss"] = float(torch.nn.functional.binary_cross_entropy_with_logits(logit, y))
    out["accuracy_at_0.5"] = out["accuracy"] = rep.overall["accuracy"]
    out["p_rule_at_0.5"] = out["p_rule"] = rep.p_rule
    out["metrics"] = rep.to_dict()
    out["text"] = str(rep)
    if served is not None:
        mine = GroupMetrics(names, scores="logits")
        mine.update(served, groups, y)
        dec = mine.compute()
        out["accuracy"], out["p_rule"] = dec.overall["accuracy"], dec.p_rule
        out["decision_metrics"] = {"by_group": {m: dec.by_group[m] for m in _DECISION_METRICS},
                                   "overall": {m: dec.overall[m] for m in _DECISION_METRICS}}
        out["text"] += "\nserved decisions (per-group thresholds): " + ", ".join(
            f"positive rate {g} {r:.4f}" for g, r in zip(names, dec.by_group["positive_rate"])
        ) + f"; accuracy {dec.overall['accuracy']:.4f}; p%-rule {100 * dec.p_rule:.1f}%"
    return out


# ------------------------------------------------------------------------------------ JSON
def jsonable(obj: Any) -> Any:
    """Plain JSON values: non-finite floats -> None, tensors and tuples -> lists, paths and
    devices -> strings."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return jsonable(obj.item())
    return str(obj)


def to_json(obj: Any) -> str:
    """Strict JSON (``allow_nan=False`` would raise on a non-finite number that slipped by)."""
    return json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n"


# ------------------------------------------------------------------------------- outputs
#: Names of the files a run writes (a folder's earlier outputs are these).
_OUTPUT = re.compile(r"^(report\.json|history\.csv|tradeoff\.png|(history|groups)_[\w.-]+\.png)$")
_PARTIAL = ".partial-"


class OutputError(Exception):
    """``--out`` cannot be used (the message names it)."""


class OutputFolder:
    """The ``--out`` folder: checked before any work, written through temporary names.

    A non-empty folder is refused unless ``overwrite``; with it, the outputs of an earlier run
    (``report.json``, ``history.csv``, our PNGs; the report first) are removed when training
    starts, and other files are left alone.
    """

    def __init__(self, path: Path, overwrite: bool) -> None:
        self.path = path
        self.overwrite = overwrite
        self.created = False
        if path.exists() and not path.is_dir():
            raise OutputError(f"--out: expected a folder, got the existing file {str(path)!r}")
        if path.is_dir():
            entries = sorted(p.name for p in path.iterdir())
            if entries and not overwrite:
                raise OutputError(
                    f"--out: the folder {str(path)!r} is not empty ({len(entries)} entries, e.g. "
                    f"{entries[0]!r}); pass --overwrite to replace a run's outputs there, or "
                    f"choose another folder")
        else:
            try:
                path.mkdir(parents=True)
            except OSError as exc:
                raise OutputError(f"--out: cannot create the folder {str(path)!r} "
                                  f"({exc.strerror or exc})") from None
            self.created = True
        try:
            with tempfile.NamedTemporaryFile(dir=path, prefix=_PARTIAL + "probe-"):
                pass
        except OSError as exc:
            self.discard_if_unused()
            raise OutputError(f"--out: cannot write into {str(path)!r} "
                              f"({exc.strerror or exc})") from None
        self._staged: dict[str, Path] = {}

    def earlier_outputs(self) -> list[Path]:
        """Files of an earlier run (and temporary files a killed run left)."""
        return sorted((p for p in self.path.iterdir() if p.is_file()
                       and (_OUTPUT.match(p.name) or p.name.startswith(_PARTIAL))),
                      key=lambda p: p.name != "report.json")

    def clear(self) -> None:
        """Remove the outputs of an earlier run, the report first (never looks complete)."""
        for p in self.earlier_outputs():
            p.unlink()

    def discard_if_unused(self) -> None:
        """Remove the folder if this run created it and wrote nothing there."""
        if self.created and not any(self.path.iterdir()):
            self.path.rmdir()

    def stage(self, name: str) -> Path:
        """The temporary path to write ``name`` to (its suffix kept, for matplotlib)."""
        tmp = self.path / f"{_PARTIAL}{os.getpid()}-{name}"
        self._staged[name] = tmp
        return tmp

    def write_text(self, name: str, text: str) -> None:
        with open(self.stage(name), "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def discard(self) -> None:
        """Remove every staged file (an interrupted or failed write)."""
        for tmp in self._staged.values():
            tmp.unlink(missing_ok=True)
        self._staged.clear()

    def commit(self) -> list[str]:
        """Rename the staged files into place, ``report.json`` last; returns the names.

        Run it with signals deferred: a few renames, milliseconds.
        """
        names = sorted(self._staged, key=lambda n: n == "report.json")
        staged = set(self._staged.values())
        for stale in self.earlier_outputs():  # an earlier report goes first
            if stale not in staged:
                stale.unlink()
        for name in names:
            os.replace(self._staged[name], self.path / name)
        self._staged.clear()
        return names

    def __iter__(self) -> Iterator[str]:
        return iter(self._staged)


# --------------------------------------------------------------------------------- table
def _num(x: Any, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _met(x: bool, gap: Any) -> str:
    return "n/a" if gap is None else ("yes" if x else "no")


def table(results: Mapping[str, Mapping[str, Any]], eps: float) -> str:
    """One line per algorithm and split: accuracy, gaps and whether eps is met (probabilities,
    the served decisions, decisions at p >= 0.5), p%-rule."""
    head = (f"{'algorithm':15s} {'split':10s} {'accuracy':>8s} {'gap prob':>9s} {'met':>4s} "
            f"{'gap dec':>8s} {'met':>4s} {'p%-rule':>8s} | {'acc@0.5':>8s} {'gap@0.5':>8s} "
            f"{'met':>4s}")
    lines = [f"eps = {eps:g}; 'met': gap <= eps ('n/a': undefined); 'dec': the served "
             "decisions (per-group thresholds where fitted); '@0.5': decisions at p >= 0.5",
             head, "-" * len(head)]
    for algorithm, res in results.items():
        if res.get("status") == "diverged":
            lines.append(f"{algorithm:15s} diverged: {res.get('diverged')}")
            continue
        for i, split in enumerate(SPLITS):
            r = res["splits"][split]
            gp, gd, g5 = (r["gap"][v] for v in VIEWS)
            met = r["meets_eps"]
            lines.append(
                f"{algorithm if i == 0 else '':15s} {split:10s} {_num(r['accuracy'], '8.4f')} "
                f"{_num(gp, '9.4f')} {_met(met['probabilities'], gp):>4s} "
                f"{_num(gd, '8.4f')} {_met(met['decisions'], gd):>4s} "
                f"{_num(r['p_rule'], '8.3f')} | {_num(r['accuracy_at_0.5'], '8.4f')} "
                f"{_num(g5, '8.4f')} {_met(met['decisions_at_0.5'], g5):>4s}")
    return "\n".join(lines)


def history_csv(histories: Sequence[tuple[str, Sequence[Mapping[str, float]]]]) -> str:
    """``algorithm,epoch,...`` rows; keys in order of first appearance."""
    import csv
    import io

    keys: list[str] = []
    for _, rows in histories:
        for row in rows:
            keys += [k for k in row if k not in keys]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=["algorithm", *keys])
    w.writeheader()
    for algorithm, rows in histories:
        for row in rows:
            w.writerow({"algorithm": algorithm, **row})
    return buf.getvalue()
