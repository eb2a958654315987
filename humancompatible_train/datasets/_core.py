"""Generic machinery behind the loaders: reading tables with the standard library, validating the
target and sensitive columns, stratified sub-sampling and splitting, and preprocessing fitted on the
training split only.

A table is held as ``dict[column name, numpy array of str]``; every value is the stripped text of a
cell. Nothing here needs pandas; :func:`read_parquet_columns` and the ``to_pandas`` methods import
it lazily.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

logger = logging.getLogger("humancompatible_train")

Table = dict[str, np.ndarray]

#: Cell texts read as "missing" unless the caller says otherwise.
DEFAULT_MISSING: tuple[str, ...] = ("", "?", "NA", "N/A", "NaN", "nan", "null", "None")
#: Category that missing values of a categorical feature are mapped to.
MISSING_CATEGORY = "missing"

_PANDAS_HINT = (
    "pip install 'humancompatible-train-toolkit[pandas]' (the `pandas` extra: pandas and pyarrow)"
)


def require_pandas(purpose: str) -> Any:
    """Import pandas or raise an ImportError naming the ``pandas`` extra."""
    try:
        import pandas
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"{purpose} needs pandas; install it with {_PANDAS_HINT}") from exc
    return pandas


def _preview(values: Sequence[Any], limit: int = 10) -> str:
    shown = [repr(v) for v in list(values)[:limit]]
    more = len(values) - limit
    return "[" + ", ".join(shown) + (f", ... ({more} more)" if more > 0 else "") + "]"


def _to_float(text: str) -> float | None:
    """The number a cell text spells, or None (digit separators like ``'2_1'`` are not numbers)."""
    if "_" in text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def natural_sort(values: Sequence[str]) -> list[str]:
    """Sort numeric-looking texts by value (``'2' < '10'``), then the others alphabetically."""

    def key(v: str) -> tuple[int, float, str]:
        x = _to_float(v)
        if x is None:
            return (1, 0.0, v)
        return (0, x if not math.isnan(x) else math.inf, v)

    return sorted(values, key=key)


# --------------------------------------------------------------------------------------- reading
def read_csv_columns(path: str | os.PathLike[str], *, delimiter: str | None = None) -> Table:
    """Read a (optionally gzip-compressed) delimited text file with a header row."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {str(p)!r}")
    name = p.name.lower()
    if delimiter is None:
        delimiter = "\t" if name.endswith((".tsv", ".tsv.gz", ".tab")) else ","
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig")
    return parse_csv_text(text, source=str(p), delimiter=delimiter)


def parse_csv_text(text: str, *, source: str, delimiter: str = ",") -> Table:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[list[str]] = []
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if header is None:
            header = [h.strip() for h in row]
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{source}: line {reader.line_num} has {len(row)} fields, expected {len(header)} "
                f"(the number of header columns)"
            )
        rows.append(row)
    if header is None:
        raise ValueError(f"{source}: the file is empty (expected a header row)")
    _check_header(header, source)
    if not rows:
        raise ValueError(f"{source}: the file has a header but no data rows")
    cols = zip(*rows, strict=True)
    return {h: np.char.strip(np.asarray(c, dtype=str)) for h, c in zip(header, cols, strict=True)}


def _check_header(header: Sequence[str], source: str) -> None:
    if any(not h for h in header):
        raise ValueError(f"{source}: the header has an empty column name: {list(header)!r}")
    seen: set[str] = set()
    dups = sorted({h for h in header if h in seen or seen.add(h)})  # type: ignore[func-returns-value]
    if dups:
        raise ValueError(f"{source}: duplicate column names in the header: {dups!r}")


