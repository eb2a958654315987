"""Execute the tutorial notebooks (used by the tests and by ``make tutorials``).

``python docs/_ext/notebooks.py --save [NAME ...]`` re-executes the notebooks of
``tutorials/`` in full mode and writes their outputs back (what the site and code hosts show);
``--quick`` sets ``HCT_TUTORIAL_QUICK=1`` (small data, few epochs), as the tests do.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "tutorials"


def execute(path: Path, *, quick: bool, timeout: int = 1800) -> nbformat.NotebookNode:
    """Run every cell of a notebook in a fresh kernel, in ``tutorials/``; return it with outputs."""
    nb = nbformat.read(path, as_version=4)
    env = dict(os.environ, HCT_TUTORIAL_QUICK="1" if quick else "0", PYTHONHASHSEED="0")
    env.pop("MPLBACKEND", None)  # the kernel's inline backend draws figures into the notebook
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)
    return nb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook file names (default: all)")
    parser.add_argument("--quick", action="store_true", help="HCT_TUTORIAL_QUICK=1")
    parser.add_argument("--save", action="store_true", help="write the outputs back")
    args = parser.parse_args()
    paths = [TUTORIALS / n for n in args.names] or sorted(TUTORIALS.glob("*.ipynb"))
    for path in paths:
        start = time.perf_counter()
        nb = execute(path, quick=args.quick)
        if args.save:
            nbformat.write(nb, path)
        print(f"{path.name}: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
