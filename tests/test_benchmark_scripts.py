"""The benchmark scripts still run end to end (a few repetitions; their figures are not checked
here: timings belong to the scripts, never to unit tests)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_overhead_runs_both_settings_and_prints_ratios():
    out = run_script("overhead.py", "--reps", "3", "--warmup", "1", "--m", "1", "3")
    for setting, features in (("tensors", 100), ("basic-usage", 105)):
        for m in (1, 3):
            assert f"setting {setting} ({features} features), m = {m}" in out
    # Each variant's line ends with its ratio to the plain step and to the fixed penalty.
    rows = re.findall(r"^  (.+?)\s+([\d.]+) us\s+([\d.]+)x plain\s+([\d.]+)x fixed penalty$",
                      out, flags=re.MULTILINE)
    names = {r[0].strip() for r in rows}
    assert {"plain", "fixed penalty (no dual)", "ours ALM", "ours PrimalDual",
            "hand-written, NaN check + snapshot"} <= names
    for name, _, to_plain, to_penalty in rows:
        if name == "plain":
            assert float(to_plain) == 1.0
        if name == "fixed penalty (no dual)":
            assert float(to_penalty) == 1.0
    # Then each algorithm against its reference step of the same run.
    against = re.findall(r"^    (\S.*?)\s+/ (\S.*?)\s+([\d.]+)x", out, flags=re.MULTILINE)
    pairs = {(a.strip(), b.strip()) for a, b, _ in against}
    assert {("ours PBM", "ours ALM"), ("ours SSG", "ours ALM"), ("ours Moreau(ALM)", "ours ALM"),
            ("ours iALM", "ours ALM (quadratic)"), ("ours nuPI", "ours ALM"),
            ("ours AdaptiveDual", "ours ALM"), ("ours Optimistic(ALM)", "ours ALM"),
            ("ours Extragradient(ALM)", "2 x ours ALM"),
            ("ours ALM, indices=", "ours ALM"),
            ("ALM + FairnessConstraint", "ALM + hand-written PR gap")} <= pairs


def test_fairness_tradeoff_runs_a_slice_and_resumes(tmp_path):
    results = tmp_path / "runs.json"
    args = ("--datasets", "dutch", "--seeds", "0", "--eps", "0.05", "--batch-sizes", "1024",
            "--epochs", "1", "--methods", "default", "validated", "alm-0.1",
            "--results", str(results))
    out = run_script("fairness_tradeoff.py", *args)
    for method in ("default", "validated", "alm-0.1"):
        assert re.search(rf"^dutch\s+0\.05\s+1024 {re.escape(method)}\s+0\.\d+", out,
                         flags=re.MULTILINE), method
    assert "validated: test gap <= eps in" in out
    # A second call finds every run in the cache and trains nothing.
    again = run_script("fairness_tradeoff.py", *args)
    assert "(0 s)" not in again and not re.search(r"^dutch\|", again, flags=re.MULTILINE)


def test_inference_and_projection_scripts_run():
    out = run_script("inference.py", "--quick", "--reps", "5")
    assert [int(b) for b in re.findall(r"^\s+(\d+)\s+[\d.]+ us\s+[\d.]+ us\s+[\d.]+x",
                                       out, flags=re.MULTILINE)] == [1, 16, 64]
    # Pooled and largest prefix gap at batch 1 within eps = 0.05 (printed to 4 places).
    within = r"0\.0(?:[0-4]\d\d|500)"
    assert re.search(rf"^  default\s+adversarial\s+1\s+{within}\s+{within}\s", out,
                     flags=re.MULTILINE)
    out = run_script("projection.py", "--quick")
    assert re.search(r"^\s+2,000\s+2\s+active\s+[\d.]+ ms", out, flags=re.MULTILINE)
    assert re.search(r"^\s+2,000\s+18\s+active\s+[\d.]+ ms", out, flags=re.MULTILINE)
