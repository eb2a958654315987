"""Generic machinery behind the loaders: the :class:`Split` / :class:`DatasetSplits`
containers, and :func:`build_splits`, which checks every argument, then samples, splits and
encodes (fitted on the training split only).

Reading lives in :mod:`._read`, encoding in :mod:`._preprocess` (both re-exported here),
stratified sub-sampling and splitting in :mod:`._split`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .._validation import check_int, fail
from ._preprocess import (
    DEFAULT_MISSING,
    MISSING_CATEGORY,
    Preprocessor,
    check_columns,
    check_groups,
    encode_groups,
    encode_target,
)
from ._read import (
    Table,
    check_delimiter,
    check_encoding,
    frame_to_columns,
    read_csv_columns,
    read_parquet_columns,
    require_pandas,
)
from ._split import check_fractions, strata_of, stratified_split, stratified_subsample

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "DEFAULT_MISSING",
    "MISSING_CATEGORY",
    "DatasetSplits",
    "Preprocessor",
    "Split",
    "Table",
    "build_splits",
    "check_delimiter",
    "check_encoding",
    "frame_to_columns",
    "read_csv_columns",
    "read_parquet_columns",
    "require_pandas",
]

logger = logging.getLogger("humancompatible_train")


# ----------------------------------------------------------------------------------- containers
@dataclass(frozen=True, eq=False, repr=False)
class Split:
    """One part (train, validation or test) of a dataset, as tensors.

    Attributes:
        X: float32 features, shape (n, d).
        y: float32 binary labels, shape (n, 1) (matches a network ending in ``Linear(..., 1)``).
        sens: int64 group ids, shape (n, k), one column per sensitive attribute.
        rows: int64 positions of these rows in the source file (0 = first data row).
        sensitive: the sensitive attribute names (columns of ``sens``).
        group_names: readable group names per attribute; id ``i`` is ``group_names[attr][i]``.
        feature_names: names of the columns of ``X``.
    """

    X: torch.Tensor
    y: torch.Tensor
    sens: torch.Tensor
    rows: torch.Tensor
    sensitive: tuple[str, ...]
    group_names: Mapping[str, tuple[str, ...]]
    feature_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def __repr__(self) -> str:
        return (
            f"Split({len(self)} rows, {self.X.shape[1]} features, "
            f"sensitive={list(self.sensitive)!r})"
        )

    def _attr_index(self, attr: str | None) -> int:
        if attr is None:
            return 0
        if attr not in self.sensitive:
            raise ValueError(f"attr: expected one of {list(self.sensitive)!r}, got {attr!r}")
        return self.sensitive.index(attr)

    def groups(self, attr: str | None = None) -> torch.Tensor:
        """Group ids (int64, shape (n,)) of one sensitive attribute (default: the first)."""
        return self.sens[:, self._attr_index(attr)]

    def onehot(self, attrs: str | Sequence[str] | None = None) -> torch.Tensor:
        """Float32 one-hot group membership, shape (n, total groups), attributes side by side.

        This is the ``sens`` layout fairret statistics expect. ``attrs`` defaults to all
        sensitive attributes, in order.
        """
        chosen = (
            list(self.sensitive)
            if attrs is None
            else [attrs]
            if isinstance(attrs, str)
            else list(attrs)
        )
        blocks = []
        for a in chosen:
            ids = self.groups(a)
            blocks.append(
                torch.nn.functional.one_hot(ids, len(self.group_names[a])).to(torch.float32)
            )
        return torch.cat(blocks, dim=1)

    def tensor_dataset(self, sens: Literal["onehot", "ids"] = "onehot") -> TensorDataset:
        """A ``TensorDataset`` yielding ``(features, groups, label)``.

        ``sens="onehot"``: groups as :meth:`onehot` (n, total groups); ``"ids"``: integer ids,
        shape (n,) with one sensitive attribute, (n, k) with several.
        """
        if sens == "onehot":
            s = self.onehot()
        elif sens == "ids":
            s = self.sens[:, 0] if self.sens.shape[1] == 1 else self.sens
        else:
            raise ValueError(f"sens: expected 'onehot' or 'ids', got {sens!r}")
        return TensorDataset(self.X, s, self.y)

    def positive_rates(self, attr: str | None = None) -> dict[str, float]:
        """Share of positive labels per group (NaN for a group without rows)."""
        ids = self.groups(attr)
        names = self.group_names[self.sensitive[self._attr_index(attr)]]
        y = self.y.reshape(-1)
        return {
            name: float(y[ids == g].mean()) if bool((ids == g).any()) else math.nan
            for g, name in enumerate(names)
        }

    def to_pandas(self) -> pd.DataFrame:
        """Features (named columns), ``label`` (0/1) and one column of group names per attribute."""
        pd = require_pandas("Split.to_pandas()")
        frame = pd.DataFrame(self.X.numpy(), columns=list(self.feature_names))
        frame["label"] = self.y.reshape(-1).numpy().astype(np.int64)
        for j, attr in enumerate(self.sensitive):
            names = list(self.group_names[attr])
            col = f"group:{attr}" if attr in frame.columns else attr
            frame[col] = pd.Categorical.from_codes(self.sens[:, j].numpy(), categories=names)
        frame.index = pd.Index(self.rows.numpy(), name="row")
        return frame


@dataclass(frozen=True, eq=False, repr=False)
class DatasetSplits:
    """A tabular fairness dataset split into train / validation / test parts.

    Attributes:
        name: dataset name (``'adult'``, ``'dutch'`` or the file name).
        train, val, test: the three :class:`Split` parts.
        target: the target column; ``positive`` its value encoded as label 1.
        sensitive: the sensitive attributes; ``group_names`` their readable groups.
        feature_names: names of the feature columns of ``X``.
        preprocessor: the encoding, fitted on the training rows only.
        seed: the seed of the sub-sampling and split.
    """

    name: str
    train: Split
    val: Split
    test: Split
    target: str
    positive: str
    sensitive: tuple[str, ...]
    group_names: Mapping[str, tuple[str, ...]]
    feature_names: tuple[str, ...]
    preprocessor: Preprocessor
    seed: int

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def __repr__(self) -> str:
        return (
            f"DatasetSplits(name={self.name!r}, train={len(self.train)} rows, "
            f"val={len(self.val)} rows, test={len(self.test)} rows, "
            f"features={self.n_features}, sensitive={list(self.sensitive)!r}, seed={self.seed})"
        )

    def to_pandas(self) -> dict[str, pd.DataFrame]:
        """``{'train', 'val', 'test'}`` data frames (see :meth:`Split.to_pandas`)."""
        return {
            "train": self.train.to_pandas(),
            "val": self.val.to_pandas(),
            "test": self.test.to_pandas(),
        }

    def summary(self) -> str:
        """A few human-readable lines: sizes, label rate and group sizes."""
        lines = [
            f"{self.name}: {self.n_features} features; label 1 = {self.target} == "
            f"{self.positive!r}; sensitive: {', '.join(self.sensitive)}"
        ]
        for part_name, part in (("train", self.train), ("val", self.val), ("test", self.test)):
            rate = float(part.y.mean()) if len(part) else math.nan
            groups = "; ".join(
                f"{a}: "
                + ", ".join(
                    f"{n}={int((part.groups(a) == g).sum())}"
                    for g, n in enumerate(self.group_names[a])
                )
                for a in self.sensitive
            )
            lines.append(f"  {part_name}: {len(part)} rows, positive rate {rate:.3f}; {groups}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ building
@dataclass(frozen=True)
class _Plan:
    """The checked arguments of :func:`build_splits` (nothing read from the cells yet)."""

    sensitive: list[str]
    labels: dict[str, Mapping[str, str]]
    features: list[str]
    fractions: tuple[float, float, float]
    missing: tuple[str, ...]
    seed: int
    max_rows: int | None


def _check_missing_values(missing_values: object) -> tuple[str, ...]:
    expected = "a sequence of cell texts such as ('', '?', 'NA')"
    if isinstance(missing_values, str):
        raise fail("missing_values", expected, missing_values)
    try:
        texts = tuple(missing_values)  # type: ignore[call-overload]
    except TypeError:
        raise fail("missing_values", expected, missing_values) from None
    if not all(isinstance(t, str) for t in texts):
        raise fail("missing_values", expected, missing_values)
    return texts


def _plan(
    table: Table,
    *,
    source: str,
    target: str,
    sensitive: Sequence[str],
    group_labels: Mapping[str, Mapping[str, str]] | None,
    features: Sequence[str] | None,
    drop: Sequence[str],
    categorical: Sequence[str],
    numerical: Sequence[str],
    include_sensitive: bool,
    missing_values: Sequence[str],
    split: Sequence[float],
    seed: int,
    max_rows: int | None,
) -> _Plan:
    """Every check of :func:`build_splits` that needs only the header and the arguments."""
    if isinstance(sensitive, str) or not isinstance(sensitive, (list, tuple)) or not sensitive:
        raise ValueError(f"sensitive: expected a non-empty list of column names, got {sensitive!r}")
    sensitive = list(sensitive)
    if len(set(sensitive)) != len(sensitive):
        raise ValueError(f"sensitive: column names repeat: {sensitive!r}")
    check_columns(table, [target], argument="target", source=source)
    check_columns(table, sensitive, argument="sensitive", source=source)
    if target in sensitive:
        raise ValueError(f"sensitive: the target column {target!r} cannot also be sensitive")
    for arg, cols in (("drop", drop), ("categorical", categorical), ("numerical", numerical)):
        check_columns(table, list(cols), argument=arg, source=source)
    both = sorted(set(categorical) & set(numerical))
    if both:
        raise ValueError(f"categorical, numerical: columns listed as both: {both!r}")
    labels = dict(group_labels or {})
    unknown = [c for c in labels if c not in sensitive]
    if unknown:
        raise ValueError(f"group_labels: {unknown!r} are not sensitive columns {sensitive!r}")
    fractions = check_fractions(split)
    if max_rows is not None:
        max_rows = check_int("max_rows", max_rows, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    missing = _check_missing_values(missing_values)
    if features is None:
        excluded = {target, *drop} | (set() if include_sensitive else set(sensitive))
        feature_cols = [c for c in table if c not in excluded]
    else:
        feature_cols = list(features)
        check_columns(table, feature_cols, argument="features", source=source)
        if target in feature_cols:
            raise ValueError(f"features: the target column {target!r} cannot be a feature")
    if not feature_cols:
        raise ValueError(f"features: no feature columns left in {source}")
    return _Plan(sensitive, labels, feature_cols, fractions, missing, seed, max_rows)


def _check_parts(sizes: Sequence[int], plan: _Plan, source: str, subsampled: bool) -> None:
    """A part asked for (fraction > 0) that came out empty is an error, never a silent 0 rows."""
    names = ("train", "validation", "test")
    empty = [n for n, f, k in zip(names, plan.fractions, sizes) if f > 0 and k == 0]
    if empty:
        counts = ", ".join(f"{n} {k}" for n, k in zip(names, sizes))
        raise ValueError(
            f"{source}: {sum(sizes)} rows give an empty {' and '.join(empty)} part "
            f"({counts} rows with split {plan.fractions}); every label-group combination is "
            f"split on its own, so tiny data leaves parts empty: use more rows"
            + (" (raise max_rows)" if subsampled else "")
        )


def build_splits(
    table: Table,
    *,
    name: str,
    target: str,
    positive: object,
    sensitive: Sequence[str],
    group_labels: Mapping[str, Mapping[str, str]] | None,
    features: Sequence[str] | None,
    drop: Sequence[str],
    categorical: Sequence[str],
    numerical: Sequence[str],
    include_sensitive: bool,
    missing_values: Sequence[str],
    split: Sequence[float],
    seed: int,
    max_rows: int | None,
) -> DatasetSplits:
    """Validate, sub-sample, split and encode a text-column table.

    Raises:
        ValueError: a bad argument (named), a column that is not there, a target that is not
            binary, a missing target or group, a non-finite number, an empty group, or a
            validation or test part that would come out empty.
    """
    source = name
    plan = _plan(table, source=source, target=target, sensitive=sensitive,
                 group_labels=group_labels, features=features, drop=drop,
                 categorical=categorical, numerical=numerical,
                 include_sensitive=include_sensitive, missing_values=missing_values,
                 split=split, seed=seed, max_rows=max_rows)
    y_all, pos_text = encode_target(
        table[target], column=target, positive=positive, missing_values=plan.missing,
        source=source
    )
    group_ids: list[np.ndarray] = []
    names: dict[str, tuple[str, ...]] = {}
    for col in plan.sensitive:
        ids, gnames = encode_groups(
            table[col], column=col, labels=plan.labels.get(col), missing_values=plan.missing,
            source=source
        )
        group_ids.append(ids)
        names[col] = gnames
    sens_all = np.column_stack(group_ids)

    rng = np.random.default_rng(plan.seed)
    n_total = y_all.shape[0]
    rows = np.arange(n_total)
    subsampled = plan.max_rows is not None and n_total > plan.max_rows
    if subsampled:
        assert plan.max_rows is not None
        rows = stratified_subsample(strata_of(y_all, sens_all), plan.max_rows, rng)
    y, sens = y_all[rows], sens_all[rows]
    for j, col in enumerate(plan.sensitive):
        check_groups(sens[:, j], names[col], column=col, source=source, subsampled=subsampled)

    tr, va, te = stratified_split(strata_of(y, sens), plan.fractions, rng)
    _check_parts((tr.size, va.size, te.size), plan, source, subsampled)
    prep = Preprocessor.fit(
        table,
        rows[tr],
        columns=plan.features,
        categorical=categorical,
        numerical=numerical,
        missing_values=plan.missing,
        source=source,
    )
    feature_names = prep.feature_names
    X_all = prep.transform({c: table[c][rows] for c in plan.features})

    def part(pos: np.ndarray) -> Split:
        return Split(
            X=torch.from_numpy(np.ascontiguousarray(X_all[pos])),
            y=torch.from_numpy(y[pos].reshape(-1, 1).copy()),
            sens=torch.from_numpy(np.ascontiguousarray(sens[pos])),
            rows=torch.from_numpy(rows[pos].astype(np.int64)),
            sensitive=tuple(plan.sensitive),
            group_names=names,
            feature_names=feature_names,
        )

    result = DatasetSplits(
        name=name,
        train=part(tr),
        val=part(va),
        test=part(te),
        target=target,
        positive=pos_text,
        sensitive=tuple(plan.sensitive),
        group_names=names,
        feature_names=feature_names,
        preprocessor=prep,
        seed=plan.seed,
    )
    for part_name, sp in (("validation", result.val), ("test", result.test)):
        for j, col in enumerate(plan.sensitive):
            if len(sp) and bool(
                (torch.bincount(sp.sens[:, j], minlength=len(names[col])) == 0).any()
            ):
                logger.warning("%s: the %s split lacks some %r groups", name, part_name, col)
    logger.info("%s", result.summary())
    return result
