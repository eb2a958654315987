"""Encoding a text-column table: the binary target, the sensitive groups, and the features
(one-hot categoricals, standardised numbers) fitted on the training rows only.

A number cell must spell a finite number: ``inf``, ``1e400`` (which overflows) or a ``nan`` text
that is not listed in ``missing_values`` is refused with the column, the row and the text, never
turned into an infinite or silently imputed feature. Means and standard deviations are computed
in float64 on values divided by the column's largest magnitude, so columns of huge values
(``1e308``) are standardised without overflow instead of being erased.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._read import Table

logger = logging.getLogger("humancompatible_train")

#: Cell texts read as "missing" unless the caller says otherwise.
DEFAULT_MISSING: tuple[str, ...] = ("", "?", "NA", "N/A", "NaN", "nan", "null", "None")
#: Category that missing values of a categorical feature are mapped to.
MISSING_CATEGORY = "missing"
#: Standardised features are clipped to this many training standard deviations (with a warning):
#: beyond it a value is a unit or data-entry error, and float32 would overflow long before.
CLIP_STDS = 1e6


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


def _finite_floats(
    values: np.ndarray, missing: np.ndarray, *, column: str, source: str, rows: np.ndarray | None
) -> np.ndarray | None:
    """:func:`_parse_floats`, refusing a present cell whose number is not finite (``rows``: the
    data row of each position, for the message)."""
    floats = _parse_floats(values, missing)
    if floats is None:
        return None
    bad = ~missing & ~np.isfinite(floats)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = f"data row {int(rows[i]) if rows is not None else i}"
        raise ValueError(
            f"numerical column {column!r} in {source} has {int(bad.sum())} non-finite "
            f"number(s), e.g. {str(values[i])!r} at {where}; features must be finite: add the "
            f"text to missing_values to impute it, or list the column in categorical"
        )
    return floats


def _mean_std(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of finite float64 values, without overflow: computed on
    ``x / max|x|`` and scaled back (both stay below ``max|x|``). A constant column gets std 1."""
    scale = float(np.abs(x).max())
    if scale == 0.0:
        return 0.0, 1.0
    xs = x / scale
    mean, std = float(xs.mean()) * scale, float(xs.std()) * scale
    return mean, (std if std > 0.0 and math.isfinite(std) else 1.0)


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


@dataclass(frozen=True)
class Preprocessor:
    """Feature encoding fitted on the training split: one-hot categoricals, standardised numbers.

    Missing numbers are imputed with the training mean (0 after standardising); missing
    categories become the category ``'missing'``; categories unseen in training encode as all
    zeros. A standardised value beyond :data:`CLIP_STDS` training standard deviations is clipped
    there, with a warning naming the column.
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
        """Decide each column's kind on the whole table and fit it on the training ``rows``."""
        kinds: list[Literal["numerical", "categorical"]] = []
        means: dict[str, float] = {}
        stds: dict[str, float] = {}
        cats: dict[str, tuple[str, ...]] = {}
        miss = list(missing_values)
        for col in columns:
            values = table[col]
            missing = np.isin(values, miss)
            floats = None
            if col not in categorical:
                floats = _finite_floats(values, missing, column=col, source=source, rows=None)
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
                    mean, std = _mean_std(train)
                kinds.append("numerical")
                means[col], stds[col] = mean, std
            else:
                train_vals = np.where(missing[rows], MISSING_CATEGORY, values[rows])
                kinds.append("categorical")
                cats[col] = tuple(natural_sort(np.unique(train_vals).tolist()))
        return cls(tuple(columns), tuple(kinds), means, stds, cats, tuple(miss))

    def transform(self, table: Mapping[str, np.ndarray | Sequence[str]]) -> np.ndarray:
        """Encode rows given as text columns; returns a float32 array (rows, features).

        Raises:
            ValueError: a column is missing or of another length, a numerical column holds a
                text that is not a number, or a number that is not finite.
        """
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
                floats = _finite_floats(values, missing, column=col, source="table", rows=None)
                if floats is None:
                    raise ValueError(
                        f"table: numerical column {col!r} has the non-numeric value "
                        f"{_first_non_number(values, missing)!r}"
                    )
                blocks.append(self._standardise(col, floats).reshape(-1, 1))
            else:
                values = np.where(missing, MISSING_CATEGORY, values)
                cats = np.asarray(self.categories[col], dtype=str)
                blocks.append((values.reshape(-1, 1) == cats.reshape(1, -1)).astype(np.float64))
        if not blocks:
            return np.zeros((n or 0, 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def _standardise(self, col: str, floats: np.ndarray) -> np.ndarray:
        """(x - mean) / std, as x/std - mean/std: each term stays finite for huge values."""
        mean, std = self.means[col], self.stds[col]
        with np.errstate(over="ignore", invalid="ignore"):
            z = floats / std - mean / std
            # Where both terms overflowed to the same infinity, x - mean still has the sign.
            direction = np.where(np.isnan(z), floats - mean, z)
        far = ~np.isnan(floats) & ~(np.abs(z) <= CLIP_STDS)
        if far.any():
            logger.warning(
                "feature %r: %d value(s) lie more than %.0e training standard deviations from "
                "the training mean; clipped there", col, int(far.sum()), CLIP_STDS)
            z = np.where(far, np.copysign(CLIP_STDS, direction), z)
        return np.nan_to_num(z, nan=0.0)
