"""The command line end to end on small slices, and every error path."""

import json
import logging
import subprocess
import sys

import matplotlib.image as mpimg
import pytest

from humancompatible_train import cli


def run(tmp_path, *args):
    return cli.main([*args, "--out", str(tmp_path / "out"), "--quiet"])


def test_train_writes_report_history_and_plots(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="humancompatible_train")
    code = run(tmp_path, "train", "--max-rows", "600", "--epochs", "2", "--algorithm",
               "primal-dual", "--constraint", "equalized_odds")
    assert code == 0
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"settings", "versions", "data", "constraint", "results"}
    assert set(report["results"]) == {"primal-dual", "unconstrained"}
    res = report["results"]["primal-dual"]
    assert {"accuracy", "max_gap", "p_rule", "meets_eps", "metrics"} <= set(res)
    assert report["constraint"]["rows"] == ["|TPR[Male] - TPR[Female]|",
                                            "|FPR[Male] - FPR[Female]|"]
    lines = (out / "history.csv").read_text().splitlines()
    assert lines[0].startswith("algorithm,epoch") and len(lines) == 1 + 2 * 2
    for png in ("history_primal-dual.png", "groups_unconstrained.png", "tradeoff.png"):
        assert mpimg.imread(out / png).shape[2] in (3, 4)
    assert "per group on the test split" in caplog.text and "p%-rule" in caplog.text


def test_compare_and_decision_proxy(tmp_path):
    code = run(tmp_path, "compare", "--data", "dutch", "--max-rows", "500", "--epochs", "1",
               "--algorithms", "unconstrained", "alm", "alm-hpr", "--on", "decisions",
               "--no-plots")
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert list(report["results"]) == ["unconstrained", "alm", "alm-hpr"]


def test_projection_algorithm(tmp_path):
    assert run(tmp_path, "compare", "--max-rows", "800", "--epochs", "1", "--algorithms",
               "projection", "--no-plots") == 0
    res = json.loads((tmp_path / "out" / "report.json").read_text())["results"]["projection"]
    assert res["gap_probabilities"] <= 0.05 + 1e-4  # served as one batch: exact


def test_projection_refuses_other_statistics(tmp_path, capsys):
    assert run(tmp_path, "train", "--algorithm", "projection", "--constraint",
               "predictive_parity") == 2
    assert "--algorithm projection enforces" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "humancompatible_train", "train", "--max-rows",
                           "300", "--epochs", "1", "--no-plots", "--quiet", "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "report.json").exists()


def test_csv_data(tmp_path):
    rows = ["age,job,sex,label"] + [f"{20 + i % 40},{'ab'[i % 2]},{'fm'[i % 3 == 0]},"
                                    f"{'yes' if i % 4 == 0 else 'no'}" for i in range(300)]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows))
    code = run(tmp_path, "train", "--data", str(path), "--target", "label", "--positive",
               "yes", "--sensitive", "sex", "--epochs", "1", "--no-plots")
    assert code == 0


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "nowhere"], "--data: expected 'adult', 'dutch' or an existing file"),
    (["train", "--eps", "-0.1"], "--eps: expected a number in [0, 1)"),
    (["train", "--algorithm", "sgd"], "--algorithm: expected one of"),
    (["train", "--constraint", "parity"], "--constraint: expected one of"),
    (["train", "--sensitive", "height"], "height"),
    (["train", "--epochs", "0"], "--epochs: expected a positive int"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--device", "nosuchdevice"], "--device"),
])
def test_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    assert run(tmp_path, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_csv_missing_column_exits_2(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,0\n2,1\n")
    assert run(tmp_path, "train", "--data", str(path), "--target", "y", "--sensitive",
               "a") == 2
    assert "y" in capsys.readouterr().err


def test_ctrl_c_keeps_what_was_written(tmp_path, monkeypatch):
    real = cli._train_one
    calls = []

    def interrupted(algorithm, *a, **k):
        calls.append(algorithm)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(algorithm, *a, **k)

    monkeypatch.setattr(cli, "_train_one", interrupted)
    code = run(tmp_path, "train", "--max-rows", "300", "--epochs", "1", "--no-plots")
    assert code == 130
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert list(report["results"]) == ["alm"]
