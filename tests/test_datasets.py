"""Tests of humancompatible_train.datasets: shapes, splits, leakage, group names, errors."""

from __future__ import annotations

import gzip
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from humancompatible_train.datasets import (
    DatasetSplits,
    data_path,
    load_adult,
    load_csv,
    load_dutch,
)


def _rows(ds: DatasetSplits) -> tuple[set[int], set[int], set[int]]:
    return (set(ds.train.rows.tolist()), set(ds.val.rows.tolist()), set(ds.test.rows.tolist()))


def _check_split(ds: DatasetSplits, n_total: int) -> None:
    tr, va, te = _rows(ds)
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert len(tr) + len(va) + len(te) == n_total
    for part in (ds.train, ds.val, ds.test):
        n = len(part)
        assert part.X.dtype == torch.float32 and part.X.shape == (n, ds.n_features)
        assert part.y.dtype == torch.float32 and part.y.shape == (n, 1)
        assert set(part.y.unique().tolist()) <= {0.0, 1.0}
        assert part.sens.dtype == torch.int64 and part.sens.shape == (n, len(ds.sensitive))
        assert torch.isfinite(part.X).all()
    assert len(ds.feature_names) == ds.n_features
    assert abs(len(tr) / n_total - 0.6) < 0.01 and abs(len(te) / n_total - 0.2) < 0.01


