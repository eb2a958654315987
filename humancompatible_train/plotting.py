"""Plots for constrained training: training history, per-group score distributions, and the
accuracy-fairness trade-off.

Every function returns a :class:`matplotlib.figure.Figure` and, given ``save_path``, also writes
it (format from the file suffix; parent folders are created). Figures are built with the
object-oriented API, not registered with ``pyplot``: in a notebook, ``display(fig)`` or ending a
cell with ``fig`` shows one; in a script, save it. matplotlib is an optional dependency
(``pip install 'humancompatible-train-toolkit[plot]'``) imported only when a function runs.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_training_history", "plot_group_distributions", "plot_tradeoff"]

logger = logging.getLogger("humancompatible_train")

_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss", "lagrangian", "objective")),
    ("constraint", ("gap", "constraint", "violation", "fairness", "disparity")),
    ("dual", ("dual", "lambda", "multiplier")),
)
_PANEL_TITLES = {
    "loss": "Loss",
    "constraint": "Constraint / fairness gap",
    "dual": "Dual variables (multipliers)",
    "metric": "Other metrics",
}
_X_KEYS = ("epoch", "step", "iteration")


def _figure_class() -> type[Figure]:
    """Import matplotlib lazily (clear ImportError naming the ``plot`` extra); Agg if headless."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "humancompatible_train.plotting needs matplotlib; install it with "
            "pip install 'humancompatible-train-toolkit[plot]' (the `plot` extra)"
        ) from exc
    headless = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if headless and "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure


