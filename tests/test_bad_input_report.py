"""Regression tests for the sub-items of the bad-input report (D1-D15) that no other test file
covers one by one; every other sub-item has its test beside the code it exercises."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from humancompatible_train import cli
from humancompatible_train.datasets import load_csv
from humancompatible_train.inference import FairInference

EPS = 0.05


def test_d9_a_0xff_byte_names_the_file_and_an_encoding(tmp_path):
    path = tmp_path / "ff.csv"
    path.write_bytes(b"age,sex,label\n" + b"30,F,yes\n31,M,no\n" * 20 + b"3\xff,M,no\n")
    with pytest.raises(ValueError, match=r"ff.csv': byte 0xff on line 42 \(offset \d+\) is not "
                                         r"valid utf-8 text; give the file's encoding, e.g. "
                                         r"encoding='latin-1'"):
        load_csv(path, target="label", sensitive="sex", positive="yes")


def test_d13_three_groups_small_batch_is_projected_onto_the_band():
    """The reproducer served a 3-group batch (below b_tau) uncorrected: group means 0.656,
    0.2 and 0.444 against eps = 0.05. With the default dual step the batch must meet eps;
    with eta_0 = 0 (no offsets: rows are projected as they come) it is the exact projection.
    Truth: with no pool yet and no bounds, every row of a group moves by one shift, and the
    cheapest shifts put the means in a window [c, c + eps] (each mean clamped into it), c
    minimising the convex cost of the clamps."""
    z = torch.tensor([0.9, 0.5, 0.568, 0.1, 0.3, 0.2, 0.444, 0.5, 0.388], dtype=torch.float64)
    g = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    mu = np.array([z[g == s].mean().item() for s in range(3)])
    assert mu.max() - mu.min() > 0.4

    def cost(c):
        return float((3.0 * (np.clip(mu, c, c + EPS) - mu) ** 2).sum())

    best = minimize_scalar(cost, bounds=(mu.min() - EPS, mu.max()), method="bounded",
                           options={"xatol": 1e-12})
    for eta_0 in (0.5, 0.0):
        fi = FairInference(None, num_groups=3, fairness_tolerance=EPS, b_tau=64, eta_0=eta_0)
        q = fi.adjust(z, g)
        means = np.array([q[g == s].mean().item() for s in range(3)])
        assert means.max() - means.min() <= EPS + 1e-12
        assert fi.stats()["pooled_aggregate_gap"] <= EPS
        shift = (q - z).numpy()
        for s in range(3):  # one shift per group
            cell = shift[(g == s).numpy()]
            np.testing.assert_allclose(cell, cell[0], atol=1e-12)
    assert float(((q - z) ** 2).sum()) == pytest.approx(best.fun, rel=1e-6, abs=1e-12)


def test_d15_compare_checks_the_dual_lr_before_any_algorithm_trains(tmp_path, capsys, no_work):
    out = tmp_path / "out"
    code = cli.main(["compare", "--algorithms", "alm", "pbm", "--dual-lr", "-1",
                     "--out", str(out), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["humancompatible-train: error: --dual-lr: expected a finite number > 0.0, "
                   "got -1.0"]
    assert not out.exists()


def test_d8_an_out_folder_that_cannot_be_made_is_named_before_any_work(
        tmp_path, monkeypatch, capsys, no_work):
    # The report's /proc/x, on any file system: mkdir refused by the operating system.
    def refuse(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "mkdir", refuse)
    out = tmp_path / "x"
    assert cli.main(["--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"humancompatible-train: error: --out: cannot create the folder {str(out)!r} "
        "(Permission denied)")


def test_extra_param_group_keys_must_survive_a_weights_only_reload():
    """A scheduler's extra keys load with the group; an object that a weights-only
    ``torch.load`` could not read back is refused, and nothing changes."""
    import io

    from humancompatible_train.dual_optim import ALM

    dual = ALM(2, lr=0.1, is_ineq=True)
    sd = dual.state_dict()
    sd["param_groups"][0]["initial_lr"] = 0.1
    fresh = ALM(2, lr=0.1, is_ineq=True)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["initial_lr"] == 0.1
    buf = io.BytesIO()
    torch.save(fresh.state_dict(), buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)

    sd["param_groups"][0]["bogus"] = object()
    before = fresh.state_dict()
    with pytest.raises(ValueError, match="bogus: expected a number"):
        fresh.load_state_dict(sd)
    after = fresh.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert all(torch.equal(a, b) for a, b in zip(fresh.duals, ALM(2, lr=0.1, is_ineq=True).duals))