def frame_to_columns(frame: pd.DataFrame, *, source: str) -> Table:
    """Convert a pandas DataFrame into the text-column table (missing cells become '')."""
    header = [str(c) for c in frame.columns]
    _check_header(header, source)
    if len(frame) == 0:
        raise ValueError(f"{source}: the table has no rows")
    out: Table = {}
    for name, col in zip(header, frame.columns, strict=True):
        series = frame[col]
        missing = series.isna().to_numpy()
        texts = np.char.strip(series.astype(str).to_numpy(dtype=str))
        texts[missing] = ""
        out[name] = texts
    return out


def read_parquet_columns(path: str | os.PathLike[str]) -> Table:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {str(p)!r}")
    pd = require_pandas(f"reading the Parquet file {str(p)!r}")
    try:
        frame = pd.read_parquet(p)
    except ImportError as exc:  # pragma: no cover - pyarrow / fastparquet missing
        raise ImportError(f"reading Parquet needs pyarrow; install it with {_PANDAS_HINT}") from exc
    return frame_to_columns(frame, source=str(p))


# ---------------------------------------------------------------------------------- validation
def check_columns(table: Table, columns: Sequence[str], *, argument: str, source: str) -> None:
    for c in columns:
        if c not in table:
            raise ValueError(
                f"{argument}: column {c!r} not found in {source}; "
                f"available columns: {list(table)!r}"
            )


def _parse_floats(values: np.ndarray, missing: np.ndarray) -> np.ndarray | None:
    """Floats of ``values`` (NaN where missing), or None if some present value is not a number."""
    if values.size and bool((np.char.find(values[~missing], "_") >= 0).any()):
        return None  # Python and numpy read '2_1' as 21; a code, not a number
    filled = np.where(missing, "nan", values)
    try:
        return filled.astype(np.float64)
    except ValueError:
        return None


def _first_non_number(values: np.ndarray, missing: np.ndarray) -> str:
    for v, m in zip(values.tolist(), missing.tolist(), strict=True):
        if not m and _to_float(str(v)) is None:
            return str(v)
    return ""  # pragma: no cover - only called after a failed parse


def encode_target(
    values: np.ndarray, *, column: str, positive: object, missing_values: Sequence[str], source: str
) -> tuple[np.ndarray, str]:
    """Binary labels (float32 0/1) from the target column, and the positive value as text."""
    missing = np.isin(values, list(missing_values))
    if missing.any():
        rows = np.flatnonzero(missing)[:5].tolist()
        raise ValueError(
            f"target column {column!r} in {source} has {int(missing.sum())} missing values "
            f"(e.g. at data rows {rows}); drop or fill them first"
        )
    floats = _parse_floats(values, missing)
    numeric = floats is not None
    if numeric:
        assert floats is not None
        distinct_num = np.unique(floats)
        distinct = [_num_text(x) for x in distinct_num.tolist()]
    else:
        distinct = natural_sort(np.unique(values).tolist())
    if len(distinct) != 2:
        raise ValueError(
            f"target column {column!r} in {source} must be binary (exactly two distinct values), "
            f"found {len(distinct)}: {_preview(distinct)}"
        )
    if positive is None:
        if numeric and set(distinct) == {"0", "1"}:
            positive = 1
        else:
            raise ValueError(
                f"positive: give the target value that counts as 1; column {column!r} "
                f"has values {distinct!r}"
            )
    if isinstance(positive, bool) or not isinstance(positive, (str, int, float, np.number)):
        raise ValueError(
            f"positive: expected a str or a number, got {type(positive).__name__} ({positive!r})"
        )
    pos_text = str(positive).strip()
    if numeric and (not isinstance(positive, str) or _is_number(pos_text)):
        assert floats is not None
        target_value = float(positive)
        y = floats == target_value
        found = target_value in distinct_num.tolist()
        pos_text = _num_text(target_value)
    else:
        y = values == pos_text
        found = pos_text in distinct
    if not found:
        raise ValueError(
            f"positive={positive!r} is not a value of target column {column!r} in {source}; "
            f"values found: {distinct!r}"
        )
    return y.astype(np.float32), pos_text


def _is_number(text: str) -> bool:
    return _to_float(text) is not None


