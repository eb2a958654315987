"""The command line end to end on small slices, and every error path.

Most runs are in-process (``cli.main([...])``) on a tiny CSV or a few hundred rows of the
bundled data; one subprocess checks the module entry point. Argument errors are asserted to
happen before any data is read (the loaders are replaced by functions that fail the test).
"""

import gzip
import json
import logging
import signal
import subprocess
import sys

import matplotlib.image as mpimg
import pytest
import torch

from humancompatible_train import _cli_report, _cli_train, cli


def strict_json(path):
    """RFC 8259: NaN / Infinity tokens are not JSON."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


def run(tmp_path, *args):
    return cli.main([*args, "--out", str(tmp_path / "out"), "--quiet"])


def report_of(tmp_path):
    return strict_json(tmp_path / "out" / "report.json")


def toy_csv(tmp_path, n=240, name="toy.csv", cell=None):
    """A small file: numbers, a category, groups a/b, a yes/no label; ``cell`` replaces the
    first row's ``x`` value."""
    lines = ["x,job,grp,label"]
    for i in range(n):
        x = cell if (cell is not None and i == 0) else str(20 + (7 * i) % 41)
        lines.append(f"{x},{'uvw'[i % 3]},{'ab'[(i // 2) % 2]},{'yes' if i % 5 < 2 else 'no'}")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def csv_args(path):
    return ["--data", str(path), "--target", "label", "--positive", "yes", "--sensitive", "grp"]


# ----------------------------------------------------------------------------------- runs
def test_train_reports_every_split_on_probabilities_and_decisions(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="humancompatible_train")
    code = run(tmp_path, "train", "--max-rows", "600", "--epochs", "2", "--algorithm",
               "primal-dual", "--constraint", "equalized_odds")
    assert code == 0
    out = tmp_path / "out"
    report = report_of(tmp_path)
    assert report["status"] == "complete" and report["threads"] == 1
    assert set(report["results"]) == {"primal-dual", "unconstrained"}
    # Trained on the linear (unbiased) rows, one per ordered pair of groups.
    assert report["constraint"]["rows"] == [
        "TPR[Male] - TPR[Female]", "TPR[Female] - TPR[Male]",
        "FPR[Male] - FPR[Female]", "FPR[Female] - FPR[Male]"]
    assert report["data"]["rows"] == {"train": 360, "validation": 120, "test": 120}
    for res in report["results"].values():
        assert res["status"] == "complete" and res["selected_epoch"] in (1, 2)
        # Group thresholds bound positive rates, not equalized odds: decisions stay at 0.5.
        assert res["thresholds"] is None and res["decision_rule"].startswith("p >= 0.5")
        assert set(res["splits"]) == {"train", "validation", "test"}
        for split in res["splits"].values():
            by_group = split["metrics"]["by_group"]
            # The gaps against GroupMetrics' own per-group rates (an independent computation).
            for view, (tpr, fpr) in (("probabilities", ("soft_tpr", "soft_fpr")),
                                     ("decisions", ("tpr", "fpr")),
                                     ("decisions_at_0.5", ("tpr", "fpr"))):
                expected = max(abs(by_group[m][0] - by_group[m][1]) for m in (tpr, fpr))
                assert split["gap"][view] == pytest.approx(expected, abs=1e-5)
                assert split["meets_eps"][view] == (expected <= 0.05)
            assert split["accuracy"] == split["accuracy_at_0.5"]
        test = res["splits"]["test"]
        assert res["max_gap"] == test["gap"]["probabilities"]
        assert res["accuracy"] == test["accuracy"] and res["p_rule"] == test["p_rule"]
    assert "not equalized_odds" in report["results"]["primal-dual"]["decision_rule"]
    assert set(report["files"]) == {p.name for p in out.iterdir()}
    lines = (out / "history.csv").read_text().splitlines()
    assert lines[0].startswith("algorithm,epoch") and len(lines) == 1 + 2 * 2
    for png in ("history_primal-dual.png", "groups_unconstrained.png", "tradeoff.png"):
        assert mpimg.imread(out / png).shape[2] in (3, 4)
    text = caplog.text
    assert "threads 1" in text and "validation" in text and "gap dec" in text
    assert "gap@0.5" in text
    assert "per group on the test split" in text and "p%-rule" in text


