"""Tests of humancompatible_train.plotting (skipped without matplotlib)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from humancompatible_train.plotting import (  # noqa: E402
    plot_group_distributions,
    plot_tradeoff,
    plot_training_history,
)


def _history(n: int = 8) -> list[dict[str, object]]:
    return [
        {
            "epoch": e,
            "loss": 1.0 / (e + 1),
            "val_loss": 1.1 / (e + 1),
            "train_gap": 0.2 / (e + 1),
            "dual": [0.1 * e, 0.2 * e],
            "accuracy": 0.7 + 0.01 * e,
        }
        for e in range(n)
    ]


def _titles(fig: Figure) -> list[str]:
    return [ax.get_title(loc="left") for ax in fig.axes]


def test_training_history_records_and_mapping(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "history.png"
    fig = plot_training_history(_history(), eps=0.05, title="run", save_path=out)
    assert isinstance(fig, Figure) and out.stat().st_size > 0
    assert _titles(fig) == [
        "Loss",
        "Constraint / fairness gap",
        "Dual variables (multipliers)",
        "Other metrics",
    ]
    gap_ax = fig.axes[1]
    assert any(line.get_label() == "ε = 0.05" for line in gap_ax.get_lines())
    assert fig.axes[2].get_legend() is not None and len(fig.axes[2].get_lines()) == 3  # 2 + zero
    columns = {"loss": torch.tensor([0.9, 0.5, 0.4]), "constraint": np.array([0.1, 0.0, -0.1])}
    fig2 = plot_training_history(columns)
    assert _titles(fig2) == ["Loss", "Constraint / fairness gap"]
    assert fig2.axes[-1].get_xlabel() == "epoch"


def test_training_history_errors() -> None:
    with pytest.raises(ValueError, match="history: no series"):
        plot_training_history({})
    with pytest.raises(ValueError, match=r"history\['gap'\] has 2 entries but history\['loss'\]"):
        plot_training_history({"loss": [1, 2, 3], "gap": [1, 2]})
    with pytest.raises(ValueError, match="history: expected a mapping"):
        plot_training_history(3)  # type: ignore[arg-type]


def test_group_distributions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(300, 1)))
    groups = torch.tensor(rng.integers(0, 2, 300))
    labels = rng.integers(0, 2, 300)
    fig = plot_group_distributions(
        logits, groups, ["Male", "Female"], labels=labels, logits=True, save_path=tmp_path / "d.svg"
    )
    assert (tmp_path / "d.svg").stat().st_size > 0
    assert len(fig.axes) == 2 and fig.axes[0].get_title(loc="left").startswith("label = 0")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[0].startswith("Male (n=") and "P(score≥0.5)" in legend[0]
    onehot = torch.nn.functional.one_hot(groups, 3).float()  # a third, empty group
    fig2 = plot_group_distributions(torch.sigmoid(logits), onehot, threshold=None)
    texts = [t.get_text() for t in fig2.axes[0].get_legend().get_texts()]
    assert texts == ["group 0 (n=" + texts[0].split("(n=")[1], texts[1], "group 2 (n=0)"]


def test_group_distributions_errors() -> None:
    with pytest.raises(ValueError, match="groups: expected 3 entries"):
        plot_group_distributions([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="group_names: 1 names but groups has the id 1"):
        plot_group_distributions([0.1, 0.2], [0, 1], ["a"])
    with pytest.raises(ValueError, match="scores: expected shape"):
        plot_group_distributions(np.zeros((2, 2)), [0, 1])
    with pytest.raises(ValueError, match="scores: contains NaN"):
        plot_group_distributions([0.1, float("nan")], [0, 1])


def test_tradeoff(tmp_path: Path) -> None:
    results = [
        {"method": "ALM", "label": "ε=0.05", "gap": [0.04, 0.05], "accuracy": [0.81, 0.82]},
        {"method": "ALM", "label": "ε=0.1", "gap": 0.09, "accuracy": 0.83},
        {"method": "unconstrained", "gap": 0.18, "accuracy": 0.84},
        {"method": "fairret", "gap": 0.03, "accuracy": 0.78},
    ]
    fig = plot_tradeoff(results, eps=0.05, save_path=tmp_path / "t.pdf")
    assert (tmp_path / "t.pdf").stat().st_size > 0
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"ALM", "unconstrained", "fairret", "Pareto front", "ε = 0.05"} <= set(labels)
    assert [t.get_text() for t in ax.texts] == ["ε=0.05", "ε=0.1"]
    fig2 = plot_tradeoff(
        {"a": {"gap": 0.1, "loss": 0.3}, "b": {"gap": 0.2, "loss": 0.2}},
        y="loss",
        higher_is_better=False,
    )
    assert [t.get_text() for t in fig2.axes[0].texts] == ["a", "b"]


def test_tradeoff_errors() -> None:
    with pytest.raises(ValueError, match=r"results\[1\]: missing the key 'accuracy'"):
        plot_tradeoff([{"gap": 0.1, "accuracy": 0.8}, {"gap": 0.2, "acc": 0.9}])
    with pytest.raises(ValueError, match="results: empty"):
        plot_tradeoff([])


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"\[plot\]"):
        plot_tradeoff([{"gap": 0.1, "accuracy": 0.8}])
