"""Tabular fairness datasets, ready for a network.

``load_adult()`` and ``load_dutch()`` read census data shipped inside the package (nothing is
downloaded, ever); ``load_csv()`` does the same for a user's CSV or Parquet file. Each returns a
:class:`DatasetSplits` with seeded, stratified train / validation / test :class:`Split` parts.
"""

from ._core import DEFAULT_MISSING, MISSING_CATEGORY, DatasetSplits, Preprocessor, Split
from .loaders import DEFAULT_SPLIT, data_path, load_adult, load_csv, load_dutch

__all__ = [
    "DEFAULT_MISSING",
    "DEFAULT_SPLIT",
    "MISSING_CATEGORY",
    "DatasetSplits",
    "Preprocessor",
    "Split",
    "data_path",
    "load_adult",
    "load_csv",
    "load_dutch",
]