def _save(fig: Figure, save_path: str | os.PathLike[str] | None, dpi: int) -> None:
    if save_path is None:
        return
    path = Path(save_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    logger.debug("saved figure to %s", path)


def _as_array(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch.Tensor
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected numbers, got {type(values).__name__}") from exc
    return arr


# ------------------------------------------------------------------------------------ history
def _history_columns(history: Any) -> dict[str, np.ndarray]:
    if isinstance(history, Mapping):
        raw = {str(k): v for k, v in history.items()}
    elif isinstance(history, Sequence) and not isinstance(history, (str, bytes)):
        keys: list[str] = []
        for i, rec in enumerate(history):
            if not isinstance(rec, Mapping):
                raise ValueError(
                    f"history: expected per-epoch mappings, entry {i} is {type(rec).__name__}"
                )
            keys.extend(str(k) for k in rec if str(k) not in keys)
        raw = {k: [rec.get(k, math.nan) for rec in history] for k in keys}
    else:
        raise ValueError(
            "history: expected a mapping {name: per-epoch values} or a list of per-epoch "
            f"mappings, got {type(history).__name__}"
        )
    if not raw:
        raise ValueError("history: no series to plot (it is empty)")
    cols: dict[str, np.ndarray] = {}
    length: int | None = None
    first = ""
    for key, values in raw.items():
        if hasattr(values, "detach"):
            arr = _as_array(values, f"history[{key!r}]")
        else:
            rows = [_as_array(v, f"history[{key!r}]").reshape(-1) for v in values]
            widths = {r.size for r in rows}
            if len(widths) > 1:
                raise ValueError(f"history[{key!r}]: entries have different sizes {sorted(widths)}")
            arr = np.stack(rows) if rows else np.empty((0, 1))
        if arr.ndim == 0:
            raise ValueError(f"history[{key!r}]: expected one value per epoch, got a scalar")
        arr = arr.reshape(arr.shape[0], -1)
        if length is None:
            length, first = arr.shape[0], key
        elif arr.shape[0] != length:
            raise ValueError(
                f"history[{key!r}] has {arr.shape[0]} entries but history[{first!r}] has "
                f"{length}; every series needs one value per epoch"
            )
        cols[key] = arr
    if length == 0:
        raise ValueError("history: the series are empty (no epochs)")
    return cols


def _panel_of(key: str) -> str:
    low = key.lower()
    for panel, words in _PANELS:
        if any(w in low for w in words):
            return panel
    return "metric"


def plot_training_history(
    history: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    eps: float | None = None,
    title: str | None = None,
    save_path: str | os.PathLike[str] | None = None,
    dpi: int = 150,
) -> Figure:
    """Plot loss, constraint values and dual variables over training.

    Args:
        history: ``{name: values per epoch}`` or a list of per-epoch ``{name: value}`` dicts (as a
            training loop records them). A value may be a vector (one line per component, e.g.
            one multiplier per constraint) and NaN where not measured. An ``epoch``/``step``
            series becomes the x axis. Series go to panels by name: ``loss``/``lagrangian`` ->
            Loss; ``gap``/``constraint``/``violation``/``fairness`` -> Constraint; ``dual``/
            ``lambda``/``multiplier`` -> Dual variables; anything else -> Other metrics.
        eps: the constraint bound; drawn as a dashed line in the constraint panel, with the
            infeasible side shaded.
        title: figure title.
        save_path: also save the figure there.
        dpi: resolution for raster formats.
    """
    figure_cls = _figure_class()
    cols = _history_columns(history)
    x_key = next((k for k in cols if k.lower() in _X_KEYS and cols[k].shape[1] == 1), None)
    length = next(iter(cols.values())).shape[0]
    x = cols.pop(x_key).reshape(-1) if x_key else np.arange(length, dtype=np.float64)
    if not cols:
        raise ValueError(f"history: only the x-axis series {x_key!r}; nothing to plot")
    panels: dict[str, list[str]] = {}
    for key in cols:
        panels.setdefault(_panel_of(key), []).append(key)
    order = [p for p in ("loss", "constraint", "dual", "metric") if p in panels]
    if eps is not None and "constraint" not in order:
        logger.warning("plot_training_history: eps given but no constraint/gap series found")

    fig = figure_cls(figsize=(7.0, 2.4 * len(order) + 0.6), layout="constrained")
    axes = fig.subplots(len(order), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, order, strict=True):
        for key in panels[panel]:
            arr = cols[key]
            for j in range(arr.shape[1]):
                label = key if arr.shape[1] == 1 else f"{key}[{j}]"
                style = "--" if key.lower().startswith(("val", "test")) else "-"
                ax.plot(x, arr[:, j], style, marker="." if length < 40 else None, label=label)
        if panel == "constraint" and eps is not None:
            ax.axhline(eps, color="crimson", ls=":", lw=1.5, label=f"ε = {eps:g}")
            ax.axhspan(
                eps,
                max(eps, np.nanmax([np.nanmax(cols[k]) for k in panels[panel]])),
                color="crimson",
                alpha=0.07,
                lw=0,
            )
        if panel == "dual":
            ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_ylabel(_PANEL_TITLES[panel].split(" (")[0])
        ax.set_title(_PANEL_TITLES[panel], fontsize="medium", loc="left")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    axes[-1].set_xlabel(x_key or "epoch")
    if title:
        fig.suptitle(title)
    _save(fig, save_path, dpi)
    return fig


# ------------------------------------------------------------------------ group distributions
def _group_ids(groups: Any, n: int) -> tuple[np.ndarray, int]:
    """Integer ids and the number of groups (the one-hot width, else the largest id + 1)."""
    arr = _as_array(groups, "groups")
    width = 0
    if arr.ndim == 2 and arr.shape[1] > 1:  # one-hot (n, G)
        width = arr.shape[1]
        if not np.allclose(arr.sum(axis=1), 1.0) or not np.isin(arr, (0.0, 1.0)).all():
            raise ValueError(
                "groups: a 2-D array must be one-hot (each row a single 1), "
                f"got shape {arr.shape} with other values"
            )
        arr = arr.argmax(axis=1)
    arr = arr.reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"groups: expected {n} entries (one per score), got {arr.shape[0]}")
    if arr.size and (np.any(arr < 0) or np.any(arr != np.round(arr))):
        raise ValueError("groups: expected non-negative integer group ids")
    ids = arr.astype(np.int64)
    return ids, max(width, int(ids.max()) + 1 if ids.size else 0)


def plot_group_distributions(
    scores: Any,
    groups: Any,
    group_names: Sequence[str] | None = None,
    *,
    labels: Any = None,
    threshold: float | None = 0.5,
    logits: bool = False,
    bins: int = 30,
    title: str | None = None,
    save_path: str | os.PathLike[str] | None = None,
    dpi: int = 150,
) -> Figure:
    """Histogram of the model's scores per group, with group means and the decision threshold.

    Args:
        scores: predicted probabilities (or logits with ``logits=True``), shape (n,) or (n, 1).
        groups: integer group ids (n,) or one-hot membership (n, G).
        group_names: names of the groups, by id (default ``group 0``, ``group 1``, ...).
        labels: optional true labels (n,); then one panel per label value, which shows
            equal-opportunity (label 1) and false-positive (label 0) gaps.
        threshold: decision threshold drawn and used for the positive rates in the legend
            (``None``: neither).
        logits: apply a sigmoid to ``scores`` first.
        bins: number of histogram bins.
        title, save_path, dpi: as for :func:`plot_training_history`.
    """
    figure_cls = _figure_class()
    s = _as_array(scores, "scores")
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 1:
        raise ValueError(f"scores: expected shape (n,) or (n, 1), got {s.shape}")
    if s.size == 0:
        raise ValueError("scores: empty")
    if not np.isfinite(s).all():
        raise ValueError("scores: contains NaN or infinite values")
    if logits:
        s = 1.0 / (1.0 + np.exp(-s))
    g, n_groups = _group_ids(groups, s.size)
    if group_names is None:
        names = [f"group {i}" for i in range(n_groups)]
    else:
        names = [str(n) for n in group_names]
        if int(g.max()) >= len(names):
            raise ValueError(f"group_names: {len(names)} names but groups has the id {g.max()}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins: expected a positive integer, got {bins!r}")
    if labels is not None:
        lab = _as_array(labels, "labels").reshape(-1)
        if lab.shape[0] != s.size:
            raise ValueError(f"labels: expected {s.size} entries (one per score), got {lab.size}")
        panels = [(f"label = {v:g}", lab == v) for v in np.unique(lab)]
    else:
        panels = [("all rows", np.ones(s.size, dtype=bool))]
    lo, hi = (0.0, 1.0) if s.min() >= 0.0 and s.max() <= 1.0 else (float(s.min()), float(s.max()))
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)

    fig = figure_cls(figsize=(6.5 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (panel_title, mask) in zip(axes, panels, strict=True):
        rates: list[float] = []
        for gid, name in enumerate(names):
            sel = s[mask & (g == gid)]
            color = f"C{gid % 10}"
            if sel.size == 0:
                ax.plot([], [], color=color, label=f"{name} (n=0)")
                continue
            text = f"{name} (n={sel.size}, mean={sel.mean():.3f}"
            if threshold is not None:
                rate = float((sel >= threshold).mean())
                rates.append(rate)
                text += f", P(score≥{threshold:g})={rate:.3f}"
            ax.hist(
                sel,
                bins=edges,
                density=True,
                histtype="step",
                lw=1.8,
                color=color,
                label=text + ")",
            )
            ax.hist(sel, bins=edges, density=True, histtype="stepfilled", alpha=0.12, color=color)
            ax.axvline(float(sel.mean()), color=color, ls="--", lw=1.0)
        if threshold is not None and lo <= threshold <= hi:
            ax.axvline(threshold, color="black", ls=":", lw=1.2, label=f"threshold {threshold:g}")
        heading = panel_title
        if len(rates) >= 2:
            heading += f"; positive-rate gap {max(rates) - min(rates):.3f}"
        ax.set_title(heading, fontsize="medium", loc="left")
        ax.set_xlabel("score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    axes[0].set_ylabel("density")
    if title:
        fig.suptitle(title)
    _save(fig, save_path, dpi)
    return fig


# ---------------------------------------------------------------------------------- trade-off
def _records(results: Any) -> list[tuple[str, Mapping[str, Any]]]:
    if isinstance(results, Mapping):
        out = []
        for name, rec in results.items():
            if not isinstance(rec, Mapping):
                raise ValueError(
                    f"results[{name!r}]: expected a mapping of metrics, got {type(rec).__name__}"
                )
            out.append((str(name), rec))
        return out
    if isinstance(results, Sequence) and not isinstance(results, (str, bytes)):
        out = []
        for i, rec in enumerate(results):
            if not isinstance(rec, Mapping):
                raise ValueError(
                    f"results[{i}]: expected a mapping of metrics, got {type(rec).__name__}"
                )
            out.append((str(i), rec))
        return out
    raise ValueError(
        "results: expected a list of metric mappings or {name: metrics}, "
        f"got {type(results).__name__}"
    )


def _mean_std(value: Any, where: str) -> tuple[float, float]:
    arr = _as_array(value, where).reshape(-1)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        raise ValueError(f"{where}: no finite value")
    return float(arr.mean()), float(arr.std()) if arr.size > 1 else 0.0


def _pareto(points: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Points (x to minimise, y) not dominated by another, sorted by x."""
    order = np.lexsort((-points[:, 1] if higher_is_better else points[:, 1], points[:, 0]))
    front: list[np.ndarray] = []
    best = -math.inf if higher_is_better else math.inf
    for p in points[order]:
        if (p[1] > best) if higher_is_better else (p[1] < best):
            front.append(p)
            best = p[1]
    return np.array(front)


def plot_tradeoff(
    results: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    *,
    eps: float | None = None,
    x: str = "gap",
    y: str = "accuracy",
    series: str | None = "method",
    label: str | None = "label",
    higher_is_better: bool = True,
    pareto: bool = True,
    title: str | None = None,
    save_path: str | os.PathLike[str] | None = None,
    dpi: int = 150,
) -> Figure:
    """Scatter of performance against fairness gap for several runs, with ε and the Pareto front.

    Args:
        results: one mapping of metrics per run (e.g. ``{"method": "ALM", "label": "ε=0.05",
            "gap": 0.04, "accuracy": 0.81}``), or ``{run name: metrics}`` (the name is then the
            point label). A metric may be a list (several seeds): the mean is plotted with a
            ±1 std error bar.
        eps: the fairness bound; a dashed vertical line, infeasible side shaded.
        x: the key of the fairness gap (lower is better).
        y: the key of the performance metric.
        series: key grouping runs into coloured, connected series (e.g. one method swept over
            ε); ``None`` or a missing key: one series.
        label: key of a per-point annotation (``None``: none).
        higher_is_better: direction of ``y`` (False for a loss).
        pareto: draw the Pareto front over all runs.
        title, save_path, dpi: as for :func:`plot_training_history`.
    """
    figure_cls = _figure_class()
    recs = _records(results)
    if not recs:
        raise ValueError("results: empty; nothing to plot")
    by_series: dict[str, list[tuple[float, float, float, float, str]]] = {}
    for name, rec in recs:
        for key in (x, y):
            if key not in rec:
                raise ValueError(
                    f"results[{name}]: missing the key {key!r} (x={x!r}, y={y!r}); "
                    f"keys found: {sorted(map(str, rec))!r}"
                )
        xm, xs = _mean_std(rec[x], f"results[{name}][{x!r}]")
        ym, ys = _mean_std(rec[y], f"results[{name}][{y!r}]")
        group = str(rec[series]) if series is not None and series in rec else ""
        if label is not None and label in rec:
            text = str(rec[label])
        else:
            text = name if isinstance(results, Mapping) else ""
        by_series.setdefault(group, []).append((xm, ym, xs, ys, text))

    fig = figure_cls(figsize=(6.5, 4.5), layout="constrained")
    ax: Axes = fig.subplots()
    for i, (group, pts) in enumerate(by_series.items()):
        pts.sort(key=lambda p: p[0])
        arr = np.array([p[:4] for p in pts], dtype=np.float64)
        color = f"C{i % 10}"
        ax.errorbar(
            arr[:, 0],
            arr[:, 1],
            xerr=arr[:, 2],
            yerr=arr[:, 3],
            fmt="o-" if len(pts) > 1 else "o",
            color=color,
            capsize=3,
            ms=6,
            lw=1.2,
            label=group or None,
        )
        for xm, ym, _, _, text in pts:
            if text:
                ax.annotate(
                    text,
                    (xm, ym),
                    textcoords="offset points",
                    xytext=(5, 5),
                    fontsize="small",
                    color=color,
                )
    all_pts = np.array([p[:2] for pts in by_series.values() for p in pts], dtype=np.float64)
    if pareto and len(all_pts) > 1:
        front = _pareto(all_pts, higher_is_better)
        ax.step(
            front[:, 0],
            front[:, 1],
            where="post",
            color="grey",
            ls="--",
            lw=1.0,
            label="Pareto front",
            zorder=0,
        )
    if eps is not None:
        ax.axvline(eps, color="crimson", ls=":", lw=1.5, label=f"ε = {eps:g}")
        right = max(float(all_pts[:, 0].max()), eps) * 1.05 + 1e-12
        ax.axvspan(eps, right, color="crimson", alpha=0.07, lw=0)
        ax.set_xlim(left=min(0.0, float(all_pts[:, 0].min())), right=right)
    ax.set_xlabel(f"{x} (lower is fairer)")
    ax.set_ylabel(f"{y} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize="small", loc="best")
    if title:
        fig.suptitle(title)
    _save(fig, save_path, dpi)
    return fig
