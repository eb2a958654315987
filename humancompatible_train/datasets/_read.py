"""Reading tables with the standard library: (gzip) CSV/TSV text, and Parquet or data frames
through pandas (imported lazily).

A table is held as ``dict[column name, numpy array of str]``; every value is the stripped text of a
cell. Every failure of the file itself (corrupt or truncated gzip data, text that is not in the
given encoding, a field beyond the csv module's limit, a ragged line) is a :class:`ValueError` that
names the file and where in it; a missing or unreadable file is the :class:`OSError` the system
gave, which names the path.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validation import fail

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

Table = dict[str, np.ndarray]

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


def check_encoding(encoding: Any, name: str = "encoding") -> str:
    """The name of a text encoding Python knows (``'utf-8'``, ``'latin-1'``, ``'cp1252'``...)."""
    if isinstance(encoding, str):
        try:
            try:  # refuses codecs that are not bytes -> text (rot13, base64)
                b"a".decode(encoding)
            except UnicodeDecodeError:  # a text encoding in which one byte is incomplete
                pass
            return codecs.lookup(encoding).name
        except LookupError:
            pass
    raise fail(name, "a text encoding such as 'utf-8' or 'latin-1'", encoding)


def check_delimiter(delimiter: Any) -> str:
    """One character that can separate fields (not a quote or a line break)."""
    if isinstance(delimiter, str) and len(delimiter) == 1 and delimiter not in '"\r\n':
        return delimiter
    raise fail("delimiter", "one character such as ',' or '\\t'", delimiter)


def read_csv_columns(
    path: str | os.PathLike[str], *, delimiter: str | None = None, encoding: str = "utf-8"
) -> Table:
    """Read a (optionally gzip-compressed) delimited text file with a header row."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {str(p)!r}")
    name = p.name.lower()
    if delimiter is None:
        delimiter = "\t" if name.endswith((".tsv", ".tsv.gz", ".tab")) else ","
    delimiter = check_delimiter(delimiter)
    codec = check_encoding(encoding)
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise ValueError(
                f"{str(p)!r}: the file starts like gzip data but cannot be decompressed ({exc}); "
                "it is corrupt or truncated"
            ) from None
    try:
        # A UTF-8 byte-order mark (Excel writes one) is not part of the first column's name.
        text = raw.decode("utf-8-sig" if codec == "utf-8" else codec)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(
            f"{str(p)!r}: byte 0x{raw[exc.start]:02x} on line {line} (offset {exc.start}) is not "
            f"valid {encoding} text; give the file's encoding, e.g. encoding='latin-1' "
            "(on the command line: --encoding latin-1)"
        ) from None
    return parse_csv_text(text, source=str(p), delimiter=delimiter)


def parse_csv_text(text: str, *, source: str, delimiter: str = ",") -> Table:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=check_delimiter(delimiter))
    header: list[str] | None = None
    rows: list[list[str]] = []
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if header is None:
                header = [h.strip() for h in row]
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{source}: line {reader.line_num} has {len(row)} fields, expected "
                    f"{len(header)} (the number of header columns)"
                )
            rows.append(row)
    except csv.Error as exc:
        hint = ""
        if "field limit" in str(exc):
            hint = (f" (a field longer than {csv.field_size_limit():,} characters: is this a "
                    f"delimited text file, and is the delimiter {delimiter!r} right?)")
        raise ValueError(f"{source}: line {reader.line_num}: {exc}{hint}") from None
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
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"{str(p)!r}: not a readable Parquet file ({exc})") from None
    return frame_to_columns(frame, source=str(p))
