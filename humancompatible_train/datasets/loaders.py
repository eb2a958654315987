"""Loaders for the bundled Adult and Dutch census data and for a user's CSV or Parquet file.

Nothing is ever downloaded: the bundled files live in ``humancompatible_train/datasets/data``
(see ``PROVENANCE.md`` there). The bundled loaders and CSV files need only numpy and the
standard library; Parquet files and ``as_pandas=True`` need the ``pandas`` extra.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .._validation import fail
from ._core import (
    DEFAULT_MISSING,
    DatasetSplits,
    Table,
    build_splits,
    frame_to_columns,
    read_csv_columns,
    read_parquet_columns,
    require_pandas,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["load_adult", "load_dutch", "load_csv", "DEFAULT_SPLIT", "data_path"]

#: Default (train, validation, test) fractions.
DEFAULT_SPLIT: tuple[float, float, float] = (0.6, 0.2, 0.2)

_ADULT_SENSITIVE = ("sex", "race")
_DUTCH_SENSITIVE = ("sex", "age")

#: Adult group order: the larger group first.
_ADULT_LABELS: dict[str, dict[str, str]] = {
    "sex": {"Male": "Male", "Female": "Female"},
    "race": {
        "White": "White",
        "Black": "Black",
        "Asian-Pac-Islander": "Asian-Pac-Islander",
        "Amer-Indian-Eskimo": "Amer-Indian-Eskimo",
        "Other": "Other",
    },
}

#: Dutch census 2001 (IPUMS-International coding): SEX 1 = male, 2 = female; AGE is a five-year
#: band, code k covering ages 5(k-1) to 5k-1 (codes 4..15 occur: 15-19 to 70-74).
_DUTCH_LABELS: dict[str, dict[str, str]] = {
    "sex": {"1": "Male", "2": "Female"},
    "age": {str(k): f"{5 * (k - 1)}-{5 * k - 1}" for k in range(4, 16)},
}


def data_path(filename: str) -> Path:
    """Path of a file bundled in ``humancompatible_train/datasets/data``."""
    ref = resources.files("humancompatible_train.datasets").joinpath("data", filename)
    path = Path(str(ref))
    if not path.is_file():  # pragma: no cover - broken installation
        raise FileNotFoundError(
            f"bundled data file {filename!r} is missing from the installation ({path}); "
            "reinstall humancompatible-train-toolkit (nothing is downloaded)"
        )
    return path


@functools.cache
def _bundled_table(filename: str) -> Table:
    """The parsed bundled file, kept for the process (parsing Adult takes about a second) and
    read-only, since every load shares it."""
    table = read_csv_columns(data_path(filename))
    for column in table.values():
        column.flags.writeable = False
    return table


def _sensitive_list(sensitive: str | Sequence[str], allowed: Sequence[str], name: str) -> list[str]:
    chosen = [sensitive] if isinstance(sensitive, str) else list(sensitive)
    bad = [s for s in chosen if s not in allowed]
    if not chosen or bad:
        raise ValueError(
            f"sensitive: {name} offers the sensitive attributes {list(allowed)!r}, "
            f"got {sensitive!r}"
        )
    return chosen


def _finish(result: DatasetSplits, as_pandas: bool) -> DatasetSplits | dict[str, pd.DataFrame]:
    if as_pandas:
        require_pandas("as_pandas=True")
        return result.to_pandas()
    return result


def load_adult(
    *,
    sensitive: str | Sequence[str] = "sex",
    split: Sequence[float] = DEFAULT_SPLIT,
    seed: int = 0,
    max_rows: int | None = None,
    include_sensitive: bool = False,
    as_pandas: bool = False,
) -> DatasetSplits | dict[str, pd.DataFrame]:
    """UCI Adult (1994 US census, 32,561 rows): predict income > 50K.

    Label 1 = ``income-per-year == '>50K'`` (positive rate 0.24). Sensitive attributes: ``'sex'``
    (default; groups Male, Female) and/or ``'race'`` (White, Black, Asian-Pac-Islander,
    Amer-Indian-Eskimo, Other). Features: the remaining 12 columns without ``fnlwgt`` (a census
    sampling weight, not a property of the person); categoricals one-hot with ``?`` encoded as the
    category ``missing``, numbers standardised with training-split statistics.

    Args:
        sensitive: one attribute name or a list of them.
        split: (train, validation, test) fractions; the split is stratified by label and groups.
        seed: seed of the sub-sampling and the split.
        max_rows: use a stratified random sample of at most this many rows (quick runs, tests).
        include_sensitive: also use the sensitive attributes as features.
        as_pandas: return ``{'train', 'val', 'test'}`` pandas data frames instead (needs pandas).
    """
    chosen = _sensitive_list(sensitive, _ADULT_SENSITIVE, "load_adult")
    result = build_splits(
        _bundled_table("adult.csv.gz"),
        name="adult",
        target="income-per-year",
        positive=">50K",
        sensitive=chosen,
        group_labels={s: _ADULT_LABELS[s] for s in chosen},
        features=None,
        drop=("fnlwgt",),
        categorical=(),
        numerical=(),
        include_sensitive=include_sensitive,
        missing_values=("?", ""),
        split=split,
        seed=seed,
        max_rows=max_rows,
    )
    return _finish(result, as_pandas)


def load_dutch(
    *,
    sensitive: str | Sequence[str] = "sex",
    split: Sequence[float] = DEFAULT_SPLIT,
    seed: int = 0,
    max_rows: int | None = None,
    include_sensitive: bool = False,
    as_pandas: bool = False,
) -> DatasetSplits | dict[str, pd.DataFrame]:
    """Dutch census 2001 (60,420 rows, 12 coded columns): predict a high-level occupation.

    Label 1 = ``occupation == '2_1'`` (versus ``'5_4_9'``). Sensitive attributes: ``'sex'``
    (default; code 1 = Male, 2 = Female) and/or ``'age'`` (12 five-year bands, ``'15-19'`` to
    ``'70-74'``). All other columns are categorical codes and are one-hot encoded.

    Arguments as for :func:`load_adult`.
    """
    chosen = _sensitive_list(sensitive, _DUTCH_SENSITIVE, "load_dutch")
    table = _bundled_table("dutch.csv.gz")
    features = [c for c in table if c != "occupation"]
    result = build_splits(
        table,
        name="dutch",
        target="occupation",
        positive="2_1",
        sensitive=chosen,
        group_labels={s: _DUTCH_LABELS[s] for s in chosen},
        features=None,
        drop=(),
        categorical=features,
        numerical=(),
        include_sensitive=include_sensitive,
        missing_values=("",),
        split=split,
        seed=seed,
        max_rows=max_rows,
    )
    return _finish(result, as_pandas)


_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


def load_csv(
    path: str | os.PathLike[str] | pd.DataFrame,
    *,
    target: str,
    sensitive: str | Sequence[str],
    positive: str | float | None = None,
    features: Sequence[str] | None = None,
    drop: Sequence[str] = (),
    categorical: Sequence[str] = (),
    numerical: Sequence[str] = (),
    group_labels: Mapping[str, Mapping[str, str]] | None = None,
    include_sensitive: bool = False,
    missing_values: Sequence[str] = DEFAULT_MISSING,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    split: Sequence[float] = DEFAULT_SPLIT,
    seed: int = 0,
    max_rows: int | None = None,
    as_pandas: bool = False,
) -> DatasetSplits | dict[str, pd.DataFrame]:
    """Load a user's table (CSV, gzip CSV, TSV or Parquet, or a pandas DataFrame) like the
    bundled datasets.

    CSV files are read with the standard library; Parquet files (``.parquet``, ``.pq``) and data
    frames need the ``pandas`` extra.

    Args:
        path: the file, or a pandas DataFrame.
        target: the binary target column.
        sensitive: the sensitive column(s); each row's group is its (stripped) text, or the name
            that ``group_labels`` gives it.
        positive: the target value encoded as 1; may be omitted for 0/1 targets.
        features: the feature columns (default: all but target, ``drop`` and, unless
            ``include_sensitive``, the sensitive columns).
        drop: columns not used as features.
        categorical: columns one-hot encoded even if they look numeric (e.g. codes).
        numerical: columns that must be numeric (an error names a non-numeric value).
            Other columns are numerical when every non-missing value parses as a number.
        group_labels: ``{column: {raw value: readable name}}``; fixes the group order, and every
            value of the column must be listed.
        include_sensitive: also use the sensitive columns as features.
        missing_values: cell texts read as missing. Missing numbers get the training mean,
            missing categories the category ``'missing'``; a missing target or group is an error.
            A number cell that is not finite (``inf``, ``1e400``, a ``nan`` text not listed
            here) is an error, never an infinite feature.
        delimiter: CSV field separator (default ``','``, tab for ``.tsv``).
        encoding: text encoding of a CSV file (default UTF-8, with or without a byte-order
            mark), e.g. ``'latin-1'`` or ``'cp1252'``.
        split, seed, max_rows, as_pandas: as for :func:`load_adult`.

    Raises:
        FileNotFoundError: ``path`` does not exist (other :class:`OSError`: it cannot be read).
        ValueError: a named column is missing, the target is not binary, ``positive`` is not one
            of its values, a group is empty or unlabelled, a number is not finite, the data are
            too small for non-empty validation and test parts, an argument is malformed, or the
            file is not readable as a table (corrupt or truncated gzip data, text not in
            ``encoding``, a field beyond the csv module's limit, a ragged line). Every message
            names the file and, where it applies, the column, row and value.
    """
    if hasattr(path, "columns") and hasattr(path, "iloc"):
        table = frame_to_columns(path, source="the data frame")  # type: ignore[arg-type]
        name = "dataframe"
    elif not isinstance(path, (str, os.PathLike)):
        raise fail("path", "a file path or a pandas DataFrame", path)
    else:
        p = Path(path)
        suffixes = p.name.lower()
        if suffixes.endswith(_PARQUET_SUFFIXES):
            table = read_parquet_columns(p)
        else:
            table = read_csv_columns(p, delimiter=delimiter, encoding=encoding)
        name = p.name
    result = build_splits(
        table,
        name=name,
        target=target,
        positive=positive,
        sensitive=[sensitive] if isinstance(sensitive, str) else sensitive,
        group_labels=group_labels,
        features=features,
        drop=drop,
        categorical=categorical,
        numerical=numerical,
        include_sensitive=include_sensitive,
        missing_values=missing_values,
        split=split,
        seed=seed,
        max_rows=max_rows,
    )
    return _finish(result, as_pandas)
