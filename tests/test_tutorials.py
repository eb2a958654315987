"""Every tutorial runs, in quick mode, as a notebook; the committed notebooks carry outputs.

The notebooks are executed by a Jupyter kernel (nbclient) in ``tutorials/`` with
``HCT_TUTORIAL_QUICK=1`` (small data, one or two epochs), exactly as ``make tutorials`` runs
them in full mode to produce the outputs that are committed and rendered on the docs site.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location("notebooks",
                                               ROOT / "docs" / "_ext" / "notebooks.py")
notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(notebooks)


def test_there_are_tutorials():
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_quick_mode(path):
    nb = notebooks.execute(path, quick=True, timeout=600)  # raises on the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_outputs_and_stays_small(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "run `make tutorials` first"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert any("HCT_TUTORIAL_QUICK" in c.source for c in code), "no quick mode"
    assert path.stat().st_size < 1_500_000, "figures too large: lower the dpi"


def test_streaming_example_runs():
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "fairness_training_streaming.py")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "HCT_TUTORIAL_QUICK": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    gap = float(re.search(r"Aggregate Fairness Gap: ([\d.]+)", done.stdout)[1])
    assert gap <= 0.05 + 0.005, done.stdout