def _num_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def encode_groups(
    values: np.ndarray,
    *,
    column: str,
    labels: Mapping[str, str] | None,
    missing_values: Sequence[str],
    source: str,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer group ids (int64) and readable group names of one sensitive column.

    With ``labels`` (raw value -> readable name) the ids follow the mapping's order and every raw
    value must be listed; without it the groups are the observed values in natural order.
    """
    missing = np.isin(values, list(missing_values))
    if missing.any():
        raise ValueError(
            f"sensitive column {column!r} in {source} has {int(missing.sum())} missing values "
            f"(texts {sorted(set(values[missing].tolist()))!r}); every row needs a group"
        )
    observed = natural_sort(np.unique(values).tolist())
    if labels is None:
        raw_order = observed
        names = tuple(observed)
    else:
        raw_order = [str(k) for k in labels]
        names = tuple(str(v) for v in labels.values())
        unknown = [v for v in observed if v not in raw_order]
        if unknown:
            raise ValueError(
                f"sensitive column {column!r} in {source} has values without a group label: "
                f"{_preview(unknown)}; labelled values: {raw_order!r}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"group labels for column {column!r} are not unique: {names!r}")
    ids = np.full(values.shape, -1, dtype=np.int64)
    for i, raw in enumerate(raw_order):
        ids[values == raw] = i
    return ids, names


def check_groups(
    ids: np.ndarray, names: Sequence[str], *, column: str, source: str, subsampled: bool
) -> None:
    counts = np.bincount(ids, minlength=len(names))
    found = {n: int(c) for n, c in zip(names, counts.tolist(), strict=True)}
    hint = " (after sub-sampling to max_rows; raise max_rows)" if subsampled else ""
    empty = [n for n, c in found.items() if c == 0]
    if empty:
        raise ValueError(
            f"sensitive column {column!r} in {source}: group(s) {empty!r} have no rows{hint}; "
            f"rows per group: {found}"
        )
    if len(names) < 2:
        raise ValueError(
            f"sensitive column {column!r} in {source} has a single group {names[0]!r}; "
            f"fairness constraints need at least two groups{hint}"
        )


# ----------------------------------------------------------------------- sampling and splitting
def check_fractions(split: Sequence[float]) -> tuple[float, float, float]:
    try:
        fr = tuple(float(f) for f in split)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"split: expected three numbers (train, val, test), got {split!r}"
        ) from exc
    if len(fr) != 3 or any(not math.isfinite(f) or f < 0 for f in fr):
        raise ValueError(
            f"split: expected three non-negative fractions (train, val, test), got {split!r}"
        )
    if abs(sum(fr) - 1.0) > 1e-6 or fr[0] <= 0:
        raise ValueError(
            f"split: fractions must sum to 1 with a positive train part, got {split!r}"
        )
    return fr[0], fr[1], fr[2]


def strata_of(y: np.ndarray, sens: np.ndarray) -> np.ndarray:
    """One stratum id per row: the combination of label and all sensitive groups."""
    key = np.column_stack([y.astype(np.int64), sens])
    _, inverse = np.unique(key, axis=0, return_inverse=True)
    return inverse.reshape(-1)


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    if total <= 0 or weights.sum() == 0:
        return np.zeros_like(weights, dtype=np.int64)
    exact = weights * (total / weights.sum())
    counts = np.floor(exact).astype(np.int64)
    left = total - int(counts.sum())
    if left > 0:
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:left]] += 1
    return counts


def stratified_subsample(strata: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of a stratified sample of ``max_rows`` rows (every stratum kept if possible)."""
    sizes = np.bincount(strata)
    present = sizes > 0
    if max_rows >= int(present.sum()):
        base = present.astype(np.int64)
        counts = base + _largest_remainder((sizes - base).astype(np.float64), max_rows - base.sum())
    else:
        counts = _largest_remainder(sizes.astype(np.float64), max_rows)
    chosen = [
        rng.permutation(np.flatnonzero(strata == s))[:c]
        for s, c in enumerate(counts.tolist())
        if c > 0
    ]
    return np.sort(np.concatenate(chosen))


def stratified_split(
    strata: np.ndarray, fractions: tuple[float, float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (into ``strata``) of the train/val/test parts, each shuffled.

    Every stratum is cut in the given proportions (rounded, train first), so label and group
    rates agree across the parts and every group of the data is in the training part.
    """
    parts: list[list[np.ndarray]] = [[], [], []]
    cum = np.cumsum(fractions)
    for s in range(int(strata.max()) + 1):
        idx = rng.permutation(np.flatnonzero(strata == s))
        n = idx.size
        if n == 0:
            continue
        cuts = np.floor(cum * n + 0.5).astype(np.int64)
        cuts[0] = max(cuts[0], 1)
        cuts[1] = max(cuts[1], cuts[0])
        cuts[2] = n
        parts[0].append(idx[: cuts[0]])
        parts[1].append(idx[cuts[0] : cuts[1]])
        parts[2].append(idx[cuts[1] :])
    out = []
    for p in parts:
        joined = np.concatenate(p) if p else np.empty(0, dtype=np.int64)
        out.append(rng.permutation(joined))
    return out[0], out[1], out[2]


# -------------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class Preprocessor:
    """Feature encoding fitted on the training split: one-hot categoricals, standardised numbers.

    Missing numbers are imputed with the training mean (0 after standardising); missing
    categories become the category ``'missing'``; categories unseen in training encode as all
    zeros.
    """

    columns: tuple[str, ...]
    kinds: tuple[Literal["numerical", "categorical"], ...]
    means: Mapping[str, float]
    stds: Mapping[str, float]
    categories: Mapping[str, tuple[str, ...]]
    missing_values: tuple[str, ...]

    @property
    def feature_names(self) -> tuple[str, ...]:
        names: list[str] = []
        for col, kind in zip(self.columns, self.kinds, strict=True):
            if kind == "numerical":
                names.append(col)
            else:
                names.extend(f"{col}={c}" for c in self.categories[col])
        return tuple(names)

    @classmethod
    def fit(
        cls,
        table: Table,
        rows: np.ndarray,
        *,
        columns: Sequence[str],
        categorical: Sequence[str],
        numerical: Sequence[str],
        missing_values: Sequence[str],
        source: str,
    ) -> Preprocessor:
        kinds: list[Literal["numerical", "categorical"]] = []
        means: dict[str, float] = {}
        stds: dict[str, float] = {}
        cats: dict[str, tuple[str, ...]] = {}
        miss = list(missing_values)
        for col in columns:
            values = table[col]
            missing = np.isin(values, miss)
            floats = None if col in categorical else _parse_floats(values, missing)
            if col in numerical and floats is None:
                raise ValueError(
                    f"numerical: column {col!r} in {source} is not numeric; found the value "
                    f"{_first_non_number(values, missing)!r}"
                )
            if floats is not None and bool((~missing).any()):
                train = floats[rows]
                train = train[~np.isnan(train)]
                if train.size == 0:
                    logger.warning("feature %r has no value in the training split; set to 0", col)
                    mean, std = 0.0, 1.0
                else:
                    mean, std = float(train.mean()), float(train.std())
                    if not math.isfinite(std) or std == 0.0:
                        std = 1.0
                kinds.append("numerical")
                means[col], stds[col] = mean, std
            else:
                train_vals = np.where(missing[rows], MISSING_CATEGORY, values[rows])
                kinds.append("categorical")
                cats[col] = tuple(natural_sort(np.unique(train_vals).tolist()))
        return cls(tuple(columns), tuple(kinds), means, stds, cats, tuple(miss))

    def transform(self, table: Mapping[str, np.ndarray | Sequence[str]]) -> np.ndarray:
        """Encode rows given as text columns; returns a float32 array (rows, features)."""
        blocks: list[np.ndarray] = []
        n: int | None = None
        for col, kind in zip(self.columns, self.kinds, strict=True):
            if col not in table:
                raise ValueError(f"table: feature column {col!r} is missing")
            values = np.char.strip(np.asarray(table[col], dtype=str))
            if n is None:
                n = values.shape[0]
            elif values.shape[0] != n:
                raise ValueError(f"table: column {col!r} has {values.shape[0]} rows, expected {n}")
            missing = np.isin(values, list(self.missing_values))
            if kind == "numerical":
                floats = _parse_floats(values, missing)
                if floats is None:
                    raise ValueError(
                        f"table: numerical column {col!r} has the non-numeric value "
                        f"{_first_non_number(values, missing)!r}"
                    )
                z = (floats - self.means[col]) / self.stds[col]
                blocks.append(np.nan_to_num(z, nan=0.0).reshape(-1, 1))
            else:
                values = np.where(missing, MISSING_CATEGORY, values)
                cats = np.asarray(self.categories[col], dtype=str)
                blocks.append((values.reshape(-1, 1) == cats.reshape(1, -1)).astype(np.float64))
        if not blocks:
            return np.zeros((n or 0, 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1).astype(np.float32)


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
    """Validate, sub-sample, split and encode a text-column table."""
    source = name
    if isinstance(sensitive, str) or not sensitive:
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
    if max_rows is not None and (
        isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 1
    ):
        raise ValueError(f"max_rows: expected a positive integer or None, got {max_rows!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed: expected an integer, got {seed!r}")

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

    miss = tuple(missing_values)
    y_all, pos_text = encode_target(
        table[target], column=target, positive=positive, missing_values=miss, source=source
    )
    group_ids: list[np.ndarray] = []
    names: dict[str, tuple[str, ...]] = {}
    for col in sensitive:
        ids, gnames = encode_groups(
            table[col], column=col, labels=labels.get(col), missing_values=miss, source=source
        )
        group_ids.append(ids)
        names[col] = gnames
    sens_all = np.column_stack(group_ids)

    rng = np.random.default_rng(int(seed))
    n_total = y_all.shape[0]
    rows = np.arange(n_total)
    subsampled = max_rows is not None and n_total > max_rows
    if subsampled:
        assert max_rows is not None
        rows = stratified_subsample(strata_of(y_all, sens_all), int(max_rows), rng)
    y, sens = y_all[rows], sens_all[rows]
    for j, col in enumerate(sensitive):
        check_groups(sens[:, j], names[col], column=col, source=source, subsampled=subsampled)

    tr, va, te = stratified_split(strata_of(y, sens), fractions, rng)
    prep = Preprocessor.fit(
        table,
        rows[tr],
        columns=feature_cols,
        categorical=categorical,
        numerical=numerical,
        missing_values=miss,
        source=source,
    )
    feature_names = prep.feature_names
    X_all = prep.transform({c: table[c][rows] for c in feature_cols})

    def part(pos: np.ndarray) -> Split:
        return Split(
            X=torch.from_numpy(np.ascontiguousarray(X_all[pos])),
            y=torch.from_numpy(y[pos].reshape(-1, 1).copy()),
            sens=torch.from_numpy(np.ascontiguousarray(sens[pos])),
            rows=torch.from_numpy(rows[pos].astype(np.int64)),
            sensitive=tuple(sensitive),
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
        sensitive=tuple(sensitive),
        group_names=names,
        feature_names=feature_names,
        preprocessor=prep,
        seed=int(seed),
    )
    for part_name, sp in (("val", result.val), ("test", result.test)):
        for j, col in enumerate(sensitive):
            if len(sp) and bool(
                (torch.bincount(sp.sens[:, j], minlength=len(names[col])) == 0).any()
            ):
                logger.warning("%s: the %s split lacks some %r groups", name, part_name, col)
    logger.info("%s", result.summary())
    return result