# ----------------------------------------------------------------------------- bundled data
def test_bundled_files_are_small_and_documented() -> None:
    total = sum(data_path(f).stat().st_size for f in ("adult.csv.gz", "dutch.csv.gz"))
    assert total < 3_000_000
    text = data_path("PROVENANCE.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in text and "Žliobaitė" in text


def test_adult_full_shapes_rates_and_groups() -> None:
    ds = load_adult()
    _check_split(ds, 32_561)
    assert ds.group_names == {"sex": ("Male", "Female")}
    assert repr(ds).startswith("DatasetSplits(name='adult', train=19536 rows")
    assert ds.positive == ">50K" and ds.target == "income-per-year"
    names = set(ds.feature_names)
    assert "fnlwgt" not in names and not any(n.startswith("sex") for n in names)
    assert "workclass=missing" in names and "workclass=?" not in names
    assert "age" in names and "race=White" in names
    for part in (ds.train, ds.val, ds.test):  # stratified: same label and group rates
        assert abs(float(part.y.mean()) - 0.2408) < 0.005
        share_male = float((part.groups() == 0).float().mean())
        assert abs(share_male - 21_790 / 32_561) < 0.005


def test_adult_scaler_is_fitted_on_training_rows_only() -> None:
    ds = load_adult(max_rows=3000, seed=3)
    with gzip.open(data_path("adult.csv.gz"), "rt", encoding="utf-8") as fh:
        header = fh.readline().strip().split(",")
        ages = np.array([float(line.split(",")[header.index("age")]) for line in fh])
    train_rows = ds.train.rows.numpy()
    assert ds.preprocessor.means["age"] == pytest.approx(ages[train_rows].mean())
    assert ds.preprocessor.stds["age"] == pytest.approx(ages[train_rows].std())
    assert ds.preprocessor.means["age"] != pytest.approx(ages[ds.test.rows.numpy()].mean())
    j = ds.feature_names.index("age")
    assert float(ds.train.X[:, j].mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(ds.train.X[:, j].std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_adult_race_and_two_attributes() -> None:
    ds = load_adult(sensitive=["sex", "race"], max_rows=2000)
    _check_split(ds, 2000)
    assert ds.group_names["race"] == (
        "White",
        "Black",
        "Asian-Pac-Islander",
        "Amer-Indian-Eskimo",
        "Other",
    )
    assert ds.train.onehot().shape == (len(ds.train), 7)
    assert torch.equal(ds.train.onehot().sum(dim=1), torch.full((len(ds.train),), 2.0))
    assert torch.equal(ds.train.groups("race"), ds.train.sens[:, 1])
    # every group, even the smallest, reaches the training part
    assert set(ds.train.groups("race").tolist()) == set(range(5))


def test_dutch_groups_and_rates() -> None:
    ds = load_dutch()
    _check_split(ds, 60_420)
    assert ds.group_names == {"sex": ("Male", "Female")}
    assert ds.positive == "2_1"
    rates = ds.train.positive_rates()
    assert rates["Male"] == pytest.approx(0.626, abs=0.01)
    assert rates["Female"] == pytest.approx(0.327, abs=0.01)
    assert all(n.split("=")[0] != "sex" for n in ds.feature_names)
    assert "edu_level=5" in ds.feature_names  # codes are one-hot, not numbers


def test_dutch_age_groups_survive_subsampling() -> None:
    ds = load_dutch(sensitive="age", max_rows=300, seed=1)
    names = ds.group_names["age"]
    assert names[0] == "15-19" and names[-1] == "70-74" and len(names) == 12
    assert set(ds.train.groups().tolist()) == set(range(12))
    assert len(ds.train) + len(ds.val) + len(ds.test) == 300


def test_seed_determines_the_split() -> None:
    a, b, c = (load_dutch(max_rows=500, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.train.rows, b.train.rows) and torch.equal(a.test.X, b.test.X)
    assert not torch.equal(a.train.rows.sort().values, c.train.rows.sort().values)


def test_tensor_dataset_and_loader() -> None:
    ds = load_adult(max_rows=400)
    x, s, y = ds.train.tensor_dataset()[0]
    assert x.shape == (ds.n_features,) and s.shape == (2,) and y.shape == (1,)
    x, s, y = ds.train.tensor_dataset(sens="ids")[:5]
    assert s.shape == (5,) and s.dtype == torch.int64
    with pytest.raises(ValueError, match="sens"):
        ds.train.tensor_dataset(sens="bad")  # type: ignore[arg-type]


def test_as_pandas() -> None:
    pytest.importorskip("pandas")
    frames = load_adult(max_rows=500, as_pandas=True)
    assert set(frames) == {"train", "val", "test"}
    train = frames["train"]
    assert list(train["sex"].cat.categories) == ["Male", "Female"]
    assert set(train["label"].unique()) <= {0, 1}
    assert train.shape[1] == len(load_adult(max_rows=500).feature_names) + 2


def test_nothing_is_downloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    load_adult(max_rows=200)
    load_dutch(max_rows=200)


def test_bundled_loaders_do_not_import_pandas() -> None:
    code = (
        "import sys; from humancompatible_train.datasets import load_adult, load_dutch; "
        "load_adult(max_rows=100); load_dutch(max_rows=100); "
        "assert 'pandas' not in sys.modules, 'pandas imported'; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_bad_loader_arguments() -> None:
    with pytest.raises(ValueError, match=r"sensitive: load_adult offers .*'sex', 'race'.*'age'"):
        load_adult(sensitive="age")
    with pytest.raises(ValueError, match="split"):
        load_adult(split=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="max_rows"):
        load_dutch(max_rows=0)


# ------------------------------------------------------------------------------- user files
def _write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _toy_rows(n: int = 200, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    lines = ["income, hours ,job,gender,outcome"]
    for i in range(n):
        job = "?" if i % 17 == 0 else str(rng.choice(["a", "b", "c"]))
        hours = "" if i % 23 == 0 else f"{rng.normal(40, 10):.1f}"
        gender = "F" if i % 3 == 0 else "M"
        outcome = "yes" if rng.random() < 0.4 else "no"
        lines.append(f"{rng.integers(1, 100) * 1000},{hours},{job},{gender},{outcome}")
    return lines


def test_load_csv_encodes_types_and_missing(tmp_path: Path) -> None:
    path = _write(tmp_path, "\n".join(_toy_rows()) + "\n")
    ds = load_csv(path, target="outcome", sensitive="gender", positive="yes")
    _check_split(ds, 200)
    assert ds.group_names == {"gender": ("F", "M")}  # natural order without labels
    assert ds.feature_names[:2] == ("income", "hours")  # header names are stripped
    assert "job=missing" in ds.feature_names and "job=a" in ds.feature_names
    assert ds.preprocessor.kinds == ("numerical", "numerical", "categorical")
    assert torch.isfinite(ds.train.X).all()  # the missing hours were imputed


def test_load_csv_gzip_labels_and_numeric_target(tmp_path: Path) -> None:
    lines = [ln.replace(",yes", ",1").replace(",no", ",0") for ln in _toy_rows()]
    path = _write(tmp_path, "\n".join(lines), name="d.csv.gz")
    ds = load_csv(
        path,
        target="outcome",
        sensitive=["gender"],
        group_labels={"gender": {"M": "man", "F": "woman"}},
        categorical=["income"],
        include_sensitive=True,
        max_rows=120,
    )
    assert ds.positive == "1"  # 0/1 targets need no `positive`
    assert ds.group_names["gender"] == ("man", "woman")
    assert "gender=F" in ds.feature_names
    assert ds.preprocessor.kinds[0] == "categorical" and ds.feature_names[0].startswith("income=")
    assert len(ds.train) + len(ds.val) + len(ds.test) == 120


def test_load_csv_no_leakage_of_test_rows(tmp_path: Path) -> None:
    lines = _toy_rows(300, seed=4)
    path = _write(tmp_path, "\n".join(lines))
    first = load_csv(path, target="outcome", sensitive="gender", positive="yes", seed=5)
    # Change the features of every validation/test row drastically: nothing fitted may move.
    held_out = set(first.test.rows.tolist()) | set(first.val.rows.tolist())
    changed = [lines[0]]
    for i, line in enumerate(lines[1:]):
        f = line.split(",")
        if i in held_out:
            f[0], f[1], f[2] = "99999999", "-5000", "zzz"
        changed.append(",".join(f))
    path.write_text("\n".join(changed), encoding="utf-8")
    second = load_csv(path, target="outcome", sensitive="gender", positive="yes", seed=5)
    assert torch.equal(first.train.rows, second.train.rows)
    assert torch.equal(first.train.X, second.train.X)
    assert first.preprocessor == second.preprocessor
    assert "job=zzz" not in second.feature_names  # unseen category: all-zero encoding
    assert not torch.equal(first.test.X, second.test.X)


def test_load_csv_parquet_and_dataframe(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({"x": np.arange(60.0), "s": ["a", "b", "c"] * 20, "t": [True, False] * 30})
    frame.loc[5, "x"] = np.nan
    frame.to_parquet(tmp_path / "d.parquet")
    ds = load_csv(tmp_path / "d.parquet", target="t", sensitive="s", positive="True")
    assert ds.group_names == {"s": ("a", "b", "c")} and ds.feature_names == ("x",)
    ds2 = load_csv(frame, target="t", sensitive="s", positive="True")
    assert torch.equal(ds.train.X, ds2.train.X)


def test_preprocessor_transforms_new_rows() -> None:
    ds = load_adult(max_rows=500)
    cols = {c: ["?"] for c in ds.preprocessor.columns}
    cols["age"] = ["38"]
    row = ds.preprocessor.transform(cols)
    assert row.shape == (1, ds.n_features) and row.dtype == np.float32


# ----------------------------------------------------------------------------------- errors
@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return _write(tmp_path, "\n".join(_toy_rows(60)))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (
            {"target": "label", "sensitive": "gender"},
            r"target: column 'label' not found .*available columns: \['income', 'hours'",
        ),
        (
            {"target": "outcome", "sensitive": ["gender", "race"], "positive": "yes"},
            "sensitive: column 'race' not found",
        ),
        (
            {"target": "income", "sensitive": "gender", "positive": 1000},
            r"target column 'income' .* must be binary .*found \d+: \['\d+', .*more\)\]",
        ),
        (
            {"target": "job", "sensitive": "gender", "positive": "a"},
            r"target column 'job' .*4 missing values \(e\.g\. at data rows \[0, 17, 34, 51\]\)",
        ),
        (
            {"target": "outcome", "sensitive": "gender", "positive": ">50K"},
            r"positive='>50K' is not a value of target column 'outcome'.*\['no', 'yes'\]",
        ),
        (
            {"target": "outcome", "sensitive": "gender"},
            r"positive: give the target value .*'outcome' has values \['no', 'yes'\]",
        ),
        (
            {
                "target": "outcome",
                "sensitive": "gender",
                "positive": "yes",
                "group_labels": {"gender": {"M": "male", "F": "female", "X": "other"}},
            },
            r"sensitive column 'gender' .*group\(s\) \['other'\] have no rows.*'other': 0",
        ),
        (
            {
                "target": "outcome",
                "sensitive": "gender",
                "positive": "yes",
                "group_labels": {"gender": {"M": "male"}},
            },
            r"sensitive column 'gender' .*values without a group label: \['F'\]",
        ),
        (
            {"target": "outcome", "sensitive": "job", "positive": "yes"},
            r"sensitive column 'job' .*4 missing values \(texts \['\?'\]\)",
        ),
        (
            {"target": "outcome", "sensitive": "gender", "positive": "yes", "numerical": ["job"]},
            r"numerical: column 'job' .*not numeric; found the value '[abc]'",
        ),
        (
            {"target": "outcome", "sensitive": "gender", "positive": "yes", "features": ["nope"]},
            "features: column 'nope' not found",
        ),
        (
            {"target": "outcome", "sensitive": "outcome", "positive": "yes"},
            "cannot also be sensitive",
        ),
        (
            {"target": "outcome", "sensitive": "gender", "positive": "yes", "split": (1, 1)},
            "split: expected three",
        ),
    ],
)
def test_load_csv_errors(toy: Path, kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        load_csv(toy, **kwargs)  # type: ignore[arg-type]


def test_single_group_and_file_errors(tmp_path: Path) -> None:
    one = _write(tmp_path, "x,s,y\n1,a,0\n2,a,1\n3,a,0\n", name="one.csv")
    with pytest.raises(ValueError, match="sensitive column 's' .*single group 'a'"):
        load_csv(one, target="y", sensitive="s")
    ragged = _write(tmp_path, "x,s,y\n1,a,0\n2,b\n", name="ragged.csv")
    with pytest.raises(ValueError, match="line 3 has 2 fields, expected 3"):
        load_csv(ragged, target="y", sensitive="s")
    dup = _write(tmp_path, "x,x,y\n1,2,0\n", name="dup.csv")
    with pytest.raises(ValueError, match=r"duplicate column names .*\['x'\]"):
        load_csv(dup, target="y", sensitive="x")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_csv(tmp_path / "missing.csv", target="y", sensitive="s")
    missing_target = _write(tmp_path, "x,s,y\n1,a,0\n2,b,\n", name="mt.csv")
    with pytest.raises(ValueError, match="target column 'y' .*1 missing values"):
        load_csv(missing_target, target="y", sensitive="s")


# ------------------------------------------------------- bad cells and files (reliability)
def _numbers_file(tmp_path: Path, cells: list[str], name: str = "num.csv") -> Path:
    lines = ["age,sex,label"] + [
        f"{c},{'FM'[i % 2]},{('yes', 'no')[i % 3 == 0]}" for i, c in enumerate(cells)
    ]
    return _write(tmp_path, "\n".join(lines) + "\n", name=name)


@pytest.mark.parametrize("text", ["inf", "-inf", "Infinity", "1e400", "NAN"])
def test_non_finite_number_cells_are_refused(tmp_path: Path, text: str) -> None:
    cells = [str(20 + i) for i in range(60)]
    cells[7] = text
    path = _numbers_file(tmp_path, cells)
    with pytest.raises(ValueError, match=(rf"numerical column 'age' in num.csv has 1 non-finite "
                                          rf"number\(s\), e.g. '{text}' at data row 7; .*"
                                          r"missing_values")):
        load_csv(path, target="label", sensitive="sex", positive="yes")
    # Listed as missing, the cell is imputed: every feature finite, the others unchanged.
    ds = load_csv(path, target="label", sensitive="sex", positive="yes",
                  missing_values=("", text))
    X = torch.cat([ds.train.X, ds.val.X, ds.test.X])
    assert torch.isfinite(X).all()
    assert ds.preprocessor.means["age"] == pytest.approx(
        np.mean([20 + i for i in ds.train.rows.tolist() if i != 7]))


def test_huge_values_are_standardised_without_overflow(tmp_path: Path) -> None:
    ints = [(i * 7) % 23 - 11 for i in range(90)]
    path = _numbers_file(tmp_path, [f"{k}e306" for k in ints])
    ds = load_csv(path, target="label", sensitive="sex", positive="yes")
    # Truth from the small integers: z = (k - mean) / std over the training rows.
    k = np.array(ints, dtype=np.float64)
    train_k = k[ds.train.rows.numpy()]
    for part in (ds.train, ds.val, ds.test):
        expected = (k[part.rows.numpy()] - train_k.mean()) / train_k.std()
        np.testing.assert_allclose(part.X[:, 0].numpy(), expected, rtol=1e-5, atol=1e-6)
    pm = _numbers_file(tmp_path, ["1e308", "-1e308"] * 30, name="pm.csv")
    ds = load_csv(pm, target="label", sensitive="sex", positive="yes")
    assert set(torch.cat([ds.train.X, ds.val.X, ds.test.X])[:, 0].tolist()) == {-1.0, 1.0}


def test_far_values_are_clipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    ds = load_adult(max_rows=400)
    cols = {c: ["?", "?"] for c in ds.preprocessor.columns}
    cols["age"] = ["1e300", "-1e300"]
    with caplog.at_level("WARNING", logger="humancompatible_train"):
        row = ds.preprocessor.transform(cols)
    j = ds.feature_names.index("age")
    assert row[:, j].tolist() == [1e6, -1e6] and np.isfinite(row).all()
    assert "feature 'age': 2 value(s) lie more than 1e+06 training standard deviations" in \
        caplog.text


def test_tiny_data_never_gives_an_empty_part(tmp_path: Path) -> None:
    three = _write(tmp_path, "x,s,y\n1,a,0\n2,b,1\n3,a,1\n", name="three.csv")
    with pytest.raises(ValueError, match=r"three.csv: 3 rows give an empty validation and test "
                                         r"part \(train 3, validation 0, test 0 rows"):
        load_csv(three, target="y", sensitive="s")
    with pytest.raises(ValueError, match=r"adult: 5 rows give an empty test part .*raise max_rows"):
        load_adult(max_rows=5)
    # A part asked to be empty (fraction 0) is not an error.
    ds = load_csv(_write(tmp_path, "\n".join(_toy_rows(60))), target="outcome",
                  sensitive="gender", positive="yes", split=(0.8, 0.2, 0.0))
    assert len(ds.test) == 0 and len(ds.val) > 0


def test_unreadable_files_raise_value_errors_naming_the_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "bad.csv.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00garbage" * 40)
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(gzip.compress("\n".join(_toy_rows(60)).encode())[:50])
    for path in (corrupt, truncated):
        with pytest.raises(ValueError, match=rf"{path.name}': the file starts like gzip data "
                                             r"but cannot be decompressed \(.+\); it is corrupt"):
            load_csv(path, target="outcome", sensitive="gender")
    huge = _write(tmp_path, "a,b\n1," + "z" * 200_000 + "\n", name="huge.csv")
    with pytest.raises(ValueError, match=r"huge.csv: line 2: field larger than field limit "
                                         r"\(131072\).*a field longer than 131,072 characters"):
        load_csv(huge, target="a", sensitive="b")


def test_encodings(tmp_path: Path) -> None:
    text = "\n".join(_toy_rows(80)).replace(",a,", ",café,")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.csv': byte 0xe9 on line \d+ \(offset \d+\) is "
                                         r"not valid utf-8 text; .*encoding='latin-1'"):
        load_csv(latin, target="outcome", sensitive="gender", positive="yes")
    ds = load_csv(latin, target="outcome", sensitive="gender", positive="yes",
                  encoding="latin-1")
    assert "job=café" in ds.feature_names
    bom = tmp_path / "bom.csv"  # Excel's UTF-8 with a byte-order mark
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load_csv(bom, target="outcome", sensitive="gender", positive="yes"
                    ).feature_names[0] == "income"


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"encoding": "klingon"}, r"encoding: expected a text encoding .*, got 'klingon'"),
    ({"encoding": "rot13"}, r"encoding: expected a text encoding .*, got 'rot13'"),
    ({"delimiter": ";;"}, r"delimiter: expected one character .*, got ';;'"),
    ({"seed": -1}, r"seed: expected an int >= 0, got -1"),
    ({"seed": 1.5}, r"seed: expected an int >= 0, got 1.5"),
    ({"missing_values": None}, r"missing_values: expected a sequence of cell texts .*got None"),
    ({"missing_values": "?"}, r"missing_values: expected a sequence of cell texts .*got '\?'"),
    ({"max_rows": 0}, r"max_rows: expected a positive int, got 0"),
    ({"sensitive": 3}, r"sensitive: expected a non-empty list of column names, got 3"),
])
def test_bad_arguments_name_themselves(toy: Path, kwargs: dict[str, object], pattern: str
                                       ) -> None:
    args: dict[str, object] = {"target": "outcome", "sensitive": "gender", "positive": "yes"}
    with pytest.raises(ValueError, match=pattern):
        load_csv(toy, **{**args, **kwargs})  # type: ignore[arg-type]


def test_path_must_be_a_path() -> None:
    with pytest.raises(ValueError, match="path: expected a file path or a pandas DataFrame, "
                                         "got None"):
        load_csv(None, target="y", sensitive="s")  # type: ignore[arg-type]


def test_bundled_table_is_parsed_once_and_read_only() -> None:
    from humancompatible_train.datasets.loaders import _bundled_table

    a, b = _bundled_table("adult.csv.gz"), _bundled_table("adult.csv.gz")
    assert a is b and not a["age"].flags.writeable
    assert torch.equal(load_adult(max_rows=300, seed=2).train.X,
                       load_adult(max_rows=300, seed=2).train.X)
