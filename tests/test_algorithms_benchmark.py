"""benchmarks/algorithms.py runs end to end on the convex QP (a few steps; figures belong to
the script)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_algorithms_benchmark_runs_every_algorithm():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "algorithms.py"),
                           "--problems", "qp", "--steps", "30"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    for name in ("ALM", "PrimalDual", "iALM", "PBM", "SSG", "Moreau(ALM)",
                 "Extragradient(ALM)", "Optimistic(ALM)", "nuPI", "AdaptiveDual (offset 0)",
                 "AdaptiveDual() defaults (context)"):
        assert re.search(rf"^  {re.escape(name)}\s+f \d", done.stdout, flags=re.MULTILINE), name
    assert "qp (convex): f* = 3.583333" in done.stdout