def test_strict_json_even_where_metrics_are_undefined(tmp_path, monkeypatch):
    def no_positives(setup):  # a served model that never predicts 1: PPV is 0/0
        return _cli_train.Trained(lambda split: torch.full((len(split), 1), -5.0),
                                  epochs_run=1, selected_epoch=1)

    monkeypatch.setattr(_cli_train, "PROCEDURE", no_positives)
    assert run(tmp_path, *csv_args(toy_csv(tmp_path)), "--no-plots") == 0
    report = report_of(tmp_path)
    test = report["results"]["adaptive"]["splits"]["test"]
    assert test["metrics"]["by_group"]["ppv"] == [None, None]  # NaN, written as null
    assert test["gap"] == {"probabilities": 0.0, "decisions": 0.0, "decisions_at_0.5": 0.0}
    text = (tmp_path / "out" / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text


def test_compare_and_decision_proxy(tmp_path):
    algorithms = ["unconstrained", "alm", "alm-hpr", "nupi", "ialm", "pbm", "ssg"]
    code = run(tmp_path, "compare", "--data", "dutch", "--max-rows", "500", "--epochs", "2",
               "--algorithms", *algorithms, "--on", "decisions", "--no-plots")
    assert code == 0
    report = report_of(tmp_path)
    assert list(report["results"]) == algorithms
    assert all(r["status"] == "complete" for r in report["results"].values())
    res = report["results"]["alm"]
    assert res["max_gap"] == res["splits"]["test"]["gap"]["decisions"]  # --on decisions


def test_projection_algorithm(tmp_path):
    assert run(tmp_path, "compare", "--max-rows", "800", "--epochs", "1", "--algorithms",
               "projection", "--no-plots") == 0
    res = report_of(tmp_path)["results"]["projection"]
    for split in res["splits"].values():  # each split served as one batch: exact
        assert split["gap"]["probabilities"] <= 0.05 + 1e-4
        assert split["meets_eps"]["probabilities"]


def test_options_without_subcommand_go_to_train(tmp_path):
    path = toy_csv(tmp_path)
    assert run(tmp_path, *csv_args(path), "--epochs", "1", "--no-plots") == 0
    assert report_of(tmp_path)["settings"]["command"] == "train"
    assert cli.parse([]).command == "train"


def test_threads_option_is_applied_and_restored(tmp_path, monkeypatch):
    seen = []
    real = _cli_train.PROCEDURE

    def spy(setup):
        seen.append(torch.get_num_threads())
        return real(setup)

    monkeypatch.setattr(_cli_train, "PROCEDURE", spy)
    before = torch.get_num_threads()
    path = toy_csv(tmp_path)
    assert run(tmp_path, *csv_args(path), "--epochs", "1", "--no-plots", "--threads", "2") == 0
    assert seen == [2, 2] and report_of(tmp_path)["threads"] == 2
    assert torch.get_num_threads() == before


def test_module_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "humancompatible_train", "--max-rows", "300",
                           "--epochs", "1", "--no-plots", "--quiet", "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "threads 1" in proc.stdout.splitlines()[0]
    assert strict_json(tmp_path / "o" / "report.json")["status"] == "complete"


def test_encoding_option_reads_latin1(tmp_path):
    path = toy_csv(tmp_path)
    text = path.read_text().replace(",u,", ",café,")
    path.write_bytes(text.encode("latin-1"))
    assert run(tmp_path, *csv_args(path), "--epochs", "1", "--no-plots",
               "--encoding", "latin-1") == 0


# ------------------------------------------------------------- bad arguments: before work
@pytest.mark.parametrize("args, message", [
    (["--data", "nowhere"], "--data: expected 'adult', 'dutch' or an existing file"),
    (["--eps", "-0.1"], "--eps: expected a finite number in [0.0, 1.0)"),
    (["--eps", "inf"], "--eps: expected a finite number in [0.0, 1.0), got inf"),
    (["--lr", "inf"], "--lr: expected a finite number > 0.0, got inf"),
    (["--lr", "nan"], "--lr: expected a finite number > 0.0, got nan"),
    (["--dual-lr", "inf"], "--dual-lr: expected a finite number > 0.0, got inf"),
    (["--dual-lr", "-1"], "--dual-lr: expected a finite number > 0.0, got -1.0"),
    (["--seed", "-1"], "--seed: expected an int in [0, 4294967295], got -1"),
    (["--seed", str(2**70)], "--seed: expected an int in [0, 4294967295]"),
    (["--epochs", "0"], "--epochs: expected a positive int, got 0"),
    (["--batch-size", "-5"], "--batch-size: expected a positive int, got -5"),
    (["--threads", "0"], "--threads: expected an int in [1, 1024], got 0"),
    (["--max-rows", "0"], "--max-rows: expected a positive int, got 0"),
    (["--algorithm", "sgd"], "--algorithm: expected one of"),
    (["--constraint", "parity"], "--constraint: expected one of"),
    (["--sensitive", "height"], "--sensitive: adult offers ['sex', 'race'], got 'height'"),
    (["--sensitive", "sex", "race"], "--sensitive: expected one column"),
    (["--positive", "yes"], "--positive: the bundled adult data fix their target"),
    (["--target", "y"], "--target: the bundled adult data fix their target"),
    (["--encoding", "klingon"], "--encoding: expected a text encoding"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--device", "nosuchdevice"], "--device: expected a torch.device"),
    (["--device", "meta"], "--device: expected a device that holds data"),
    (["--algorithm", "projection", "--constraint", "predictive_parity"],
     "--algorithm projection enforces"),
])
def test_bad_arguments_exit_2_in_one_line_before_any_work(tmp_path, capsys, no_work, args,
                                                          message):
    assert run(tmp_path, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("humancompatible-train: error: ")
    assert message in err[0]
    assert not (tmp_path / "out").exists()  # not even the output folder


def test_compare_refuses_an_algorithm_twice(tmp_path, capsys, no_work):
    assert run(tmp_path, "compare", "--algorithms", "alm", "unconstrained", "alm") == 2
    assert "--algorithms: each algorithm trains once; ['alm']" in capsys.readouterr().err


def test_cuda_without_cuda(tmp_path, capsys, no_work):
    # cuda:99 exists on no machine: torch's AssertionError (no CUDA build) or RuntimeError
    # (no such ordinal) both become the one-line message, with or without a GPU.
    assert run(tmp_path, "--device", "cuda:99") == 2
    err = capsys.readouterr().err
    assert "--device: device 'cuda:99' is not available here" in err and "Traceback" not in err


def test_loader_messages_name_the_options(tmp_path, capsys):
    path = toy_csv(tmp_path)
    assert run(tmp_path, "--data", str(path), "--target", "income", "--sensitive", "grp") == 2
    assert "error: --target: column 'income' not found in toy.csv" in capsys.readouterr().err
    assert run(tmp_path, *csv_args(path)[:-2], "--sensitive", "label") == 2
    assert "error: --sensitive: the target column 'label' cannot" in capsys.readouterr().err


def test_out_is_checked_before_any_work(tmp_path, capsys, no_work):
    assert cli.main(["--out", " "]) == 2
    assert "--out: expected a folder path, got ' '" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert cli.main(["--out", str(afile)]) == 2
    assert "--out: expected a folder, got the existing file" in capsys.readouterr().err
    assert cli.main(["--out", str(afile / "sub")]) == 2
    assert "--out: cannot create the folder" in capsys.readouterr().err
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    assert cli.main(["--out", str(full)]) == 2
    assert "is not empty (1 entries, e.g. 'notes.txt'); pass --overwrite" in \
        capsys.readouterr().err
    assert afile.read_text() == "x" and (full / "notes.txt").read_text() == "mine"


def test_out_not_writable(tmp_path, capsys, no_work, monkeypatch):
    def read_only(*a, **k):  # what a read-only folder answers (root could write anywhere)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_cli_report.tempfile, "NamedTemporaryFile", read_only)
    assert cli.main(["--out", str(tmp_path / "ro")]) == 2
    err = capsys.readouterr().err
    assert "--out: cannot write into" in err and "(Permission denied)" in err
    assert not (tmp_path / "ro").exists()  # the folder made for the run is gone again


def test_overwrite_replaces_an_earlier_run_and_keeps_other_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for stale in ("report.json", "history_projection.png", ".partial-1-report.json"):
        (out / stale).write_text("stale")
    (out / "notes.txt").write_text("mine")
    path = toy_csv(tmp_path)
    assert run(tmp_path, *csv_args(path), "--epochs", "1", "--no-plots", "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "notes.txt", "report.json"]
    assert report_of(tmp_path)["status"] == "complete"


# ----------------------------------------------------------------- bad files: one line, 2
def _gzip_corrupt(tmp_path):
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage" * 50)
    return path


def _gzip_truncated(tmp_path):
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(gzip.compress(toy_csv(tmp_path).read_bytes())[:60])
    return path


def _huge_field(tmp_path):
    path = tmp_path / "huge.csv"
    path.write_text("x,grp,label\n" + "y" * 200_000 + ",a,yes\n")
    return path


def _latin1(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(toy_csv(tmp_path).read_bytes().replace(b",u,", b",caf\xe9,"))
    return path


def _rare_group(tmp_path):
    path = tmp_path / "rare.csv"  # group b: two rows of one label -> train 1, validation 1
    path.write_text("x,grp,label\n" + "".join(f"{i},a,{'yes' if i % 2 else 'no'}\n"
                                              for i in range(60)) + "1,b,yes\n2,b,yes\n")
    return path


@pytest.mark.parametrize("make, message", [
    (_gzip_corrupt, "bad.csv.gz': the file starts like gzip data but cannot be decompressed"),
    (_gzip_truncated, "cut.csv.gz': the file starts like gzip data but cannot be decompressed"),
    (_huge_field, "huge.csv: line 2: field larger than field limit"),
    (_latin1, "latin.csv': byte 0xe9 on line 2 (offset 22) is not valid utf-8 text; "
              "give the file's encoding, e.g. encoding='latin-1' (on the command line: "
              "--encoding latin-1)"),
    (lambda t: toy_csv(t, cell="inf"), "numerical column 'x' in toy.csv has 1 non-finite "
                                       "number(s), e.g. 'inf' at data row 0"),
    (lambda t: toy_csv(t, n=3), "toy.csv: 3 rows give an empty test part (train 2, "
                                "validation 1, test 0 rows"),
    (_rare_group, "the test split (12 rows) has no rows of group(s) ['b']; a per-group report "
                  "needs every group there (use more rows)"),
])
def test_bad_files_exit_2_in_one_line(tmp_path, capsys, make, message):
    path = make(tmp_path)
    assert run(tmp_path, *csv_args(path), "--epochs", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()  # the folder made for the run is gone again


def test_tiny_bundled_sample_is_refused(tmp_path, capsys):
    assert run(tmp_path, "--max-rows", "5") == 2
    err = capsys.readouterr().err
    assert "adult: 5 rows give an empty test part (train 4, validation 1, test 0 rows" in err


# ------------------------------------------------------------------- divergence: no fairness
def test_nan_loss_is_reported_as_diverged_never_fair(tmp_path):
    assert run(tmp_path, "--max-rows", "300", "--epochs", "1", "--lr", "1e30",
               "--no-plots") == cli.EXIT_DIVERGED
    report = report_of(tmp_path)
    assert report["status"] == "diverged"
    for res in report["results"].values():
        assert res["status"] == "diverged" and "nan" in res["diverged"]
        assert res["meets_eps"] is False and res["max_gap"] is None and res["p_rule"] is None
        for split in res["splits"].values():
            assert split["gap"] == dict.fromkeys(_cli_report.VIEWS)
            assert split["meets_eps"] == dict.fromkeys(_cli_report.VIEWS, False)


def test_non_finite_outputs_are_caught_whatever_the_procedure_says(tmp_path, monkeypatch):
    path = toy_csv(tmp_path)

    def careless(setup):  # a procedure that claims success but serves NaN
        return _cli_train.Trained(lambda split: torch.full((len(split), 1), float("nan")),
                                  epochs_run=1, selected_epoch=1)

    monkeypatch.setattr(_cli_train, "PROCEDURE", careless)
    assert run(tmp_path, *csv_args(path), "--no-plots") == cli.EXIT_DIVERGED
    res = report_of(tmp_path)["results"]["adaptive"]
    assert res["status"] == "diverged" and res["meets_eps"] is False
    assert res["splits"]["test"]["non_finite_outputs"] == res["splits"]["test"]["rows"]
    assert res["splits"]["test"]["gap"]["decisions"] is None


# ---------------------------------------------------------------- interruption and failure
def _interrupting_procedure(monkeypatch, at_algorithm, action):
    real = _cli_train.PROCEDURE

    def procedure(setup):
        if setup.algorithm != at_algorithm:
            return real(setup)
        inner_on_epoch = setup.on_epoch

        def on_epoch(row):
            inner_on_epoch(row)
            action()
        setup.on_epoch = on_epoch
        return real(setup)

    monkeypatch.setattr(_cli_train, "PROCEDURE", procedure)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_training_writes_an_interrupted_report(tmp_path, monkeypatch, signum,
                                                             code):
    # raise_signal delivers to this (the main) thread: os.kill would let the kernel pick any
    # thread of the process, and on a loaded machine that thread may run the C handler only
    # after the run has finished (seen once: exit 0 instead of 130).
    _interrupting_procedure(monkeypatch, "unconstrained", lambda: signal.raise_signal(signum))
    path = toy_csv(tmp_path)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert run(tmp_path, *csv_args(path), "--epochs", "3") == code
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    report = report_of(tmp_path)
    assert report["status"] == "interrupted"
    info = report["interrupted"]
    assert info["signal"] == signal.Signals(signum).name
    assert info["during"] == {"phase": "training", "algorithm": "unconstrained",
                              "epochs_done": 1}
    assert info["finished"] == ["adaptive"] and info["not_finished"] == ["unconstrained"]
    assert list(report["results"]) == ["adaptive"]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "report.json"]
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3 + 1  # adaptive's three epochs, the interrupted one's first


def test_ctrl_c_while_writing_leaves_no_partial_files(tmp_path, monkeypatch):
    import humancompatible_train.plotting as plotting

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(plotting, "plot_tradeoff", interrupted)
    path = toy_csv(tmp_path)
    assert run(tmp_path, *csv_args(path), "--epochs", "1") == 130
    report = report_of(tmp_path)
    assert report["status"] == "interrupted"
    assert report["interrupted"]["during"] == {"phase": "writing the outputs"}
    assert report["interrupted"]["finished"] == ["adaptive", "unconstrained"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["history.csv",
                                                                    "report.json"]


def test_signal_during_the_final_renames_is_held_until_they_are_done(tmp_path, monkeypatch):
    real = _cli_report.OutputFolder.commit

    def commit(self):
        signal.raise_signal(signal.SIGINT)  # arrives in the middle of the renames
        return real(self)

    monkeypatch.setattr(_cli_report.OutputFolder, "commit", commit)
    path = toy_csv(tmp_path)
    assert run(tmp_path, *csv_args(path), "--epochs", "1", "--no-plots") == 130
    assert report_of(tmp_path)["status"] == "complete"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["history.csv",
                                                                    "report.json"]


def test_unexpected_error_is_one_line_and_a_failed_report(tmp_path, capsys, monkeypatch):
    def boom(setup):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(_cli_train, "PROCEDURE", boom)
    path = toy_csv(tmp_path)
    assert run(tmp_path, *csv_args(path)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["humancompatible-train: error: unexpected RuntimeError: boom"]
    report = report_of(tmp_path)
    assert report["status"] == "failed"
    assert report["failed"]["error"].startswith("RuntimeError: boom")
    with pytest.raises(RuntimeError, match="boom"):
        run(tmp_path, *csv_args(path), "--overwrite", "--debug")
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(RuntimeError, match="boom"):
        run(tmp_path, *csv_args(path), "--overwrite")


# ------------------------------------------------------------------ the training procedure
def test_batches_cover_every_row_once_per_epoch_in_a_seeded_order():
    X, y = torch.arange(1000.0).reshape(-1, 1), torch.arange(1000.0).reshape(-1, 1) * 2

    def epochs(seed):
        g = torch.Generator().manual_seed(seed)
        return [list(_cli_train.batches((X, y), 64, g)) for _ in range(2)]

    first, again, other = epochs(5), epochs(5), epochs(6)
    for epoch in first:
        assert [len(b[0]) for b in epoch] == [64] * 15 + [40]
        rows = torch.cat([b[0] for b in epoch]).reshape(-1)
        assert sorted(rows.tolist()) == list(range(1000))  # each row once
        assert all(torch.equal(b[1], 2 * b[0]) for b in epoch)  # tensors stay aligned
    order = [torch.cat([b[0] for b in e]).reshape(-1) for e in first]
    assert not torch.equal(order[0], order[1])  # a new permutation each epoch
    assert all(torch.equal(a[0], b[0]) for e, f in zip(first, again) for a, b in zip(e, f))
    assert not torch.equal(torch.cat([b[0] for b in other[0]]), torch.cat([b[0] for b in
                                                                           first[0]]))


def test_select_iterate_chooses_the_served_epoch(tmp_path, monkeypatch):
    path = toy_csv(tmp_path)
    args = [*csv_args(path), "--algorithm", "unconstrained", "--no-plots", "--lr", "0.05"]
    assert cli.main([*args, "--epochs", "1", "--out", str(tmp_path / "one"), "--quiet"]) == 0
    monkeypatch.setattr(_cli_train, "select_iterate", lambda history, setup: 1)
    assert cli.main([*args, "--epochs", "3", "--out", str(tmp_path / "three"), "--quiet"]) == 0
    one, three = (strict_json(tmp_path / d / "report.json")["results"]["unconstrained"]
                  for d in ("one", "three"))
    assert three["epochs_trained"] == 3 and three["selected_epoch"] == 1
    assert three["splits"] == one["splits"]  # epoch 1's model is the one served


# --------------------------------------------------------------------- the default recipe
def _history(path, algorithm):
    import csv

    with open(path / "history.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if k != "algorithm" and v != ""}
                for row in csv.DictReader(f) if row["algorithm"] == algorithm]


def _best_epoch(history, eps, margin):
    """TFCO's rule by hand: the lowest validation loss among the epochs within eps - margin
    on validation, else the smallest validation gap."""
    feasible = [r for r in history if r["val gap PR"] <= eps - margin]
    if feasible:
        return int(min(feasible, key=lambda r: r["val_loss"])["epoch"])
    return int(min(history, key=lambda r: (r["val gap PR"], r["val_loss"]))["epoch"])


def _demo_args():
    """The options ``make demo`` passes to the command line (read from the Makefile)."""
    import re
    import shlex
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n\t(.+)$", makefile, flags=re.MULTILINE).group(1)
    return shlex.split(recipe.split("-m humancompatible_train", 1)[1])


def test_demo_serves_the_validated_recipe(tmp_path, monkeypatch):
    """``make demo``'s command: multipliers driven by validation batches, the epoch chosen on
    validation, decisions by per-group thresholds fitted on validation."""
    served = {}
    real = _cli_train.PROCEDURE

    def keep(setup):
        served[setup.algorithm] = trained = real(setup)
        return trained

    monkeypatch.setattr(_cli_train, "PROCEDURE", keep)
    demo = _demo_args()
    assert not {"--dual-data", "--iterate", "--thresholds", "--margin"} & set(demo)
    out = tmp_path / "out"
    # Later options win: a small sample and two epochs of the demo's command.
    assert cli.main([*demo, "--max-rows", "2000", "--epochs", "3", "--no-plots", "--quiet",
                     "--out", str(out)]) == 0
    report = report_of(tmp_path)
    res = report["results"]["adaptive"]
    eps, margin = 0.05, 0.01
    assert report["algorithms"] == ["adaptive", "unconstrained"]
    assert res["dual_data"] == "validation" and res["margin"] == margin
    assert res["iterate"] == "best"
    # The epoch served is TFCO's choice on the validation split, recomputed from history.csv.
    history = _history(out, "adaptive")
    assert res["selected_epoch"] == _best_epoch(history, eps, margin)
    assert report["results"]["unconstrained"]["selected_epoch"] == int(
        min(_history(out, "unconstrained"), key=lambda r: r["val_loss"])["epoch"])
    # Thresholds fitted on validation: there the served decisions meet eps - margin.
    thresholds = res["thresholds"]
    assert res["decision_rule"] == "per-group thresholds fitted on the validation split"
    assert thresholds["fitted_on"] == "validation" and set(thresholds["by_group"]) == {
        "Male", "Female"}
    val = res["splits"]["validation"]
    assert val["gap"]["decisions"] <= eps - margin + 1e-12
    # The served test decisions are the thresholds applied to the served model's scores.
    data = cli._load(cli.parse([*demo, "--max-rows", "2000"]))
    test = data.test
    scores = torch.sigmoid(served["adaptive"].predict(test).double()).reshape(-1)
    cut = torch.tensor([thresholds["by_group"][g] for g in ("Male", "Female")],
                       dtype=torch.float64)
    decided = (scores >= cut[test.groups()]).double()
    rates = [float(decided[test.groups() == g].mean()) for g in (0, 1)]
    report_test = res["splits"]["test"]
    assert report_test["gap"]["decisions"] == pytest.approx(abs(rates[0] - rates[1]), abs=1e-12)
    assert report_test["accuracy"] == pytest.approx(
        float((decided == test.y.reshape(-1).double()).double().mean()), abs=1e-12)
    plain = (scores >= 0.5).double()
    assert report_test["gap"]["decisions_at_0.5"] == pytest.approx(
        abs(float(plain[test.groups() == 0].mean() - plain[test.groups() == 1].mean())),
        abs=1e-12)
    assert report["results"]["unconstrained"]["thresholds"] is None


def _with_validation_groups_permuted(monkeypatch):
    """The loader, with the validation split's group ids shuffled (its gaps change; the
    training split does not)."""
    import dataclasses

    real = cli._load

    def load(args):
        data = real(args)
        perm = torch.randperm(len(data.val), generator=torch.Generator().manual_seed(7))
        val = dataclasses.replace(data.val, sens=data.val.sens[perm])
        return dataclasses.replace(data, val=val)

    monkeypatch.setattr(cli, "_load", load)


@pytest.mark.parametrize("dual_data", ["validation", "train"])
def test_the_dual_step_reads_the_chosen_data(tmp_path, monkeypatch, dual_data):
    """Behaviour, not names: with --dual-data validation the multipliers (hence the whole
    training trajectory) depend on the validation split; with train they do not."""
    args = ["--max-rows", "1500", "--epochs", "2", "--no-plots", "--quiet", "--algorithm",
            "adaptive", "--dual-data", dual_data, "--iterate", "last", "--eps", "0.01",
            "--lr", "0.01"]

    def trajectory(out):
        return [{k: v for k, v in r.items() if k.startswith(("train", "dual"))}
                for r in _history(out, "adaptive")]

    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    _with_validation_groups_permuted(monkeypatch)
    assert cli.main([*args, "--out", str(tmp_path / "b")]) == 0
    a, b = trajectory(tmp_path / "a"), trajectory(tmp_path / "b")
    assert any(r["dual PR[Male] - PR[Female]"] > 0 for r in a)  # the multipliers moved
    assert (a == b) == (dual_data == "train")


def test_options_of_the_recipe(tmp_path):
    path = toy_csv(tmp_path)
    assert run(tmp_path, *csv_args(path), "--epochs", "3", "--no-plots", "--iterate", "last",
               "--thresholds", "none", "--dual-data", "train", "--margin", "0") == 0
    res = report_of(tmp_path)["results"]["adaptive"]
    assert res["selected_epoch"] == 3 and res["thresholds"] is None
    assert res["dual_data"] == "train" and res["margin"] == 0.0
    assert res["decision_rule"] == "p >= 0.5 (--thresholds none)"
    for split in res["splits"].values():
        assert split["gap"]["decisions"] == split["gap"]["decisions_at_0.5"]


@pytest.mark.parametrize("algorithm, kind", [("adaptive", "AdaptiveDual"), ("nupi", "nuPI"),
                                             ("alm", "ALM"), ("ialm", "iALM"), ("pbm", "PBM"),
                                             ("ssg", "SSG")])
def test_algorithm_choices_and_dual_lr(algorithm, kind):
    dual = _cli_train.make_dual(algorithm, 2, None)
    assert type(dual).__name__ == kind
    assert dual.param_groups[0]["lr"] == _cli_train.ALGORITHMS[algorithm][1]
    assert _cli_train.make_dual(algorithm, 2, 0.5).param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("args, message", [
    (["--margin", "-0.01"], "--margin: expected a finite number in [0.0, 0.05], got -0.01"),
    (["--margin", "0.2"], "--margin: expected a finite number in [0.0, 0.05], got 0.2"),
    (["--eps", "0.02", "--margin", "0.03"], "--margin: expected a finite number in [0.0, 0.02]"),
    (["--dual-data", "test"], "argument --dual-data: invalid choice: 'test'"),
    (["--iterate", "first"], "argument --iterate: invalid choice: 'first'"),
    (["--thresholds", "test"], "argument --thresholds: invalid choice: 'test'"),
])
def test_recipe_options_are_checked_before_any_work(tmp_path, capsys, no_work, args, message):
    assert run(tmp_path, *args) == 2
    assert message in capsys.readouterr().err
